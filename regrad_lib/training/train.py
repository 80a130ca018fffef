"""03_train: meta-learn the LoRA initialisation ``phi`` and step sizes ``alpha`` (method.md equation 3).

Reads ``data/augmented/<dataset>/<train_file>.json`` for every training dataset (written by 02_augment) and
writes ``outputs/<run>/``: the four configs, ``meta_state.safetensors`` (the best on the validation slice),
``training_log.jsonl`` (one JSON row per train step or evaluation, ``kind`` "train"/"eval"), ``provenance.json``,
``train_request.json``, ``checkpoint/`` (resume), ``adapter/`` (the selected ``phi`` as a PEFT LoRA adapter)
and, last, ``train_summary.json`` (the run is finished).

This module is the loop: one meta step, one validation pass, the notebook's settings. The tasks and the
validation slice are :mod:`regrad_lib.training.train_data`, the optimizer and schedule :mod:`regrad_lib.training.schedule`, the run
folder (request, log, resume or keep, checkpoint selection, summary) :mod:`regrad_lib.training.run_folder`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from regrad_lib import config
from regrad_lib.core import adapters, regrad, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.core.task_batches import Task
from regrad_lib.data import metrics
from regrad_lib.io import artifacts, checkpoint, distributed, params, paths, runlock
from regrad_lib.io.run_state import META_STATE

# the public names of training, re-exported so that notebooks and scripts need one import
from regrad_lib.training.run_folder import (
    LOG,
    REQUEST,
    SUMMARY,
    append_log,
    is_better,
    kept_summary,
    learned_alpha,  # noqa: F401
    prepare,
    read_log,
    request_of,
    summary_of,
)
from regrad_lib.training.schedule import (  # noqa: F401
    group_rates,
    learning_rate,
    make_optimizer,
    optimizer_step,
    total_steps,
)
from regrad_lib.training.train_data import (  # noqa: F401
    TrainData,
    describe,
    epoch_order,
    load_tasks,
    split_tasks,
    training_data,
)

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A meta step produced a NaN/inf loss or gradient; the message names the step and the tasks."""


# --- one meta step and one evaluation ---------------------------------------------------------------------
def _chunks(items: list, size: int):
    return [items[i:i + size] for i in range(0, len(items), size)]


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def chunk_losses(learner: Learner, tb: regrad.TaskBatch) -> torch.Tensor:
    """Per-task meta losses of one chunk (one batched forward of every passage and QA row; equation 3)."""
    cfg = learner.preset.learner
    if not cfg.outer_loss:          # the ablation: plain passage LM loss at phi, no inner step
        return regrad.passage_losses(learner.model, learner.phi, tb, precision=learner.precision)
    return regrad.meta_losses(learner.model, learner.phi, learner.alpha, tb, first_order=cfg.first_order,
                              precision=learner.precision)


def meta_step(learner: Learner, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], batch: list[Task],
              lr: float | dict[str, float]) -> tuple[float, float, str | None, int]:
    """One optimizer step over ``batch``: (mean meta loss, grad norm before clipping, None or what was non-finite,
    passages cut from the batch's prompts to fit ``max_prompt_len``).

    The batch is computed in chunks of ``tasks_per_forward`` tasks (one batched forward/backward each, gradients
    accumulated; the step's loss is the mean over its tasks); a non-finite loss or gradient leaves the weights
    untouched. In a job of N processes each takes its contiguous share of the (global) batch and the gradients of
    every task's ``loss / len(batch)`` are summed across processes before clipping, so the step equals one
    process's over the same batch.
    """
    args = learner.preset.train
    optimizer.zero_grad(set_to_none=True)
    share = distributed.span(len(batch))
    total, truncated, bad = 0.0, 0, []
    for chunk in _chunks(batch[share.start:share.stop], args.tasks_per_forward):
        tb = task_batches.task_batch(learner.tokenizer, chunk, learner.preset.learner)
        truncated += tb.truncated_prompts
        losses = chunk_losses(learner, tb.to(learner.device))
        values = losses.detach().float().cpu().tolist()
        bad = [t for t, v in zip(chunk, values) if not math.isfinite(v)]
        if bad:
            break
        (losses.sum() / len(batch)).backward()
        total += sum(values)
    total, truncated, bad = _whole_batch(total, truncated, bad)
    if bad:
        return math.nan, math.nan, f"meta loss of {describe(bad)}", truncated
    distributed.sum_gradients(params)
    grad_norm = optimizer_step(optimizer, params, args.max_grad_norm, lr)
    if not math.isfinite(grad_norm):
        return total / len(batch), grad_norm, f"gradient (norm {grad_norm}) of the batch {describe(batch)}", truncated
    return total / len(batch), grad_norm, None, truncated


def _whole_batch(total: float, truncated: int, bad: list[Task]) -> tuple[float, int, list[Task]]:
    """This process's loss sum, truncated prompts and non-finite tasks, summed/joined over every process."""
    if distributed.job().size == 1:
        return total, truncated, bad
    status = torch.tensor([total, truncated, len(bad)], dtype=torch.float64, device=distributed.collective_device())
    distributed.sum_([status])
    if status[2] > 0:
        bad = [t for part in distributed.gather(bad) for t in part]
    return float(status[0]), int(status[1]), bad


def evaluate(learner: Learner, validation: list[Task], generate: bool = True) -> dict:
    """Validation meta loss (answer NLL after the inner step) and, with ``generate``, EM/F1 of the answers
    generated with online gradients (gamma 1)."""
    chunks = _chunks(validation, learner.preset.train.tasks_per_forward)
    mine = []       # a job's processes take turns over the chunks; gathered back in order
    for i in distributed.turns(len(chunks)):
        tb = task_batches.task_batch(learner.tokenizer, chunks[i], learner.preset.learner).to(learner.device)
        with torch.no_grad():  # the inner gradient still runs (enable_grad inside)
            mine.append(regrad.meta_losses(learner.model, learner.phi, learner.alpha, tb, first_order=True,
                                           precision=learner.precision).float().cpu().tolist())
    losses = [v for part in distributed.merge_turns(mine, len(chunks)) for v in part]
    out = {"eval_loss": _finite(sum(losses) / len(losses)), "eval_em": None, "eval_f1": None, "n": len(validation)}
    if generate:
        from regrad_lib.answering.harness import (
            predict_online,  # the answering stack loads only when validation generates
        )

        predictions = predict_online(learner, validation, gamma=1.0)
        scores = metrics.aggregate(metrics.score_kind(p, list(t.answers), t.kind, t.choices)
                                   for p, t in zip(predictions, validation))
        out.update(eval_em=scores["em"], eval_f1=scores["f1"])
    return out


# --- notebook helpers --------------------------------------------------------------------------------
def configure(preset: str, *, blind_context: bool | None = None, seed: int | None = None,
              max_steps: int | None = None, limit: int | None = None,
              init_adapter: str | None = None) -> config.Preset:
    """03_train's validated preset: ``preset`` with the notebook's parameters applied (None keeps the preset's)."""
    learner = {"blind_context": blind_context, "init_adapter": init_adapter}
    train_ = {"seed": seed, "max_steps": max_steps, "max_train_tasks": limit}
    return config.load_preset(preset, {"learner": {k: v for k, v in learner.items() if v is not None},
                                       "train": {k: v for k, v in train_.items() if v is not None}})


@dataclass
class TrainSettings:
    """03_train's parameters, validated before anything is computed (the preset with them applied: ``config``)."""
    run: str
    preset: str
    train_datasets: list[str]
    train_limit: int | None = None     # reads train_<n>.json (02_augment's train_limit); None: train_all.json
    blind_context: bool | None = None
    max_train_tasks: int | None = None
    max_steps: int | None = None
    device: str = "cpu"
    seed: int | None = None
    overwrite: bool = False
    init_adapter: str | None = None    # a PEFT LoRA adapter folder to start phi from (None: a fresh LoRA)

    def __post_init__(self) -> None:
        params.check_fields(self)
        paths.output_dir(self.run)         # a run name that is no plain folder name is refused here
        if self.train_limit is not None:
            params.integer("train_limit", self.train_limit, minimum=1)   # train_-2.json is no file 02 writes
        if isinstance(self.train_datasets, str):
            self.train_datasets = [self.train_datasets]
        if not self.train_datasets:
            raise ValueError("train_datasets is empty: name at least one dataset, e.g. ['popqa', 'hotpotqa']")
        self.config = configure(self.preset, blind_context=self.blind_context, seed=self.seed,
                                max_steps=self.max_steps, limit=self.max_train_tasks, init_adapter=self.init_adapter)
        for dataset in self.train_datasets:
            task_batches.augmented_path(dataset, self.train_file)

    @property
    def train_file(self) -> str:
        from regrad_lib.retrieval.augment import output_name
        return output_name("train", self.train_limit)


def run(settings: TrainSettings) -> dict:
    """03_train's computation: :func:`train` with the notebook's settings; the summary."""
    return train(settings.run, settings.config, settings.train_datasets, train_file=settings.train_file,
                 device=settings.device, overwrite=settings.overwrite)


# --- the training loop ---------------------------------------------------------------------------------
@params.typed
@runlock.writer("03_train")
def train(run: str, preset: config.Preset | str, train_datasets: Sequence[str], *, train_file: str = "train_all",
          device: str = "cpu", limit: int | None = None, overwrite: bool = False, resume: bool = True,
          stop_after: int | None = None) -> dict:
    """Meta-train on the augmented training tasks; returns the summary (also ``train_summary.json``).

    ``stop_after``: pause after this optimizer step (checkpoint saved, the run left unfinished; training again
    resumes it), e.g. a second seed of a learning curve that needs only its first kept steps; returns
    ``{"status": "paused", "step": ...}``. The schedule is the whole run's either way.

    ``limit`` caps the training tasks (``train_args.max_train_tasks``). An unfinished run resumes from its
    checkpoint at the next step; a finished run is refused unless ``overwrite=True``. In a job of several
    processes (:mod:`regrad_lib.io.distributed`) every process calls this alike; rank 0 alone writes the folder.
    """
    if isinstance(preset, str):
        preset = config.load_preset(preset)
    if limit is not None:
        preset = preset.replace(train={"max_train_tasks": limit})
    args = preset.train
    folder = paths.output_dir(run)
    request = request_of(preset, train_datasets, train_file)
    data = training_data(train_datasets, train_file, args)
    kept = None if overwrite else distributed.on_main(kept_summary, folder, request)
    if kept is not None:
        return kept
    resuming = distributed.on_main(prepare, folder, request, overwrite, resume)
    main = distributed.job().main

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    learner = Learner.create(preset, device)
    optimizer, params = make_optimizer(learner)
    n_steps, per_epoch = total_steps(len(data.train), args)
    log_path = folder / LOG

    if resuming:
        state = checkpoint.load(folder, learner, optimizer)
        if state["data_fingerprint"] != data.fingerprint():
            raise ValueError(f"{paths.relative(folder)}: the training tasks changed since the checkpoint (other "
                             f"augmented files?); restore them, or pass overwrite=True to start again")
        if main:
            artifacts.write_jsonl(log_path, [r for r in read_log(run) if r["step"] <= state["step"]])
        log.info("resuming %s after step %d of %d", paths.relative(folder), state["step"], n_steps)
    else:
        if main:
            preset.save(folder)
            artifacts.write_json(folder / REQUEST, request)
            artifacts.write_provenance(folder, preset.to_dict())
            log_path.write_text("", encoding="utf-8")
        state = {"step": 0, "tasks_seen": 0, "skipped_nonfinite": 0, "truncated_prompts": 0, "elapsed_s": 0.0,
                 "best": None,
                 "order_epoch": None, "order": [], "data_fingerprint": data.fingerprint(), "total_steps": n_steps}
    if distributed.job().size > 1:
        distributed.same_everywhere(learner.meta_hash(), "the meta weights at the start")
    if args.validation_size == 0:
        log.warning("validation_size=0: no validation slice, the final weights are kept as %s", META_STATE)
    log.info("meta-training %s: %d train tasks, %d validation tasks, %d steps of %d tasks", run, len(data.train),
             len(data.validation), n_steps, args.meta_batch_size)

    started = time.perf_counter()

    def elapsed() -> float:
        return round(state["elapsed_s"] + time.perf_counter() - started, 3)

    def run_eval(step: int) -> None:
        row = {"kind": "eval", "step": step,
               **evaluate(learner, data.validation, generate=args.metric_for_best_model == "f1")}
        row["best"] = is_better(row, state["best"], args.metric_for_best_model)
        if row["best"]:
            state["best"] = {k: row[k] for k in ("step", "eval_loss", "eval_em", "eval_f1")}
            if main:
                learner.save(folder / META_STATE)
        if main:
            append_log(log_path, row)
        log.info("step %d: validation loss %s, F1 %s%s", step, row["eval_loss"], row["eval_f1"],
                 " (best)" if row["best"] else "")

    def keep_step() -> None:
        # before the checkpoint of this step: a kill in between redoes the step and writes the same weights again
        if main and state["step"] in args.keep_steps:
            kept = paths.kept_step_state(run, state["step"])
            kept.parent.mkdir(parents=True, exist_ok=True)
            learner.save(kept)

    def save_checkpoint() -> None:
        if main:
            checkpoint.save(folder, learner, optimizer,
                            {**state, "elapsed_s": elapsed(), "total_steps": n_steps})

    if not resuming and data.validation:
        run_eval(0)
    recent: list[float] = []
    bar = tqdm(total=n_steps, initial=state["step"], desc="meta-train", unit="step", disable=not main)
    stop = n_steps if stop_after is None else min(n_steps, stop_after)
    try:
        while state["step"] < stop:
            step = state["step"]
            epoch, position = divmod(step, per_epoch)
            if state["order_epoch"] != epoch:
                state["order"], state["order_epoch"] = epoch_order(len(data.train), args.seed, epoch), epoch
            index = state["order"][position * args.meta_batch_size:(position + 1) * args.meta_batch_size]
            batch = [data.train[i] for i in index]
            rates = group_rates(step, args, n_steps)
            loss, grad_norm, problem, truncated = meta_step(learner, optimizer, params, batch, rates)
            state["truncated_prompts"] = state.get("truncated_prompts", 0) + truncated
            if problem is not None:
                message = f"step {step + 1}: non-finite {problem}"
                if args.on_nonfinite == "error":
                    raise NonFiniteError(message + ". Lower the learning rate, check these records, or set "
                                         "train_args on_nonfinite='skip' to skip such steps")
                state["skipped_nonfinite"] += 1
                log.warning("%s: step skipped (%d skipped so far)", message, state["skipped_nonfinite"])
            state["step"], state["tasks_seen"] = step + 1, state["tasks_seen"] + len(batch)
            if problem is None:
                recent = (recent + [loss])[-10:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)
            bar.update(1)
            if main and (problem is not None or state["step"] % args.logging_steps == 0 or state["step"] == n_steps):
                append_log(log_path, {
                    "kind": "train", "step": state["step"], "loss": _finite(loss) if problem is None else None,
                    "lr": rates["phi"], "alpha_lr": rates["alpha"], "grad_norm": _finite(grad_norm), "tasks_seen": state["tasks_seen"],
                    "epoch": round(state["step"] / per_epoch, 4),
                    "alpha": {n: float(v) for n, v in learner.alpha.tensors().items()},
                    "skipped": problem is not None, "skipped_nonfinite": state["skipped_nonfinite"],
                    "truncated_prompts": state["truncated_prompts"], "elapsed_s": elapsed()})
            if data.validation and (state["step"] % args.eval_steps == 0 or state["step"] == n_steps):
                run_eval(state["step"])
            keep_step()
            if state["step"] % args.save_steps == 0 or state["step"] in (n_steps, stop):
                save_checkpoint()
    except KeyboardInterrupt:
        save_checkpoint()
        log.warning("interrupted: checkpoint saved after step %d; call train() again to resume", state["step"])
        raise
    finally:
        bar.close()

    if distributed.job().size > 1:
        distributed.same_everywhere(learner.meta_hash(), "the meta weights at the end")
    if state["step"] < n_steps:
        log.info("paused after step %d of %d (stop_after): train again to resume", state["step"], n_steps)
        return {"status": "paused", "step": state["step"], "total_steps": n_steps}

    def finish() -> dict:
        if state["step"] and state["skipped_nonfinite"] >= state["step"]:
            raise NonFiniteError(f"{paths.relative(folder)}: every one of the {state['step']} steps was skipped as "
                                 "non-finite, so nothing was learned and the run is not finished; check the "
                                 "warm-start adapter and the learning rate, then train again with overwrite=True")
        if not data.validation:
            learner.save(folder / META_STATE)
        summary = summary_of(run, preset, train_datasets, train_file, data, state, read_log(run), elapsed())
        adapters.export_run(run, allow_unfinished=True)   # the selected phi as a PEFT adapter (before the summary)
        artifacts.write_json(folder / SUMMARY, summary)
        return summary

    summary = distributed.on_main(finish)
    log.info("meta-training done: %s", summary)
    return summary
