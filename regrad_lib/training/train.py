"""03_train: meta-learn the LoRA initialisation ``phi`` and step sizes ``alpha`` (method.md equation 3).

Reads ``data/augmented/<dataset>/<train_file>.json`` for every training dataset (written by 02_augment) and
writes ``outputs/<run>/``: the four configs, ``meta_state.safetensors`` (the best on the validation slice),
``training_log.jsonl`` (one JSON row per train step or evaluation, ``kind`` "train"/"eval"), ``provenance.json``,
``train_request.json``, ``checkpoint/`` (resume), ``adapter/`` (the selected ``phi`` as a PEFT LoRA adapter)
and, last, ``train_summary.json`` (the run is finished).

This module is the loop: one meta step (:func:`meta_step`), one validation pass (:func:`evaluate`), the loop's
checkpointed state (:class:`LoopState`) and a run's steps (:class:`MetaTraining`, driven by :func:`train`), and the
notebook's settings. The tasks and the validation slice are :mod:`regrad_lib.training.train_data`, the optimizer and
schedule :mod:`regrad_lib.training.schedule`, the run folder (request, resume or keep, checkpoint selection, summary)
:mod:`regrad_lib.training.run_folder`; the log is written and read by :mod:`regrad_lib.io.run_state`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import torch
from tqdm.auto import tqdm

from regrad_lib import config
from regrad_lib.core import adapters, regrad, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.core.task_batches import Task
from regrad_lib.data import metrics
from regrad_lib.io import artifacts, checkpoint, distributed, params, paths, runlock
from regrad_lib.io.run_state import append_training_log, read_training_log
from regrad_lib.training.run_folder import (
    is_better,
    kept_summary,
    prepare,
    request_of,
    summary_of,
)
from regrad_lib.training.schedule import (
    group_rates,
    make_optimizer,
    optimizer_step,
    total_steps,
)
from regrad_lib.training.train_data import TrainData, describe, epoch_order, training_data

__all__ = ["NonFiniteError", "TrainSettings", "chunk_losses", "configure", "evaluate", "meta_step", "run", "train"]

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
@dataclass
class LoopState:
    """Where meta-training stands after ``step`` optimizer steps; saved in every checkpoint (``trainer_state.json``,
    these fields in this order) and restored from it, so a resumed run continues exactly where it stopped."""

    step: int = 0
    tasks_seen: int = 0
    skipped_nonfinite: int = 0
    truncated_prompts: int = 0          # passages cut from prompts to fit max_prompt_len, summed over the steps
    elapsed_s: float = 0.0              # training time of the earlier sessions of a resumed run
    best: dict | None = None            # the validation row whose weights meta_state.safetensors holds
    order_epoch: int | None = None      # the epoch ``order`` shuffles (recomputed when an epoch begins)
    order: list[int] = field(default_factory=list)
    data_fingerprint: str = ""          # the training tasks the checkpoint was made with
    total_steps: int = 0

    @classmethod
    def from_checkpoint(cls, saved: dict) -> LoopState:
        """The state of a checkpoint's trainer state (a checkpoint written before ``truncated_prompts`` was
        counted reads as none truncated); its other keys (optimizer, RNG, layout) are the checkpoint's own."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


class MetaTraining:
    """One run of the meta-training loop: the learner, its optimizer and the :class:`LoopState`, with the steps of a
    run as methods a reader can follow: :meth:`begin` or :meth:`resume`, then :meth:`run_until` (each optimizer step
    is :meth:`take_step`: :meth:`batch_of`, :func:`meta_step`, :meth:`log_step`, :meth:`validate`,
    :meth:`keep_weights`, :meth:`save_checkpoint`), then :meth:`finish`. Every process of a job builds one alike;
    rank 0 alone writes the run's files."""

    def __init__(self, run: str, preset: config.Preset, data: TrainData, device: str) -> None:
        self.run, self.preset, self.data, self.args = run, preset, data, preset.train
        self.main = distributed.job().main
        random.seed(self.args.seed)
        torch.manual_seed(self.args.seed)
        self.learner = Learner.create(preset, device)           # the LoRA initialisation draws from the seed
        self.optimizer, self.params = make_optimizer(self.learner)
        self.n_steps, self.per_epoch = total_steps(len(data.train), self.args)
        self.state = LoopState(data_fingerprint=data.fingerprint(), total_steps=self.n_steps)
        self.log_path = paths.training_log_file(run)
        self.started = time.perf_counter()
        self.recent: list[float] = []          # the last 10 finite losses, for the progress bar

    def start_clock(self) -> None:
        """This session's training time starts here: loading the model, the data and a checkpoint is not counted."""
        self.started = time.perf_counter()

    # --- starting -----------------------------------------------------------------------------------------
    def begin(self, request: dict) -> None:
        """A new run: its configs, request, provenance and an empty log."""
        if self.main:
            self.preset.save(paths.output_dir(self.run))
            artifacts.write_json(paths.train_request_file(self.run), request)
            artifacts.write_provenance(paths.output_dir(self.run), self.preset.to_dict())
            self.log_path.write_text("", encoding="utf-8")

    def resume(self) -> None:
        """An unfinished run: weights, optimizer, RNG and loop state from its checkpoint; the log cut back to it."""
        folder = paths.output_dir(self.run)
        self.state = LoopState.from_checkpoint(checkpoint.load(folder, self.learner, self.optimizer))
        if self.state.data_fingerprint != self.data.fingerprint():
            raise ValueError(f"{paths.relative(folder)}: the training tasks changed since the checkpoint (other "
                             f"augmented files?); restore them, or pass overwrite=True to start again")
        if self.main:
            kept = [r for r in read_training_log(self.run) if r["step"] <= self.state.step]
            artifacts.write_jsonl(self.log_path, kept)
        log.info("resuming %s after step %d of %d", paths.relative(folder), self.state.step, self.n_steps)

    def same_weights_everywhere(self, when: str) -> None:
        """In a job of several processes, the meta weights must agree bit for bit (``when``: which moment)."""
        if distributed.job().size > 1:
            distributed.same_everywhere(self.learner.meta_hash(), f"the meta weights {when}")

    def elapsed(self) -> float:
        return round(self.state.elapsed_s + time.perf_counter() - self.started, 3)

    # --- one optimizer step -------------------------------------------------------------------------------
    def batch_of(self, step: int) -> list[Task]:
        """The tasks of optimizer step ``step`` (0-based): a slice of its epoch's shuffled order."""
        epoch, position = divmod(step, self.per_epoch)
        if self.state.order_epoch != epoch:
            self.state.order, self.state.order_epoch = epoch_order(len(self.data.train), self.args.seed, epoch), epoch
        size = self.args.meta_batch_size
        return [self.data.train[i] for i in self.state.order[position * size:(position + 1) * size]]

    def take_step(self, stop: int) -> bool:
        """One optimizer step and what follows it: log row, validation, kept weights, checkpoint; False when the step
        was skipped as non-finite."""
        step, state = self.state.step, self.state
        batch = self.batch_of(step)
        rates = group_rates(step, self.args, self.n_steps)
        loss, grad_norm, problem, truncated = meta_step(self.learner, self.optimizer, self.params, batch, rates)
        state.truncated_prompts += truncated
        if problem is not None:
            self.skip(f"step {step + 1}: non-finite {problem}")
        state.step, state.tasks_seen = step + 1, state.tasks_seen + len(batch)
        if problem is None:
            self.recent = (self.recent + [loss])[-10:]
        if problem is not None or state.step % self.args.logging_steps == 0 or state.step == self.n_steps:
            self.log_step(loss, grad_norm, rates, skipped=problem is not None)
        if self.data.validation and (state.step % self.args.eval_steps == 0 or state.step == self.n_steps):
            self.validate()
        self.keep_weights()
        if state.step % self.args.save_steps == 0 or state.step in (self.n_steps, stop):
            self.save_checkpoint()
        return problem is None

    def skip(self, message: str) -> None:
        """A non-finite step: an error, or (``on_nonfinite='skip'``) counted and warned about, weights untouched."""
        if self.args.on_nonfinite == "error":
            raise NonFiniteError(message + ". Lower the learning rate, check these records, or set train_args "
                                 "on_nonfinite='skip' to skip such steps")
        self.state.skipped_nonfinite += 1
        log.warning("%s: step skipped (%d skipped so far)", message, self.state.skipped_nonfinite)

    def log_step(self, loss: float, grad_norm: float, rates: dict[str, float], skipped: bool) -> None:
        """The ``train`` row of the step just taken (a skipped step's loss is null)."""
        if not self.main:
            return
        state = self.state
        append_training_log(self.log_path, {
            "kind": "train", "step": state.step, "loss": None if skipped else _finite(loss), "lr": rates["phi"],
            "alpha_lr": rates["alpha"], "grad_norm": _finite(grad_norm), "tasks_seen": state.tasks_seen,
            "epoch": round(state.step / self.per_epoch, 4),
            "alpha": {n: float(v) for n, v in self.learner.alpha.tensors().items()},
            "skipped": skipped, "skipped_nonfinite": state.skipped_nonfinite,
            "truncated_prompts": state.truncated_prompts, "elapsed_s": self.elapsed()})

    def validate(self) -> None:
        """A validation pass at the current step; its weights become meta_state.safetensors when it is the best."""
        args = self.args
        row = {"kind": "eval", "step": self.state.step,
               **evaluate(self.learner, self.data.validation, generate=args.metric_for_best_model == "f1")}
        row["best"] = is_better(row, self.state.best, args.metric_for_best_model)
        if row["best"]:
            self.state.best = {k: row[k] for k in ("step", "eval_loss", "eval_em", "eval_f1")}
            if self.main:
                self.learner.save(paths.meta_state_file(self.run))
        if self.main:
            append_training_log(self.log_path, row)
        log.info("step %d: validation loss %s, F1 %s%s", self.state.step, row["eval_loss"], row["eval_f1"],
                 " (best)" if row["best"] else "")

    def keep_weights(self) -> None:
        """The weights after a step of ``keep_steps``: written before this step's checkpoint, so a kill in between
        redoes the step and writes the same weights again."""
        if self.main and self.state.step in self.args.keep_steps:
            kept = paths.kept_step_state(self.run, self.state.step)
            kept.parent.mkdir(parents=True, exist_ok=True)
            self.learner.save(kept)

    def save_checkpoint(self) -> None:
        """The checkpoint after the current step (rank 0), with the training time of every session so far."""
        if self.main:
            checkpoint.save(paths.output_dir(self.run), self.learner, self.optimizer,
                            {**asdict(self.state), "elapsed_s": self.elapsed(), "total_steps": self.n_steps})

    # --- the loop -----------------------------------------------------------------------------------------
    def run_until(self, stop: int) -> None:
        """Optimizer steps until ``stop``; a keyboard interrupt saves a checkpoint first (train again resumes)."""
        bar = tqdm(total=self.n_steps, initial=self.state.step, desc="meta-train", unit="step", disable=not self.main)
        try:
            while self.state.step < stop:
                if self.take_step(stop):
                    bar.set_postfix(loss=f"{sum(self.recent) / len(self.recent):.4f}", refresh=False)
                bar.update(1)
        except KeyboardInterrupt:
            self.save_checkpoint()
            log.warning("interrupted: checkpoint saved after step %d; call train() again to resume", self.state.step)
            raise
        finally:
            bar.close()

    def finish(self, train_datasets: Sequence[str], train_file: str) -> dict:
        """The finished run (rank 0): the weights when nothing was validated, the summary, the adapter and, last,
        ``train_summary.json``; a run whose every step was skipped is refused, not finished."""
        state, folder = self.state, paths.output_dir(self.run)
        if state.step and state.skipped_nonfinite >= state.step:
            raise NonFiniteError(f"{paths.relative(folder)}: every one of the {state.step} steps was skipped as "
                                 "non-finite, so nothing was learned and the run is not finished; check the "
                                 "warm-start adapter and the learning rate, then train again with overwrite=True")
        if not self.data.validation:
            self.learner.save(paths.meta_state_file(self.run))
        summary = summary_of(self.run, self.preset, train_datasets, train_file, self.data, state,
                             read_training_log(self.run), self.elapsed())
        adapters.export_run(self.run, allow_unfinished=True)   # the selected phi as a PEFT adapter (before the summary)
        artifacts.write_json(paths.train_summary_file(self.run), summary)
        return summary


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

    loop = MetaTraining(run, preset, data, device)
    if resuming:
        loop.resume()
    else:
        loop.begin(request)
    loop.same_weights_everywhere("at the start")
    if args.validation_size == 0:
        log.warning("validation_size=0: no validation slice, the final weights are kept as %s", paths.META_STATE)
    log.info("meta-training %s: %d train tasks, %d validation tasks, %d steps of %d tasks", run, len(data.train),
             len(data.validation), loop.n_steps, args.meta_batch_size)
    loop.start_clock()
    if not resuming and data.validation:
        loop.validate()                                     # step 0: the initialisation's score
    loop.run_until(loop.n_steps if stop_after is None else min(loop.n_steps, stop_after))
    loop.same_weights_everywhere("at the end")
    if loop.state.step < loop.n_steps:
        log.info("paused after step %d of %d (stop_after): train again to resume", loop.state.step, loop.n_steps)
        return {"status": "paused", "step": loop.state.step, "total_steps": loop.n_steps}
    summary = distributed.on_main(loop.finish, train_datasets, train_file)
    log.info("meta-training done: %s", summary)
    return summary
