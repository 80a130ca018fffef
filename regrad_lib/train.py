"""03_train: meta-learn the LoRA initialisation ``phi`` and step sizes ``alpha`` (method.md equation 3).

Reads ``data/augmented/<dataset>/<train_file>.json`` for every training dataset (written by 02_augment) and
writes ``outputs/<run>/``: the four configs, ``meta_state.safetensors`` (the best on the validation slice),
``training_log.jsonl`` (one JSON row per train step or evaluation, ``kind`` "train"/"eval"), ``provenance.json``,
``train_request.json``, ``checkpoint/`` (resume), ``adapter/`` (the selected ``phi`` as a PEFT LoRA adapter)
and, last, ``train_summary.json`` (the run is finished).

The validation slice for checkpoint selection is held out of the *training* tasks (seeded), never the dev
file that 05_evaluate reports (method.md, "Known flaws").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from . import adapters, artifacts, checkpoint, config, distributed, metrics, paths, regrad
from . import ownership, params, runlock
from . import tasks as tasks_mod
from .learner import META_STATE, TRAIN_SUMMARY, Learner, read_state
from .tasks import Task

log = logging.getLogger(__name__)

LOG = "training_log.jsonl"
SUMMARY = TRAIN_SUMMARY
REQUEST = "train_request.json"
# Train args that may change between an interrupted run and its resumption (they do not change the math).
RESUMABLE_CHANGES = {"eval_steps", "save_steps", "logging_steps", "on_nonfinite"}


class NonFiniteError(FloatingPointError):
    """A meta step produced a NaN/inf loss or gradient; the message names the step and the tasks."""


# --- data ------------------------------------------------------------------------------------------------------

@dataclass
class TrainData:
    """The shuffled training tasks and the held-out validation slice."""
    train: list[Task]
    validation: list[Task]

    def fingerprint(self) -> str:
        ids = [[[t.extra.get("dataset"), t.test_id, t.question] for t in part] for part in (self.train, self.validation)]
        return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def load_tasks(train_datasets: Sequence[str], train_file: str, topk: int) -> list[Task]:
    """Every record of ``data/augmented/<dataset>/<train_file>.json`` as a :class:`Task` (dataset in ``extra``)."""
    if isinstance(train_datasets, str):
        raise TypeError(f"train_datasets={train_datasets!r}: give a list of dataset names, e.g. [{train_datasets!r}]")
    if not train_datasets:
        raise ValueError("train_datasets is empty: name at least one dataset, e.g. ['popqa', 'hotpotqa']")
    out = []
    for dataset in train_datasets:
        out += [dataclasses.replace(task, extra={"dataset": dataset})
                for task in tasks_mod.load(dataset, train_file, topk)]
    return out


def split_tasks(all_tasks: list[Task], validation_size: int, seed: int,
                max_train_tasks: int | None = None) -> TrainData:
    """Mix and shuffle (seeded); the first ``validation_size`` are the validation slice, then ``max_train_tasks``."""
    if validation_size >= len(all_tasks):
        raise ValueError(f"validation_size={validation_size} but only {len(all_tasks)} training tasks: lower "
                         "train_args validation_size or augment more training questions")
    order = list(range(len(all_tasks)))
    random.Random(seed).shuffle(order)
    validation = [all_tasks[i] for i in order[:validation_size]]
    train = [all_tasks[i] for i in order[validation_size:]]
    return TrainData(train[:max_train_tasks] if max_train_tasks else train, validation)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The task order of one epoch (reproducible from the seed and the epoch number)."""
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def describe(tasks: Sequence[Task], limit: int = 8) -> str:
    shown = [f"{t.extra.get('dataset', '?')}:{t.test_id} {t.question[:60]!r}" for t in tasks[:limit]]
    return "; ".join(shown) + (f"; ... ({len(tasks) - limit} more)" if len(tasks) > limit else "")


# --- schedule ----------------------------------------------------------------------------------------------

def learning_rate(step: int, args: config.TrainArgs, total_steps: int, base: float | None = None) -> float:
    """The lr of optimizer step ``step`` (0-based), as torch's SequentialLR of the public code computes it:
    LinearLR from ``warmup_start_factor`` over ``int(warmup_ratio * total_steps)`` steps, then a linear decay
    to 0 or a cosine decay to ``eta_min`` over the remaining steps. ``base``: the peak lr (default
    ``learning_rate``; the step sizes' group passes ``alpha_learning_rate``)."""
    warmup = int(args.warmup_ratio * total_steps)
    base = args.learning_rate if base is None else base
    if step < warmup:
        return base * (args.warmup_start_factor + (1.0 - args.warmup_start_factor) * step / warmup)
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if args.lr_scheduler_type == "linear":
        return base * (1.0 - progress)
    return args.eta_min + (base - args.eta_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps(n_train: int, args: config.TrainArgs) -> tuple[int, int]:
    """(optimizer steps in all, steps per epoch); the last meta batch of an epoch may be smaller."""
    per_epoch = math.ceil(n_train / args.meta_batch_size)
    return (args.max_steps or per_epoch * args.num_train_epochs), per_epoch


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


def make_optimizer(learner: Learner) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    """AdamW over two groups: the LoRA weights phi (``learning_rate``) and the learned step sizes alpha
    (``alpha_learning_rate``, default the same); returns it and the list of all its parameters (for clipping)."""
    args = learner.preset.train
    phi = list(learner.phi.values())
    alpha = [p for p in learner.alpha.parameters() if p.requires_grad]
    groups = [{"params": phi, "name": "phi"}] + ([{"params": alpha, "name": "alpha"}] if alpha else [])
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  eps=args.adam_epsilon, weight_decay=args.weight_decay)
    return optimizer, phi + alpha


def group_rates(step: int, args: config.TrainArgs, total_steps: int) -> dict[str, float]:
    """The lr of each parameter group at ``step``: the same schedule, each group from its own peak."""
    alpha_base = args.learning_rate if args.alpha_learning_rate is None else args.alpha_learning_rate
    return {"phi": learning_rate(step, args, total_steps), "alpha": learning_rate(step, args, total_steps, alpha_base)}


def optimizer_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], max_grad_norm: float,
                   lr: float | dict[str, float]) -> float:
    """Clip the accumulated gradient over phi + alpha and step at ``lr`` (one value, or one per group name);
    returns the norm before clipping. A non-finite norm is returned without stepping (the weights stay)."""
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if math.isfinite(grad_norm):
        for group in optimizer.param_groups:
            group["lr"] = lr[group.get("name", "phi")] if isinstance(lr, dict) else lr
        optimizer.step()
    return grad_norm


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
        tb = tasks_mod.task_batch(learner.tokenizer, chunk, learner.preset.learner)
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
        tb = tasks_mod.task_batch(learner.tokenizer, chunks[i], learner.preset.learner).to(learner.device)
        with torch.no_grad():  # the inner gradient still runs (enable_grad inside)
            mine.append(regrad.meta_losses(learner.model, learner.phi, learner.alpha, tb, first_order=True,
                                           precision=learner.precision).float().cpu().tolist())
    losses = [v for part in distributed.merge_turns(mine, len(chunks)) for v in part]
    out = {"eval_loss": _finite(sum(losses) / len(losses)), "eval_em": None, "eval_f1": None, "n": len(validation)}
    if generate:
        from .evaluate import predict_online  # evaluate imports the learner stack; keep train importable alone

        predictions = predict_online(learner, validation, gamma=1.0)
        scores = metrics.aggregate(metrics.score(p, list(t.answers)) for p, t in zip(predictions, validation))
        out.update(eval_em=scores["em"], eval_f1=scores["f1"])
    return out


def _better(row: dict, best: dict | None, metric: str) -> bool:
    """F1 higher (ties broken by lower loss) or loss lower; a missing F1 falls back to the loss."""
    def key(r):
        loss = r["eval_loss"] if r["eval_loss"] is not None else math.inf
        return (-r["eval_f1"], loss) if metric == "f1" and r["eval_f1"] is not None else (loss,)
    return best is None or key(row) < key(best)


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
        if isinstance(self.train_datasets, str):
            self.train_datasets = [self.train_datasets]
        if not self.train_datasets:
            raise ValueError("train_datasets is empty: name at least one dataset, e.g. ['popqa', 'hotpotqa']")
        self.config = configure(self.preset, blind_context=self.blind_context, seed=self.seed,
                                max_steps=self.max_steps, limit=self.max_train_tasks, init_adapter=self.init_adapter)
        for dataset in self.train_datasets:
            tasks_mod.augmented_path(dataset, self.train_file)

    @property
    def train_file(self) -> str:
        from .augment import output_name
        return output_name("train", self.train_limit)


def run(settings: TrainSettings) -> dict:
    """03_train's computation: :func:`train` with the notebook's settings; the summary."""
    return train(settings.run, settings.config, settings.train_datasets, train_file=settings.train_file,
                 device=settings.device, overwrite=settings.overwrite)


def learned_alpha(run: str) -> dict[str, float]:
    """The selected step sizes of ``outputs/<run>/meta_state.safetensors``, per LoRA tensor (mean for ``full``)."""
    path = paths.output_dir(run) / META_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{paths.relative(path)} not found: it is written by 03_train (run={run!r})")
    return {k[len("alpha."):].replace("__", "."): float(v.float().mean())
            for k, v in read_state(path).items() if k.startswith("alpha.")}


# --- artifacts -----------------------------------------------------------------------------------------

def read_log(run: str) -> list[dict]:
    """The rows of ``outputs/<run>/training_log.jsonl``; a last line cut short (a full disk) is dropped."""
    path = paths.output_dir(run) / LOG
    if not path.is_file():
        raise FileNotFoundError(f"{paths.relative(path)} not found: it is written by 03_train (run={run!r})")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows += [json.loads(line)] if line.strip() else []
        except json.JSONDecodeError as e:
            if number < len(lines):
                raise ValueError(f"{paths.relative(path)}: line {number} is not valid JSON ({e.msg})") from None
            log.warning("%s: dropped its last line, cut short: %r", paths.relative(path), line[:80])
    return rows


def _append(path: Path, row: dict) -> None:
    with artifacts.naming(path), path.open("a", encoding="utf-8") as f:   # a full disk names the log
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _request(preset: config.Preset, train_datasets: Sequence[str], train_file: str) -> dict:
    return {"train_datasets": list(train_datasets), "train_file": train_file,
            "preset": {k: v for k, v in preset.to_dict().items() if k != "name"}}


def _changed_settings(folder: Path, request: dict) -> list[str]:
    """Settings of ``request`` that differ from the run saved in ``folder`` (generation and logging may change)."""
    saved = artifacts.read_json(folder / REQUEST)
    diffs = [k for k in ("train_datasets", "train_file") if saved.get(k) != request[k]]
    for section, values in request["preset"].items():
        old = saved["preset"].get(section, {})
        diffs += [f"{section}.{k}" for k, v in values.items() if old.get(k) != v
                  and not (section == "generation" or (section == "train" and k in RESUMABLE_CHANGES))]
    return diffs


def _check_resumable(folder: Path, request: dict) -> None:
    diffs = _changed_settings(folder, request)
    if diffs:
        raise ValueError(f"{paths.relative(folder)} holds an unfinished run with other settings ({', '.join(diffs)}); "
                         "use the same settings to resume it, overwrite=True to start again, or another run name")


def _finished(folder: Path, request: dict) -> dict | None:
    """The saved summary of a finished run with these settings (kept, as a re-run pipeline expects), else None."""
    if not (folder / SUMMARY).exists():
        return None
    diffs = _changed_settings(folder, request) if (folder / REQUEST).exists() else ["(no saved request)"]
    if diffs:
        raise FileExistsError(f"{paths.relative(folder)} is a finished training run with other settings "
                              f"({', '.join(diffs)}); pass overwrite=True to train it again, or choose another run name")
    log.info("%s is a finished run with these settings: kept (overwrite=True trains it again)", paths.relative(folder))
    return {**artifacts.read_json(folder / SUMMARY), "status": "kept"}


def _prepare_folder(folder: Path, request: dict, overwrite: bool, resume: bool) -> bool:
    """Make ``folder`` ready; True when an unfinished run will be resumed from its checkpoint."""
    if (folder / SUMMARY).exists() and not overwrite:
        raise FileExistsError(f"{paths.relative(folder)} is a finished training run ({SUMMARY}); pass "
                              "overwrite=True to train it again, or choose another run name")
    if folder.exists() and any(folder.iterdir()):
        if overwrite:
            log.info("overwrite=True: removing %s", paths.relative(folder))
            ownership.remove_run(folder)
        elif not checkpoint.recover(folder):   # interrupted before its first complete checkpoint
            log.info("%s holds no complete checkpoint: starting the run again", paths.relative(folder))
            ownership.remove_run(folder)
        elif resume and (folder / REQUEST).exists():
            _check_resumable(folder, request)
            return True
        else:
            raise FileExistsError(f"{paths.relative(folder)} holds an unfinished run: resume=True continues it, "
                                  "overwrite=True starts again")
    ownership.mark_run(folder)
    return False


# --- the training loop ---------------------------------------------------------------------------------

@params.typed
@runlock.writer("03_train")
def train(run: str, preset: config.Preset | str, train_datasets: Sequence[str], *, train_file: str = "train_all",
          device: str = "cpu", limit: int | None = None, overwrite: bool = False, resume: bool = True) -> dict:
    """Meta-train on the augmented training tasks; returns the summary (also ``train_summary.json``).

    ``limit`` caps the training tasks (``train_args.max_train_tasks``). An unfinished run resumes from its
    checkpoint at the next step; a finished run is refused unless ``overwrite=True``. In a job of several
    processes (:mod:`regrad_lib.distributed`) every process calls this alike; rank 0 alone writes the folder.
    """
    if isinstance(preset, str):
        preset = config.load_preset(preset)
    if limit is not None:
        preset = preset.replace(train={"max_train_tasks": limit})
    args = preset.train
    folder = paths.output_dir(run)
    request = _request(preset, train_datasets, train_file)
    data = split_tasks(load_tasks(train_datasets, train_file, args.topk), args.validation_size, args.seed,
                       args.max_train_tasks)
    kept = None if overwrite else distributed.on_main(_finished, folder, request)
    if kept is not None:
        return kept
    resuming = distributed.on_main(_prepare_folder, folder, request, overwrite, resume)
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
        row["best"] = _better(row, state["best"], args.metric_for_best_model)
        if row["best"]:
            state["best"] = {k: row[k] for k in ("step", "eval_loss", "eval_em", "eval_f1")}
            if main:
                learner.save(folder / META_STATE)
        if main:
            _append(log_path, row)
        log.info("step %d: validation loss %s, F1 %s%s", step, row["eval_loss"], row["eval_f1"],
                 " (best)" if row["best"] else "")

    def save_checkpoint() -> None:
        if main:
            checkpoint.save(folder, learner, optimizer,
                            {**state, "elapsed_s": elapsed(), "total_steps": n_steps})

    if not resuming and data.validation:
        run_eval(0)
    recent: list[float] = []
    bar = tqdm(total=n_steps, initial=state["step"], desc="meta-train", unit="step", disable=not main)
    try:
        while state["step"] < n_steps:
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
                _append(log_path, {
                    "kind": "train", "step": state["step"], "loss": _finite(loss) if problem is None else None,
                    "lr": rates["phi"], "alpha_lr": rates["alpha"], "grad_norm": _finite(grad_norm), "tasks_seen": state["tasks_seen"],
                    "epoch": round(state["step"] / per_epoch, 4),
                    "alpha": {n: float(v) for n, v in learner.alpha.tensors().items()},
                    "skipped": problem is not None, "skipped_nonfinite": state["skipped_nonfinite"],
                    "truncated_prompts": state["truncated_prompts"], "elapsed_s": elapsed()})
            if data.validation and (state["step"] % args.eval_steps == 0 or state["step"] == n_steps):
                run_eval(state["step"])
            if state["step"] % args.save_steps == 0 or state["step"] == n_steps:
                save_checkpoint()
    except KeyboardInterrupt:
        save_checkpoint()
        log.warning("interrupted: checkpoint saved after step %d; call train() again to resume", state["step"])
        raise
    finally:
        bar.close()

    if distributed.job().size > 1:
        distributed.same_everywhere(learner.meta_hash(), "the meta weights at the end")

    def finish() -> dict:
        if state["step"] and state["skipped_nonfinite"] >= state["step"]:
            raise NonFiniteError(f"{paths.relative(folder)}: every one of the {state['step']} steps was skipped as "
                                 "non-finite, so nothing was learned and the run is not finished; check the "
                                 "warm-start adapter and the learning rate, then train again with overwrite=True")
        if not data.validation:
            learner.save(folder / META_STATE)
        summary = _summary(run, preset, train_datasets, train_file, data, state, read_log(run), elapsed())
        adapters.export_run(run, allow_unfinished=True)   # the selected phi as a PEFT adapter (before the summary)
        artifacts.write_json(folder / SUMMARY, summary)
        return summary

    summary = distributed.on_main(finish)
    log.info("meta-training done: %s", summary)
    return summary


def _summary(run, preset, train_datasets, train_file, data, state, rows, wall) -> dict:
    train_rows = [r for r in rows if r["kind"] == "train" and r["loss"] is not None]
    evals = [r for r in rows if r["kind"] == "eval"]
    return {"run": run, "preset": preset.name, "train_datasets": list(train_datasets), "train_file": train_file,
            "steps": state["step"], "tasks": state["tasks_seen"], "train_tasks": len(data.train),
            "validation_tasks": len(data.validation),
            "first_loss": train_rows[0]["loss"] if train_rows else None,
            "last_loss": train_rows[-1]["loss"] if train_rows else None,
            "first_eval": evals[0] if evals else None, "last_eval": evals[-1] if evals else None,
            "best_eval": state["best"], "metric_for_best_model": preset.train.metric_for_best_model,
            "skipped_nonfinite": state["skipped_nonfinite"], "truncated_prompts": state.get("truncated_prompts", 0),
            "wall_s": wall,
            "tasks_per_s": round(state["tasks_seen"] / wall, 4) if wall else None}
