"""Continual post-training (CPT): the baseline the paper says ReGrad beats, trained here on the very documents the
Gradient Bank holds and answered by the same harness (methods ``cpt`` and ``cpt_rag``; method.md, "Continual
post-training and drift").

The documents to inject are the bank's: the distinct top-k passages of the evaluated questions
(``data/augmented/<dataset>/<split>.json``, records ``:limit``), formatted and cut as the bank formats them
(:func:`tasks.passage_batch`: ``passage_format``, the document start, ``bank_context_len``). They arrive as a stream
of ``chunks`` chunks in a fixed order: the questions, in the order they are evaluated, are cut into ``chunks``
consecutive blocks of (nearly) equal size, and chunk c holds the passages of block c that no earlier chunk held, in
order of first retrieval (the bank's order). Each chunk is trained ``epochs_per_chunk`` times (its passages in a
seeded shuffle per epoch, never mixed with another chunk's) on the next-token loss ``L_LM`` (equation 1, the mean
over a batch of passages), with AdamW at a constant ``learning_rate`` (no weight decay; one optimizer state for the
whole stream) and gradients clipped at norm 1 (transformers' Trainer default). ``weights``: ``lora`` trains a fresh
LoRA on the preset's modules of the base model (initialised as 03_train's, seeded), ``phi`` continues the run's
meta-trained LoRA, ``full`` trains every base weight (fp32 base weights only: small models).

``objective``: ``raw`` is that loss alone. ``replay`` adds the answer format meta-training taught ReGrad's weights:
the QA examples 03_train took its steps on (:func:`replay_tasks`: the same questions in the same order, as many as
it used), in its answer frame (the run's chat prompt, passages in it only when meta-training put them there, the
label ` <answer>` + end-of-turn: ``L_ans``), dealt out in order over the stream's optimizer steps (step s of S takes
examples ⌊s·R/S⌋ to ⌊(s+1)·R/S⌋ of the R), each step's loss the mean ``L_LM`` of its passages plus the mean
``L_ans`` of its examples. Without it, a LoRA trained on raw passages loses the chat frame and is scored on a
format it was never asked to keep.

Before the first chunk the weights are those of a measured point (the base model, or the meta-trained weights for
``phi``), so that row is copied from the general set; after each chunk (``measure = "every"``) or after the last one
only (``"end"``, the settings grid) :mod:`regrad_lib.cpt.drift` measures the persistent weights: general text,
general questions, ‖Δθ‖, and the knowledge of the questions whose block has arrived (closed book, the harness; after
the last chunk these are the ``cpt`` method's answers). Files, in ``results/<run>/<dataset>/cpt/``: ``checkpoint/``
after every chunk (the trained weights, AdamW's state, the drift rows so far, the replayed examples; an atomic folder
swap), so a killed stream resumes after its last finished chunk and ends with the same weights as an uninterrupted
one; ``drift.json`` once the stream is done. Every process of a job trains the same stream (the training is not
split); rank 0 writes.
The checkpoint is verified as the training checkpoint is (:mod:`regrad_lib.io.tensorfile`): ``state.safetensors``
carries the checksum of its tensors and of ``stream_state.json``, so a flipped bit in a trained weight or in AdamW's
state, an edited state file or a truncated file is refused naming the file, never served or resumed, and the
checkpoint is left as it is.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from regrad_lib import config
from regrad_lib.answering.specs import SPECS
from regrad_lib.core import lora, regrad, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.cpt import drift
from regrad_lib.cpt.replay import Replay, replay_tasks
from regrad_lib.io import artifacts, checkpoint, distributed, paths, result_files, tensorfile

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
TENSORS = "state.safetensors"
STATE = "stream_state.json"
MAX_GRAD_NORM = 1.0
TRAINED_KEYS = ("learning_rate", "epochs_per_chunk", "chunks", "batch_size", "weights", "objective")
MEASURES = ("every", "end")      # measure after every chunk, or after the last one only

Passage = tuple[str, str, str]      # (id, title, text)


@dataclass(frozen=True)
class Stream:
    """The questions of each block and the documents of each chunk (chunk c = block c's new passages)."""
    blocks: list[list[task_batches.Task]]
    chunks: list[list[Passage]]

    def describe(self) -> dict:
        return {"questions": [[t.test_id for t in b] for b in self.blocks], "passages": [[p[0] for p in c]
                                                                                        for c in self.chunks]}


def stream(items: Sequence[task_batches.Task], n_chunks: int, where: str = "stream") -> Stream:
    """The questions cut into ``n_chunks`` consecutive blocks and each block's passages no earlier block held."""
    if n_chunks > len(items):
        raise ValueError(f"{where}: cpt chunks = {n_chunks} but only {len(items)} questions; lower chunks "
                         "(cpt_config.json or the cpt_chunks parameter) or evaluate more questions")
    bounds = [round(c * len(items) / n_chunks) for c in range(n_chunks + 1)]
    blocks = [list(items[bounds[c]:bounds[c + 1]]) for c in range(n_chunks)]
    seen: dict[str, Passage] = {}
    chunks: list[list[Passage]] = []
    for block in blocks:
        chunk = []
        for task in block:
            for pid, (title, text) in zip(task.passage_ids, task.passages):
                passage = (pid, title or "", text)
                if pid in seen:
                    if seen[pid] != passage:
                        raise ValueError(f"{where}: passage id {pid!r} has another title or text in question "
                                         f"{task.test_id} than before; passage ids must name one passage")
                    continue
                seen[pid] = passage
                chunk.append(passage)
        chunks.append(chunk)
    return Stream(blocks, chunks)


def resolve(run: str, overrides: dict | None = None) -> config.CptConfig:
    """The run's ``cpt_config.json`` (its defaults when the run has none) with the notebook's overrides (None
    keeps the run's value), validated."""
    from regrad_lib.io.run_state import trained_state

    folder = trained_state(run, allow_unfinished=True).parent
    cfg = config.load_preset(folder).cpt
    if not (folder / config.OPTIONAL_FILES["cpt"]).is_file():
        # a run trained before cpt_config.json existed: its preset's chosen settings are not known here
        log.warning("%s has no %s: continual post-training uses the defaults %s unless 05's cpt_* parameters "
                    "say otherwise", paths.relative(folder), config.OPTIONAL_FILES["cpt"], dataclasses.asdict(cfg))
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(changes) - {f.name for f in dataclasses.fields(config.CptConfig)}
    if unknown:
        raise config.ConfigError(f"cpt overrides {sorted(unknown)} are not cpt_config.json keys")
    try:
        return config.CptConfig(**{**dataclasses.asdict(cfg), **changes})
    except config.ConfigError as e:
        raise config.ConfigError(f"cpt parameters: {e}") from None


def stream_seed(cfg: config.CptConfig, run_seed: int) -> int:
    """The seed of a stream: ``cfg.seed``, or the run's seed when it is None."""
    return run_seed if cfg.seed is None else cfg.seed


def answer_settings(cfg: config.CptConfig, seed: int) -> dict:
    """What cpt / cpt_rag answers depend on besides the questions (kept results must match): the training keys and
    the stream's seed (``seed``: the run's, used when ``cfg.seed`` is None)."""
    return {**{k: getattr(cfg, k) for k in TRAINED_KEYS}, "seed": stream_seed(cfg, seed)}


def stream_steps(plan: Stream, cfg: config.CptConfig) -> list[int]:
    """Optimizer steps of each chunk: ``epochs_per_chunk`` passes of ⌈passages / batch_size⌉ batches."""
    return [cfg.epochs_per_chunk * math.ceil(len(c) / cfg.batch_size) for c in plan.chunks]


@dataclass
class PostTrained:
    """The stream's result: a learner holding the persistent weights (answer cpt / cpt_rag with it), the cpt
    method's rows (the knowledge measure after the last chunk), the drift rows and the stream."""
    learner: Learner
    rows: list[dict]
    drift: list[dict]
    stream: Stream


def _trainee(learner: Learner, cfg: config.CptConfig,
             seed: int | None = None) -> tuple[Learner, dict[str, torch.Tensor]]:
    """A learner whose ``model`` + ``phi`` are the weights CPT trains, and those trainable tensors by name."""
    if cfg.weights == "full":
        base = drift.base_parameters(learner.model)
        odd = sorted({str(p.dtype) for _, p in base} - {"torch.float32"})
        if odd:
            raise ValueError(f"cpt weights = 'full' trains every base weight in fp32, but the model's are {odd}: "
                             "use weights 'lora' (or 'phi'), or a model loaded in fp32 (mixed_precision 'no')")
        model = copy.deepcopy(learner.model)
        named = dict(drift.base_parameters(model))
        for p in named.values():
            p.requires_grad_(True)
        return dataclasses.replace(learner, model=model, phi=drift.zero_phi(learner.phi)), named
    if cfg.weights == "lora":
        phi = lora.fresh(learner.model, learner.preset.peft, learner.preset.train.seed if seed is None else seed)
    else:
        phi = {n: p.detach().clone() for n, p in learner.phi.items()}
    phi = {n: t.requires_grad_(True) for n, t in phi.items()}
    return dataclasses.replace(learner, phi=phi), phi


def train_step(trainee: Learner, params: list[torch.Tensor], optimizer: torch.optim.Optimizer,
               batch: regrad.TokenBatch, qa: regrad.TokenBatch | None = None) -> tuple[float, float | None]:
    """One AdamW step on the mean ``L_LM`` of a batch of passages, plus the mean ``L_ans`` of replayed QA examples
    when there are some (forward under the preset's autocast, gradient outside it, clipped at ``MAX_GRAD_NORM``);
    (passage loss, QA loss or None)."""
    optimizer.zero_grad(set_to_none=True)
    with lora.use(trainee.model, trainee.phi), regrad.autocast(trainee.device, trainee.precision):
        loss = regrad.token_losses(trainee.model, batch).mean()
        answer = regrad.token_losses(trainee.model, qa).mean() if qa is not None else None
    value = float(loss.detach())
    replayed = None if answer is None else float(answer.detach())
    if not math.isfinite(value) or (replayed is not None and not math.isfinite(replayed)):
        raise FloatingPointError(f"cpt: non-finite loss {value} (replayed QA: {replayed}): lower the cpt learning rate")
    (loss if answer is None else loss + answer).backward()
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    optimizer.step()
    return value, replayed


def train_chunk(trainee: Learner, params: list[torch.Tensor], optimizer: torch.optim.Optimizer,
                passages: Sequence[Passage], cfg: config.CptConfig, seed: int, chunk: int, *,
                replay: Replay | None = None, first_step: int = 0) -> dict:
    """``epochs_per_chunk`` passes over one chunk (a seeded shuffle per epoch), with the replayed examples of each
    step (``first_step``: the stream's steps before this chunk): the mean losses of the last pass, the steps and the
    replayed examples as [dataset, test_id]."""
    lc = trainee.preset.learner
    last: list[float] = []
    answers: list[float] = []
    replayed: list[list] = []
    steps = 0
    for epoch in range(cfg.epochs_per_chunk):
        order = list(range(len(passages)))
        random.Random(seed * 1_000_003 + chunk * 1_009 + epoch).shuffle(order)
        last = []
        for start in tqdm(range(0, len(order), cfg.batch_size), desc=f"cpt chunk {chunk} epoch {epoch + 1}",
                          unit="batch", leave=False, disable=not distributed.job().main):
            chosen = [passages[i][1:] for i in order[start:start + cfg.batch_size]]
            batch = task_batches.passage_batch(trainee.tokenizer, chosen, lc.bank_context_len, lc.passage_format)
            tasks = replay.at(first_step + steps) if replay is not None else []
            qa = task_batches.qa_batch(trainee.tokenizer, tasks, lc, with_context=replay.with_context,
                                       stage="eval").to(trainee.device) if tasks else None
            loss, answer = train_step(trainee, params, optimizer, batch.to(trainee.device), qa)
            last.append(loss)
            if answer is not None:
                answers.append(answer)
            replayed += [[t.extra.get("dataset"), t.test_id] for t in tasks]
            steps += 1
    return {"loss": sum(last) / len(last) if last else None, "steps": steps, "replayed": replayed,
            "replay_loss": sum(answers) / len(answers) if answers else None}


def _knowledge(prefix: str, rows: Sequence[dict]) -> dict:
    found = drift.scores(rows)
    return {f"{prefix}_{k}": found[k] for k in ("acc", "em", "f1", "nll")}


def measure(trainee: Learner, start: Learner, base: Learner, general: drift.GeneralSet, trained_norm: float,
            blocks: Sequence[Sequence[task_batches.Task]], chunk: int) -> tuple[dict, list[dict]]:
    """The drift row after ``chunk`` chunks (1..) and the knowledge rows (questions of blocks 1..chunk)."""
    so_far = [t for block in blocks[:chunk] for t in block]
    rows = drift.answer(trainee, so_far, SPECS["cpt"], desc=f"cpt knowledge after chunk {chunk}")
    known = drift.scores(rows)
    delta, from_base = drift.delta_norm(trainee, start), drift.delta_norm(trainee, base)
    theta = general.theta_norm
    row = {"chunk": chunk, "questions": known["n"], **_knowledge("knowledge", rows),
           **_knowledge("first_block", rows[:len(blocks[0])]),
           **_knowledge("latest_block", rows[len(so_far) - len(blocks[chunk - 1]):]),
           **drift.general_measures(trainee, general),
           "delta_norm": delta, "delta_rel": delta / theta, "delta_rel_trained": delta / trained_norm,
           "delta_from_base": from_base, "delta_from_base_rel": from_base / theta,
           "delta_from_base_rel_trained": from_base / trained_norm}
    return row, rows


def start_row(general: drift.GeneralSet, point: str, trained_norm: float) -> dict:
    """The row before the first chunk: the stream starts at a measured point of the general set (``base``: a fresh
    LoRA adds exactly nothing, ``full`` starts at the base model; ``meta``: ``phi``), copied, not measured again."""
    measured = general.points[point]
    empty = {f"{p}_{k}": None for p in ("knowledge", "first_block", "latest_block") for k in ("acc", "em", "f1", "nll")}
    from_base = measured["delta_from_base"]
    return {"chunk": 0, "questions": 0, **empty, **{k: v for k, v in measured.items() if k != "delta_from_base"},
            "delta_norm": 0.0, "delta_rel": 0.0, "delta_rel_trained": 0.0, "delta_from_base": from_base,
            "delta_from_base_rel": from_base / general.theta_norm,
            "delta_from_base_rel_trained": from_base / trained_norm,
            "start": point}


def _adds_nothing(phi: dict[str, torch.Tensor]) -> bool:
    return all(not bool(t.detach().any()) for n, t in phi.items() if n.endswith("lora_B"))


# long: a stream's whole resumable run in one place: its settings checked, start or resume, each chunk trained
# (with its replayed examples), measured or not, checkpointed, then the drift file
def post_train(run: str, dataset: str, learner: Learner, items: Sequence[task_batches.Task], *, cfg: config.CptConfig,
               general: drift.GeneralSet, split: str = "dev", topk: int = 3, limit: int | None = None,
               evaluation: str | None = None, overwrite: bool = False, measure_at: str = "every") -> PostTrained:
    """Continual post-training of ``learner``'s persistent weights on ``items``' documents, chunk by chunk, with
    the drift measured after every chunk (``measure_at = "end"``: after the last one only); resumes from
    ``results/<run>/<dataset>/cpt/checkpoint/`` (same settings) and keeps a finished stream. ``learner`` itself is
    never changed."""
    if measure_at not in MEASURES:
        raise ValueError(f"measure_at={measure_at!r}: choose one of {list(MEASURES)}")
    folder = paths.cpt_dir(run, dataset, evaluation)
    where = f"{paths.relative(folder)}"
    plan = stream(items, cfg.chunks, where)
    drift.check_disjoint(general, [p for c in plan.chunks for p in c], learner.preset.learner.passage_format, where)
    seed = stream_seed(cfg, learner.preset.train.seed)
    steps_of = stream_steps(plan, cfg)
    replay = Replay(replay_tasks(run), sum(steps_of), not learner.preset.learner.blind_context) \
        if cfg.objective == "replay" else None
    settings = {"dataset": dataset, "split": split, "topk": topk, "limit": limit,
                "cpt": answer_settings(cfg, learner.preset.train.seed),
                "model": learner.preset.learner.model_name_or_path,
                "meta_hash": learner.meta_hash() if cfg.weights == "phi" else None,
                "learner": dataclasses.asdict(learner.preset.learner),
                "generation": dataclasses.asdict(learner.preset.generation),
                "stream": _digest(plan.describe()), "general": _digest(general.settings), "measure": measure_at,
                "replay": _digest(replay.describe()) if replay is not None else None}
    if overwrite:
        distributed.on_main(shutil.rmtree, folder, ignore_errors=True)
    trainee, named = _trainee(learner, cfg, seed)
    params = list(named.values())
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    base = dataclasses.replace(learner, phi=drift.zero_phi(learner.phi))
    start = base if cfg.weights == "full" else \
        dataclasses.replace(learner, phi={n: t.detach().clone() for n, t in trainee.phi.items()})
    trained_norm = general.theta_norm if cfg.weights == "full" else \
        (general.lora_norm or drift.lora_modules_norm(learner.model))
    state = distributed.on_main(_saved_state, folder, settings)
    if state is None:
        state = {"settings": settings, "chunk": -1, "steps": 0, "drift": [], "rows": [], "replayed": []}
    else:
        _load(folder, named, optimizer, state.pop("optimizer"))
        log.info("%s: resuming after chunk %d of %d", where, state["chunk"], cfg.chunks)
    for chunk in range(state["chunk"] + 1, cfg.chunks + 1):
        if chunk == 0:
            point = "meta" if cfg.weights == "phi" else "base"
            if point == "base" and not _adds_nothing(trainee.phi):      # a LoRA initialised to change the model
                row, rows = measure(trainee, start, base, general, trained_norm, [[]], 0)
            else:
                row, rows = start_row(general, point, trained_norm), []
            row.update(documents=0, train_loss=None, replay_loss=None, steps=0)
        else:
            done = train_chunk(trainee, params, optimizer, plan.chunks[chunk - 1], cfg, seed, chunk, replay=replay,
                               first_step=state["steps"])
            state["steps"] += done["steps"]
            state["replayed"] += done["replayed"]
            info = {"chunk": chunk, "documents": sum(len(c) for c in plan.chunks[:chunk]), "train_loss": done["loss"],
                    "replay_loss": done["replay_loss"], "steps": state["steps"]}
            if measure_at == "every" or chunk == cfg.chunks:
                row, rows = measure(trainee, start, base, general, trained_norm, plan.blocks, chunk)
                row.update(info)
            else:
                row, rows = {**info, "measured": False}, []
        state.update(chunk=chunk, drift=state["drift"] + [row], rows=rows)
        distributed.on_main(_save, folder, named, optimizer, state)
        if "general_text_nll" in row:
            log.info("%s chunk %d: knowledge acc %s, general text NLL %.4f, |Δθ|/|θ| %.3g", where, chunk,
                     row["knowledge_acc"], row["general_text_nll"], row["delta_rel"])
    if not paths.drift_file(run, dataset, evaluation).is_file() or \
            result_files.read_drift(run, dataset, evaluation).get("settings") != settings:
        distributed.on_main(result_files.write_drift, run, dataset, evaluation,
                            {"settings": settings, "stream": plan.describe(), "drift": state["drift"],
                             "theta_norm": general.theta_norm, "trained_norm": trained_norm,
                             "general_points": {k: {m: v for m, v in p.items() if not isinstance(v, list)}
                                                for k, p in general.points.items()},
                             "replayed": state["replayed"]})
    for t in params:
        t.requires_grad_(False)
    return PostTrained(trainee, state["rows"], state["drift"], plan)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


# --- the checkpoint: checksummed save, verified load -----------------------------------------------------------
FIX = ("this continual post-training checkpoint cannot be used: restore it, or train the stream again with "
       "overwrite = True (05_evaluate) or under another evaluation name (evaluation = '...')")
CHECKSUMS = "checksums"      # in stream_state.json: state.safetensors was written with its checksums
_warned: set[str] = set()


def _saved_state(folder: Path, settings: dict) -> dict | None:
    """The checkpoint's state when one exists (after putting back a swap cut short), verified against the checksum
    its tensor file records, else None; other settings are refused."""
    ckpt = folder / CHECKPOINT
    if artifacts.recover_dir(ckpt) is None or not (ckpt / STATE).is_file() or not (ckpt / TENSORS).is_file():
        return None
    state = _verified_state(ckpt, tensorfile.read_metadata(ckpt / TENSORS, fix=FIX))
    if state.get("settings") != settings:
        changed = sorted(k for k in settings if state.get("settings", {}).get(k) != settings[k])
        raise FileExistsError(f"{paths.relative(ckpt)} holds continual post-training with other settings "
                              f"({', '.join(changed)}): pass overwrite=True (05_evaluate: overwrite = True) to train "
                              "it again, or name this evaluation (evaluation='...')")
    return state


def _verified_state(ckpt: Path, metadata: dict[str, str]) -> dict:
    """``stream_state.json`` checked against the checksum and chunk recorded in ``state.safetensors``; a checkpoint
    written before checksums (neither records one) is read unverified, with a warning."""
    where, tensors = paths.relative(ckpt / STATE), paths.relative(ckpt / TENSORS)
    recorded = metadata.get(checkpoint.STATE_SHA256)
    if recorded is not None and recorded != tensorfile.text_digest(ckpt / STATE):
        raise tensorfile.IntegrityError(f"{where} does not match the checksum recorded in {TENSORS}: it was damaged "
                                        f"or edited after the checkpoint was written; {FIX}")
    try:
        state = artifacts.read_json(ckpt / STATE)
    except ValueError as e:
        raise tensorfile.IntegrityError(f"{e}; {FIX}") from None
    if not isinstance(state, dict):
        raise tensorfile.IntegrityError(f"{where} holds {type(state).__name__}, not a stream state; {FIX}")
    if recorded is None or tensorfile.CHECKSUM not in metadata:
        if state.get(CHECKSUMS):
            raise tensorfile.IntegrityError(f"{tensors} records no checksum, though {STATE} says it was written with "
                                            f"one: its header was changed or damaged; {FIX}")
        if str(ckpt) not in _warned:
            _warned.add(str(ckpt))
            log.warning("%s was written before CPT checkpoints carried checksums: used without verifying it",
                        paths.relative(ckpt))
    if "chunk" in metadata and metadata["chunk"] != str(state.get("chunk")):
        raise tensorfile.IntegrityError(f"{where}: chunk {state.get('chunk')!r}, but {TENSORS} was written after "
                                        f"chunk {metadata['chunk']}; {FIX}")
    return state


def _save(folder: Path, named: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``checkpoint/``: the state file first, then the tensors with their checksum and the state file's (one swap)."""
    tensors = {f"w.{n}": t.detach().contiguous().cpu() for n, t in named.items()}
    optim_tensors, optim_json = checkpoint.optimizer_parts(optimizer)
    target = folder / CHECKPOINT
    with artifacts.atomic_dir(target) as tmp:
        artifacts.write_json(tmp / STATE, {**state, "optimizer": optim_json, CHECKSUMS: True})
        tensorfile.save(tmp / TENSORS, {**tensors, **optim_tensors},
                        {"chunk": str(state["chunk"]), checkpoint.STATE_SHA256: tensorfile.text_digest(tmp / STATE)},
                        shown_as=target / TENSORS)


def _load(folder: Path, named: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """The trained weights and AdamW's state from ``checkpoint/`` (its checksum verified, weights finite)."""
    path = folder / CHECKPOINT / TENSORS
    # required=None: whether a checksum must be there was decided with the state file (_verified_state)
    tensors, _ = tensorfile.load(path, required=None, fix=FIX, finite=lambda k: k.startswith("w."))
    odd = [n for n, t in named.items() if f"w.{n}" not in tensors or tensors[f"w.{n}"].shape != t.shape]
    if odd:
        shown = tuple(tensors[f"w.{odd[0]}"].shape) if f"w.{odd[0]}" in tensors else "absent"
        raise ValueError(f"{paths.relative(path)}: weight {odd[0]} is {shown}, the trained weights' "
                         f"{tuple(named[odd[0]].shape)} ({len(odd)} such); {FIX}")
    with torch.no_grad():
        for n, t in named.items():
            t.copy_(tensors[f"w.{n}"])
    optimizer.load_state_dict(checkpoint.optimizer_state(tensors, saved))
