"""The baselines trained on what meta-training used: ``sft`` (a LoRA fine-tuned on the training questions, closed
book) and ``rag_sft`` (the same with each question's top-k passages in the prompt), answered by the one harness.

Meta-training teaches the LoRA more than injecting knowledge: it also learns the answer format (a few words, then
the end-of-turn token). A baseline that never saw that frame loses on format, not on knowledge. So these baselines
get exactly what 03_train's meta-training got:

- the same training questions in the same order: the tasks 03_train stepped on (its validation slice held out,
  each epoch's seeded order, ``meta_batch_size`` tasks a step, as many steps as the weights they are compared with);
- the same answer frame and label: the run's chat prompt (instruction, worked example), the question (``sft``) or
  the question and its passages cut as the bank cuts them (``rag_sft``), and the loss on ` <answer>` + end-of-turn
  only (``L_ans``, the meta loss's label);
- the same LoRA modules, initialisation (the run's seed), optimizer (AdamW with the run's betas, epsilon and
  weight decay), schedule (warm-up and decay over the run's steps), gradient clipping and checkpoint selection (the
  validation slice every ``eval_steps``, by the run's ``metric_for_best_model``);
- a learning rate of its own, chosen on the validation slice from the preset's ``baseline_config.json`` grid
  (``learning_rates``; the lowest validation answer loss, or the highest F1 when the run selects by F1).

Files, ``outputs/<run>/baselines/<method>/`` (:func:`regrad_lib.io.paths.baseline_dir`): ``request.json`` (what
the training depends on: another request is refused unless ``overwrite``), ``lr-<rate>/`` per grid point
(``checkpoint/`` while it trains: weights, the best weights so far, AdamW's state, the step; then ``log.jsonl`` and
``result.json``), and last ``selected.json`` with ``weights.safetensors`` (the chosen LoRA, checksummed). A killed
training resumes from its last checkpoint and ends with the same weights.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from regrad_lib import config
from regrad_lib.answering import harness
from regrad_lib.answering.specs import SPECS
from regrad_lib.core import lora, regrad, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.core.task_batches import Task
from regrad_lib.data import metrics
from regrad_lib.io import (
    artifacts,
    checkpoint,
    distributed,
    ownership,
    paths,
    tensorfile,
)
from regrad_lib.training import run_folder
from regrad_lib.training.schedule import learning_rate, total_steps
from regrad_lib.training.train_data import TrainData, step_batches, training_data

log = logging.getLogger(__name__)

METHODS = tuple(m for m, spec in SPECS.items() if spec.weights in ("sft", "rag_sft"))
REQUEST, WEIGHTS = "request.json", "weights.safetensors"
RESULT, LOG = "result.json", "log.jsonl"
TENSORS, STATE = "state.safetensors", "state.json"
FIX = "train the baseline again (05_evaluate with overwrite = True)"


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not a fine-tuned baseline; these are {list(METHODS)}")
    return method


def with_context(method: str) -> bool:
    """Whether the baseline's prompts hold the question's passages (``rag_sft``)."""
    return SPECS[check_method(method)].context


# --- what the baseline is trained on -------------------------------------------------------------------------

def check_inputs(run: str) -> None:
    """Refuse, before any work, a run whose meta-training questions cannot be read again (the baselines train on
    them): its request file and every augmented training file it names."""
    request = paths.train_request_file(run)
    if not request.is_file():
        raise FileNotFoundError(f"{paths.relative(request)} not found: sft and rag_sft train on the questions "
                                f"03_train meta-trained run {run!r} on, which that file names; train the run first")
    saved = artifacts.read_json(request)
    for dataset in saved["train_datasets"]:
        task_batches.augmented_path(dataset, saved["train_file"])     # names 02_augment when absent


def run_data(run: str, learner: Learner) -> TrainData:
    """The training tasks and validation slice of ``run``'s meta-training (its saved request and preset)."""
    request = artifacts.read_json(paths.train_request_file(run))
    return training_data(request["train_datasets"], request["train_file"], learner.preset.train)


def examples(learner: Learner, tasks: Sequence[Task], method: str) -> regrad.TokenBatch:
    """The baseline's training (and validation) examples: the run's prompt for each task, with its passages cut as
    the bank cuts them for ``rag_sft``, and the meta loss's label."""
    return task_batches.qa_batch(learner.tokenizer, tasks, learner.preset.learner, with_context=with_context(method),
                                 stage="eval")


def answer_losses(learner: Learner, phi: dict[str, torch.Tensor], tasks: Sequence[Task], method: str,
                  grad: bool = False) -> torch.Tensor:
    """Per-task answer NLL (``L_ans``) of ``tasks`` under the LoRA ``phi`` (forward under the run's autocast)."""
    batch = examples(learner, tasks, method).to(learner.device)
    with torch.set_grad_enabled(grad), lora.use(learner.model, phi), regrad.autocast(learner.device, learner.precision):
        return regrad.token_losses(learner.model, batch)


# --- one training: one learning rate --------------------------------------------------------------------------

@dataclass
class PointState:
    """Where the training of one grid point stands (saved with its checkpoint)."""
    step: int = 0
    best: dict | None = None                    # the best validation row so far (step, eval_loss, eval_f1)
    log: list[dict] = field(default_factory=list)


def validate(learner: Learner, phi: dict[str, torch.Tensor], validation: Sequence[Task], method: str,
             step: int) -> dict:
    """The validation row of ``phi`` at ``step``: mean answer loss and, when the run selects by F1, the F1 of the
    answers the harness generates with these weights (the selection rule of 03_train)."""
    chunk = learner.preset.train.tasks_per_forward
    losses = [float(v) for i in range(0, len(validation), chunk)
              for v in answer_losses(learner, phi, validation[i:i + chunk], method)]
    row = {"kind": "eval", "step": step, "eval_loss": sum(losses) / len(losses), "eval_em": None, "eval_f1": None}
    if learner.preset.train.metric_for_best_model == "f1":
        weights = dataclasses.replace(learner, phi={n: t.detach() for n, t in phi.items()})
        rows = harness.answer(SPECS[method], weights, validation, topk=learner.preset.train.topk, nll=False,
                              desc=f"validate {method}")
        scores = metrics.aggregate(metrics.score_kind(r["prediction"], list(t.answers), t.kind, t.choices)
                                   for r, t in zip(rows, validation))
        row.update(eval_em=scores["em"], eval_f1=scores["f1"])
    return row


def _save_point(folder: Path, phi, best_phi, optimizer, state: PointState) -> None:
    tensors = {**{f"phi.{n}": t.detach().contiguous().cpu() for n, t in phi.items()},
               **{f"best.{n}": t.detach().contiguous().cpu() for n, t in best_phi.items()}}
    optim_tensors, optim_json = checkpoint.optimizer_parts(optimizer)
    with artifacts.atomic_dir(folder / checkpoint.FOLDER) as tmp:
        artifacts.write_json(tmp / STATE, {**dataclasses.asdict(state), "optimizer": optim_json})
        tensorfile.save(tmp / TENSORS, {**tensors, **optim_tensors},
                        {"step": str(state.step), "state_sha256": tensorfile.text_digest(tmp / STATE)},
                        shown_as=folder / checkpoint.FOLDER / TENSORS)


def _load_point(folder: Path, phi, best_phi, optimizer) -> PointState | None:
    ckpt = folder / checkpoint.FOLDER
    if artifacts.recover_dir(ckpt) is None or not (ckpt / TENSORS).is_file():
        return None
    tensors, metadata = tensorfile.load(ckpt / TENSORS, required=True, fix=FIX,
                                        finite=lambda k: k.startswith(("phi.", "best.")))
    if metadata.get("state_sha256") != tensorfile.text_digest(ckpt / STATE):
        raise tensorfile.IntegrityError(f"{paths.relative(ckpt / STATE)} does not match its checkpoint's record of "
                                        f"it: damaged or edited; {FIX}")
    saved = artifacts.read_json(ckpt / STATE)
    with torch.no_grad():
        for n in phi:
            phi[n].copy_(tensors[f"phi.{n}"])
            best_phi[n].copy_(tensors[f"best.{n}"])
    optimizer.load_state_dict(checkpoint.optimizer_state(tensors, saved.pop("optimizer")))
    return PointState(**saved)


def snapshot(folder: Path, step: int) -> Path:
    """The weights a training kept after ``step`` (``keep`` of :func:`train_point`)."""
    return folder / "steps" / f"{int(step):06d}.safetensors"


# long: one grid point's whole fine-tuning loop, its resume, validation, kept steps and checkpoints in one place
def train_point(learner: Learner, data: TrainData, method: str, rate: float, steps: int, folder: Path,
                selection: str = "best", keep: Sequence[int] = ()) -> dict:
    """Fine-tune a fresh LoRA at ``rate`` for ``steps`` of 03_train's steps; ``result.json`` in ``folder``:
    the weights chosen (``selection``: the best validation row, as 03_train keeps its checkpoint, or the ``last``
    step's, as a kept step of a learning curve) and their validation row. Resumes from ``folder/checkpoint`` — also
    a finished training asked for more steps, which continues it; ``keep``: steps whose weights are also kept
    (:func:`snapshot`), as 03_train's ``keep_steps``."""
    if (folder / RESULT).is_file():
        done = artifacts.read_json(folder / RESULT)
        if done["steps"] >= steps:
            return done
    args = learner.preset.train
    n_steps, _ = total_steps(len(data.train), args)
    phi = {n: t.requires_grad_(True) for n, t in lora.fresh(learner.model, learner.preset.peft, args.seed).items()}
    best_phi = {n: t.detach().clone() for n, t in phi.items()}
    params = list(phi.values())
    optimizer = torch.optim.AdamW(params, lr=rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                                  weight_decay=args.weight_decay)
    state = _load_point(folder, phi, best_phi, optimizer) if folder.exists() else None   # every rank: same weights
    state = state or PointState()
    main = distributed.job().main

    def evaluate(step: int) -> None:
        row = validate(learner, phi, data.validation, method, step)
        row["best"] = run_folder.is_better(row, state.best, args.metric_for_best_model)
        if row["best"]:
            state.best = {k: row[k] for k in ("step", "eval_loss", "eval_em", "eval_f1")}
            with torch.no_grad():
                for n, t in phi.items():
                    best_phi[n].copy_(t)
        state.log.append(row)

    if state.step == 0 and not state.log and data.validation:
        evaluate(0)
    batches = step_batches(len(data.train), args.seed, args.meta_batch_size, steps)
    with tqdm(total=steps, initial=state.step, desc=f"{method} lr {rate:g}", unit="step", disable=not main) as bar:
        while state.step < steps:
            batch = [data.train[i] for i in batches[state.step]]
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for i in range(0, len(batch), args.tasks_per_forward):
                losses = answer_losses(learner, phi, batch[i:i + args.tasks_per_forward], method, grad=True)
                (losses.sum() / len(batch)).backward()
                total += float(losses.detach().sum())
            if not math.isfinite(total):
                raise FloatingPointError(f"{method}: non-finite answer loss at step {state.step + 1} with learning "
                                         f"rate {rate:g}: take it out of baseline_config.json's learning_rates")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm))
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(state.step, args, n_steps, base=rate)
            optimizer.step()
            state.step += 1
            state.log.append({"kind": "train", "step": state.step, "loss": total / len(batch),
                              "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm})
            if data.validation and (state.step % args.eval_steps == 0 or state.step == steps):
                evaluate(state.step)
            if state.step in keep and main:        # before the checkpoint: a kill in between redoes this step
                snapshot(folder, state.step).parent.mkdir(parents=True, exist_ok=True)
                weights = {n: t.detach().contiguous().cpu() for n, t in phi.items()}
                tensorfile.save(snapshot(folder, state.step), weights,
                                {"learning_rate": repr(rate), "step": str(state.step)})
            if state.step % args.save_steps == 0 or state.step == steps:
                distributed.on_main(_save_point, folder, phi, best_phi, optimizer, state)
            bar.update(1)
    chosen = best_phi if selection == "best" and data.validation else {n: t.detach() for n, t in phi.items()}
    last = next((r for r in reversed(state.log) if r["kind"] == "eval"), None)
    row = state.best if selection == "best" and data.validation else last
    result = {"learning_rate": rate, "steps": steps, "selection": selection, "validation": row,
              "best": state.best}
    if main:
        tensorfile.save(folder / WEIGHTS, {n: t.detach().contiguous().cpu() for n, t in chosen.items()},
                        {"learning_rate": repr(rate)})
        artifacts.write_jsonl(folder / LOG, state.log)
        artifacts.write_json(folder / RESULT, result)      # last: this grid point is done
    return result


# --- the grid and the chosen baseline ----------------------------------------------------------------------------

def _better(a: dict | None, b: dict | None, metric: str) -> bool:
    """Whether validation row ``a`` beats ``b`` (lower loss, or higher F1); a missing row never wins."""
    if a is None:
        return False
    return run_folder.is_better(a, b, metric)


def request_of(run: str, learner: Learner, data: TrainData, method: str, steps: int, selection: str) -> dict:
    saved = artifacts.read_json(paths.train_request_file(run))
    return {"method": method, "steps": steps, "selection": selection,
            "learning_rates": list(learner.preset.baselines.learning_rates),
            "meta_training": {"train_datasets": saved["train_datasets"], "train_file": saved["train_file"],
                              "preset": saved["preset"]},
            "data": data.fingerprint()}


def _prepare(folder: Path, request: dict, overwrite: bool, selection_file: Path | None = None) -> None:
    """Make ``folder`` ready for ``request``: a folder of another request is refused unless ``overwrite``. A grid
    that only gains learning rates keeps the rates already trained (the choice is made again over the whole grid)."""
    file = folder / REQUEST
    if file.is_file():
        saved = artifacts.read_json(file)
        if saved == request:
            return
        others = {k for k in request if saved.get(k) != request[k]}
        if others == {"learning_rates"} and set(saved["learning_rates"]) <= set(request["learning_rates"]):
            log.info("%s: the grid gains %s; the rates already trained are kept", paths.relative(folder),
                     sorted(set(request["learning_rates"]) - set(saved["learning_rates"])))
            for stale in (selection_file, folder / WEIGHTS):   # chosen over the old grid: chosen again
                if stale is not None and stale.is_file():
                    stale.unlink()
            artifacts.write_json(file, request)
            return
        if not overwrite:
            changed = sorted(k for k in request if saved.get(k) != request[k])
            raise FileExistsError(f"{paths.relative(folder)} was trained for other settings ({', '.join(changed)}): "
                                  f"pass overwrite=True (05_evaluate: overwrite = True) to train it again")
    if folder.exists() and overwrite:
        ownership.check_replaceable(folder, [REQUEST], "baseline folder",
                                    "move it away: it was not written by regrad")
        shutil.rmtree(folder)
    artifacts.write_json(file, request)


def trained_like(run: str) -> tuple[int, str]:
    """(steps, selection) of the meta weights ``run`` answers with: its summary's steps and checkpoint rule (``best``
    on the validation slice as 03_train keeps it; ``last`` for the weights of a kept step, a learning curve's point)."""
    summary = artifacts.read_json(paths.train_summary_file(run))
    return int(summary["steps"]), summary.get("selection", "best")


def planned(run: str, method: str) -> dict:
    """What ``method``'s answers depend on, known before training (kept results must match): the grid of the run's
    preset, the steps and the selection rule (the chosen rate follows from them)."""
    check_method(method)
    steps, selection = trained_like(run)
    rates = config.load_preset(paths.output_dir(run)).baselines.learning_rates
    return {"method": method, "learning_rates": list(rates), "steps": steps, "selection": selection}


def kept_weights(parent: str, method: str, learner: Learner, rate: float, step: int) -> Path:
    """The baseline's weights after ``step`` of the schedule of ``parent`` (a run with kept steps), at ``rate``:
    one training per (parent, method, rate), ``outputs/<parent>/baselines/<method>-kept/lr-<rate>/``, that keeps
    the weights at every kept step of ``parent`` and continues when a later step is asked for."""
    folder = paths.baseline_dir(parent, method).with_name(f"{method}-kept") / f"lr-{rate:g}"
    if not snapshot(folder, step).is_file():
        train_point(learner, run_data(parent, learner), method, rate, step, folder, "last",
                    keep=learner.preset.train.keep_steps)
    if not snapshot(folder, step).is_file():
        raise FileNotFoundError(f"{paths.relative(snapshot(folder, step))} was not written: step {step} is not among "
                                f"{parent}'s keep_steps {learner.preset.train.keep_steps}")
    return snapshot(folder, step)


def _train_kept_point(run: str, method: str, learner: Learner, parent: str, steps: int, folder: Path) -> dict:
    """A kept step's baseline (:mod:`regrad_lib.training.kept_steps`): the parent's training at the point's one
    learning rate, taken at the point's step."""
    rates = learner.preset.baselines.learning_rates
    if len(rates) != 1:
        raise ValueError(f"{run} is step {steps} of {parent}: its baselines take one learning rate (its "
                         f"baseline_config.json has {rates}); choose it on a grid first and give only that rate")
    weights = kept_weights(parent, method, learner, float(rates[0]), steps)
    selected = {"method": method, "learning_rate": rates[0], "metric": learner.preset.train.metric_for_best_model,
                "steps": steps, "selection": "last", "kept_from": parent,
                "grid": [{"learning_rate": rates[0], "validation": None}]}
    if distributed.job().main:
        shutil.copyfile(weights, folder / f".{WEIGHTS}.tmp")
        (folder / f".{WEIGHTS}.tmp").replace(folder / WEIGHTS)
        artifacts.write_json(paths.baseline_selection(run, method), selected)
    return selected


def train(run: str, method: str, learner: Learner, *, overwrite: bool = False) -> dict:
    """Train ``method`` (``sft`` or ``rag_sft``) for ``run`` at every rate of the grid, choose the rate on the
    validation slice and write the chosen weights; returns ``selected.json``. It trains as many steps as the run's
    meta weights took, with their checkpoint rule (:func:`trained_like`); a kept step of a run takes the run's own
    training at that step (:func:`kept_weights`). A finished baseline of the same request is kept; one of another
    request is refused unless ``overwrite``."""
    check_method(method)
    steps, selection = trained_like(run)
    data = run_data(run, learner)
    n_steps, _ = total_steps(len(data.train), learner.preset.train)
    if not 1 <= steps <= n_steps:
        raise ValueError(f"{run}: its summary says {steps} steps but its preset meta-trains {n_steps}")
    folder = paths.baseline_dir(run, method)
    request = request_of(run, learner, data, method, steps, selection)
    distributed.on_main(_prepare, folder, request, overwrite, paths.baseline_selection(run, method))
    if paths.baseline_selection(run, method).is_file() and (folder / WEIGHTS).is_file():
        return artifacts.read_json(paths.baseline_selection(run, method))
    parent = artifacts.read_json(paths.train_summary_file(run)).get("kept_step_of")
    if parent is not None:
        return _train_kept_point(run, method, learner, parent, steps, folder)
    metric = learner.preset.train.metric_for_best_model
    points = {}
    for rate in learner.preset.baselines.learning_rates:
        points[rate] = train_point(learner, data, method, float(rate), steps, folder / f"lr-{rate:g}", selection)
    chosen = None
    for rate, result in points.items():        # ties: the first rate of the grid
        if chosen is None or _better(result["validation"], points[chosen]["validation"], metric):
            chosen = rate
    selected = {"method": method, "learning_rate": chosen, "metric": metric, "steps": steps,
                "selection": selection, "grid": [{"learning_rate": r, "validation": p["validation"]}
                                                 for r, p in points.items()]}
    if distributed.job().main:
        shutil.copyfile(folder / f"lr-{chosen:g}" / WEIGHTS, folder / f".{WEIGHTS}.tmp")
        (folder / f".{WEIGHTS}.tmp").replace(folder / WEIGHTS)
        artifacts.write_json(paths.baseline_selection(run, method), selected)     # last: the baseline is trained
    log.info("%s: learning rate %g chosen on the validation slice (%s)", method, chosen,
             ", ".join(f"{r:g}: {p['validation']}" for r, p in points.items()))
    return selected


def learner_for(run: str, method: str, learner: Learner, *, overwrite: bool = False) -> tuple[Learner, dict]:
    """The learner that answers ``method``: ``learner`` (the run's model) with the baseline's trained LoRA as its
    ``phi`` (trained first when needed), and ``selected.json``."""
    selected = train(run, method, learner, overwrite=overwrite)
    file = paths.baseline_dir(run, method) / WEIGHTS
    tensors, _ = tensorfile.load(file, required=True, fix=FIX, finite=lambda k: True)
    if set(tensors) != set(learner.phi) or any(tensors[n].shape != learner.phi[n].shape for n in tensors):
        raise ValueError(f"{paths.relative(file)} holds another LoRA layout than the run's; {FIX}")
    phi = {n: t.to(device=learner.device, dtype=learner.phi[n].dtype) for n, t in tensors.items()}
    return dataclasses.replace(learner, phi=phi), selected
