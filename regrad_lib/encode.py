"""04_encode: fill the Gradient Bank with the gradient of every retrieved passage (method.md equation 1).

For the top-k passages of each record of an augmented file (``data/augmented/<dataset>/<split>.json``,
records ``start:end``), deduplicated by passage id, compute ``g_d = dL_LM(d; phi)/dphi`` with the run's trained
meta weights, in length-sorted batches: one forward and one backward per batch gives every passage's own
gradient (:func:`regrad.per_passage_gradients`), never a one-passage loop. Passages are formatted and truncated
by :func:`tasks.passage_batch` (the same function training uses, cut at ``bank_context_len``), under the
learner's precision (the same dtype policy as training; no switch to fp16). Ids already in the bank are skipped,
so an interrupted encode resumes.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from . import bank, config, distributed, lora, paths, prompts, regrad, tasks
from .learner import Learner, trained_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Passage:
    pid: str
    title: str
    text: str


def passages(dataset: str, split: str, topk: int = 3, start: int = 0, end: int | None = None) -> list[Passage]:
    """The distinct top-``topk`` passages of records ``start:end`` of ``data/augmented/<dataset>/<split>.json``."""
    file = paths.augmented_file(dataset, split)
    chosen = tasks.load(dataset, split, topk, start, end)
    if not chosen:
        raise ValueError(f"{paths.relative(file)}: start={start}, end={end} selects none")
    seen: dict[str, Passage] = {}
    for i, task in enumerate(chosen, start):
        for pid, (title, text) in zip(task.passage_ids, task.passages):
            passage = Passage(pid, title or "", text)
            if pid in seen and seen[pid] != passage:
                raise ValueError(f"{paths.relative(file)} record {i}: passage id {pid!r} has another title or text "
                                 "than in an earlier record; passage ids must name one passage (re-run 02_augment)")
            seen[pid] = passage
    return list(seen.values())


def gradient_batches(learner: Learner, items: Sequence[Passage], batch_size: int,
                     max_len: int | None = None) -> Iterator[tuple[list[str], torch.Tensor]]:
    """(ids, ``[n, D]`` fp32 flat gradients) per length-sorted batch, longest first; one forward/backward each."""
    tok = learner.tokenizer
    max_len = max_len or learner.preset.learner.bank_context_len
    fmt, start = learner.preset.learner.passage_format, prompts.document_start(tok)
    lengths = [len(prompts.passage_example(tok, p.title, p.text, max_len, fmt, start).input_ids) for p in items]
    for p, n in zip(items, lengths):
        if n < 2:
            raise ValueError(f"passage {p.pid!r} has {n} token(s): no next-token loss can be taken; drop it from "
                             "the corpus or re-run 02_augment")
    order = sorted(range(len(items)), key=lambda i: -lengths[i])
    for b in range(0, len(order), batch_size):
        chunk = [items[i] for i in order[b:b + batch_size]]
        batch = tasks.passage_batch(tok, [(p.title, p.text) for p in chunk], max_len, fmt).to(learner.device)
        grads, _ = regrad.per_passage_gradients(learner.model, learner.phi, batch, learner.precision)
        yield [p.pid for p in chunk], lora.flatten(grads)


def encode(run: str, dataset: str, split: str, *, topk: int = 3, start: int = 0, end: int | None = None,
           dtype: str = "bf16", batch_size: int = 8, device: str = "cpu", overwrite: bool = False,
           learner: Learner | None = None, shard_bytes: int = bank.DEFAULT_SHARD_BYTES,
           allow_unfinished: bool = False) -> Path:
    """Encode the passages of one augmented file into ``offline/<topk>/<run>/<dataset>/<split>_all``; its path.

    - ``run``: the trained learner ``outputs/<run>/`` (``Learner.from_run(run, device)``); pass ``learner`` to
      reuse one already loaded (it must be that run's; ``device`` is then ignored).
    - ``topk``, ``start``, ``end``: the top-k passages of records ``start:end`` (``end=None``: to the last).
    - ``dtype``: storage dtype, ``"bf16"`` (default), ``"fp16"`` or ``"fp32"``; gradients are computed in fp32
      LoRA weights under the preset's autocast either way.
    - ``batch_size``: passages per forward/backward.
    - ``overwrite``: rebuild the bank from scratch; otherwise ids already there are skipped (resume), and a bank
      made with other meta weights, layout, model or dtype is refused.
    - ``shard_bytes``: the size of one shard file (at most 2 GB).
    - ``allow_unfinished``: use a run whose training did not finish (refused otherwise); the manifest's
      ``source`` records ``run_finished``.

    In a job of several processes (:mod:`regrad_lib.distributed`) each process encodes its own turns of the
    passages into a part of the bank, merged once every process has finished (:func:`encode_parts`).
    """
    bank.storage_dtype(dtype)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    items = passages(dataset, split, topk, start, end)
    learner = learner or Learner.from_run(run, device, allow_unfinished)
    learner.require_finished(allow_unfinished)
    source = {"run": run, "run_finished": learner.run_finished, "dataset": dataset, "split": split, "topk": topk,
              "start": start, "end": end, "batch_size": batch_size, "device": str(learner.device),
              "precision": learner.precision, "bank_context_len": learner.preset.learner.bank_context_len,
              "passage_format": learner.preset.learner.passage_format}
    target = paths.bank_dir(topk, run, dataset, split)
    head = bank.header_for(learner, dtype, **source)
    if distributed.job().size > 1 or paths.bank_parts_dir(target).is_dir():
        return encode_parts(learner, items, target, head, batch_size=batch_size, overwrite=overwrite,
                            shard_bytes=shard_bytes)
    with bank.BankWriter.open(target, head, overwrite=overwrite, shard_bytes=shard_bytes,
                              config=learner.preset.to_dict()) as writer:
        done = writer.ids()
        todo = [p for p in items if p.pid not in done]
        log.info("%s/%s: %d distinct passages, %d in the bank, %d to encode", dataset, split, len(items),
                 len(items) - len(todo), len(todo))
        with tqdm(total=len(todo), desc=f"encode {dataset}/{split}", unit="passage") as bar:
            for ids, vectors in gradient_batches(learner, todo, batch_size):
                writer.append(ids, vectors)   # cast to the storage dtype on the device, shards written behind
                bar.update(len(ids))
    return target


# --- several processes -----------------------------------------------------------------------------------

def encode_parts(learner: Learner, items: Sequence[Passage], target: Path, head: dict, *, batch_size: int,
                 overwrite: bool, shard_bytes: int) -> Path:
    """:func:`encode` by every process of a job: each encodes its turns of the passages not yet stored into a part
    of its own (``<bank>/.parts/<attempt>-r<rank>/``, itself a bank); after all have finished rank 0 lists every
    part's shards in the bank's manifest (:meth:`bank.BankWriter.adopt`) and removes the parts.

    Until that merge the bank's manifest holds none of the new passages (a new bank has no manifest at all), so
    a job that dies never leaves a bank that opens or verifies as complete; its parts count as done for the next
    encode, with any number of processes (one process also finishes through parts when some are left).
    """
    job, config = distributed.job(), learner.preset.to_dict()
    attempt, done = distributed.on_main(_prepare_parts, target, head, overwrite)
    todo = [p for p in items if p.pid not in done]
    mine = [todo[i] for i in distributed.turns(len(todo))]
    log.info("%s: %d distinct passages, %d stored, %d to encode by %d process(es), %d by this one",
             paths.relative(target), len(items), len(items) - len(todo), len(todo), job.size, len(mine))
    if mine:
        part = paths.bank_parts_dir(target) / f"{attempt}-r{job.rank}"
        with bank.BankWriter.open(part, head, shard_bytes=shard_bytes, config=config) as writer, \
                tqdm(total=len(mine), desc=f"encode {target.parent.name}", unit="passage", disable=not job.main) as bar:
            for ids, vectors in gradient_batches(learner, mine, batch_size):
                writer.append(ids, vectors)
                bar.update(len(ids))
    distributed.barrier()      # every part is complete (a process that failed has stopped the job instead)
    distributed.on_main(_merge_parts, target, head, shard_bytes, config)
    return target


def _prepare_parts(target: Path, head: dict, overwrite: bool) -> tuple[str, set[str]]:
    """(this job's attempt name, the ids already stored in the bank or in parts of earlier jobs)."""
    parts = paths.bank_parts_dir(target)
    if overwrite:
        shutil.rmtree(parts, ignore_errors=True)
        bank.BankWriter.open(target, head, overwrite=True).abandon()    # manifest and shards removed, nothing written
    done: set[str] = set()
    earlier = sorted(p for p in parts.iterdir() if p.is_dir()) if parts.is_dir() else []
    for folder in [target] + earlier:
        if not (folder / bank.MANIFEST).exists():
            continue               # no bank yet, or a process that died before its first shard
        with bank.GradientBank.open(folder) as stored:
            diff = {k: (stored.manifest[k], head[k]) for k in bank.IDENTITY if stored.manifest[k] != head[k]}
            if diff:
                shown = "; ".join(f"{k}: {a!r} != now {b!r}" for k, (a, b) in diff.items())
                raise bank.BankMismatchError(f"{paths.relative(folder)} was encoded with other settings ({shown}): "
                                             "pass overwrite=True (04_encode: overwrite = True) to rebuild the bank")
            done.update(stored.ids())
    numbers = [int(m.group(1)) for p in earlier if (m := re.fullmatch(r"a(\d+)-r\d+", p.name))]
    return f"a{max(numbers, default=0) + 1:03d}", done


def _merge_parts(target: Path, head: dict, shard_bytes: int, config: dict) -> None:
    parts = paths.bank_parts_dir(target)
    with bank.BankWriter.open(target, head, shard_bytes=shard_bytes, config=config) as writer:
        for part in sorted(parts.iterdir()) if parts.is_dir() else []:
            if (part / bank.MANIFEST).exists():
                writer.adopt(part)
    shutil.rmtree(parts, ignore_errors=True)     # last: until here a rerun merges again (adopt skips what it has)


# --- the notebook's helpers -------------------------------------------------------------------------------

@dataclass
class EncodeSettings:
    """04_encode's parameters, validated before anything is computed."""
    run: str
    datasets: list[str]
    split: str = "dev"
    topk: int = 3
    start: int = 0
    limit: int | None = None
    dtype: str = "bf16"
    batch_size: int = 8
    device: str = "cpu"
    overwrite: bool = False
    preset: str | None = None          # informational: the run's saved configs are authoritative
    shard_bytes: int = bank.DEFAULT_SHARD_BYTES
    allow_unfinished: bool = False     # True: encode with a run whose training did not finish
    missing: list[str] = field(default_factory=list, init=False)
    _loaded: Learner | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.datasets, str):
            self.datasets = [self.datasets]
        if not self.datasets:
            raise ValueError("datasets is empty: name at least one, e.g. ['popqa']")
        bank.storage_dtype(self.dtype)
        for name in ("topk", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.start < 0 or (self.limit is not None and self.limit < 1):
            raise ValueError(f"start={self.start} must be >= 0 and limit={self.limit} None or >= 1")
        if not 0 < self.shard_bytes <= bank.MAX_SHARD_BYTES:
            raise ValueError(f"shard_bytes={self.shard_bytes} must be in (0, {bank.MAX_SHARD_BYTES}] "
                             "(shards of at most ~2 GB)")
        trained_state(self.run, self.allow_unfinished)    # every step needs the (finished) run
        for dataset in self.datasets:
            tasks.augmented_path(dataset, self.split)

    @property
    def end(self) -> int | None:
        return None if self.limit is None else self.start + self.limit

    def learner(self) -> Learner:
        """The run's trained learner (loaded once); warns when ``preset`` names another model than the run's."""
        if self._loaded is not None:
            return self._loaded
        learner = self._loaded = Learner.from_run(self.run, self.device, self.allow_unfinished)
        if self.preset and self.preset in config.available_presets():
            wanted = config.load_preset(self.preset).learner.model_name_or_path
            if wanted != learner.preset.learner.model_name_or_path:
                log.warning("preset %r uses model %r but run %r was trained with %r; the run's configs are used",
                            self.preset, wanted, self.run, learner.preset.learner.model_name_or_path)
        return learner


def encode_all(settings: EncodeSettings, learner: Learner | None = None) -> dict[str, Path]:
    """:func:`encode` for each dataset of ``settings`` with one loaded learner: ``{dataset: bank folder}``."""
    learner = learner or settings.learner()
    return {d: encode(settings.run, d, settings.split, topk=settings.topk, start=settings.start, end=settings.end,
                      dtype=settings.dtype, batch_size=settings.batch_size, overwrite=settings.overwrite,
                      learner=learner, shard_bytes=settings.shard_bytes, allow_unfinished=settings.allow_unfinished)
            for d in settings.datasets}


def stats(banks: dict[str, Path]) -> list[dict]:
    """One row per bank: entries, shards, storage dtype, bytes on disk, bytes per passage."""
    rows = []
    for dataset, path in banks.items():
        with bank.GradientBank.open(path) as b:
            rows.append({"dataset": dataset, "bank": paths.relative(path), "entries": len(b),
                         "shards": len(b.manifest["shards"]), "dtype": b.manifest["dtype"],
                         "bytes_on_disk": b.bytes_on_disk(), "bytes_per_passage": b.bytes_per_passage})
    return rows


def gradient_norms(banks: dict[str, Path]) -> list[float]:
    """The L2 norm of every stored gradient of these banks (one value per passage)."""
    out: list[float] = []
    for path in banks.values():
        with bank.GradientBank.open(path) as b:
            out.extend(b.norms().values())
    return out


def verify_all(banks: dict[str, Path], learner: Learner | None = None) -> dict[str, dict]:
    """``GradientBank.verify()`` of each bank (checked against ``learner``'s weights when given)."""
    out = {}
    for dataset, path in banks.items():
        with bank.GradientBank.open(path, learner=learner) as b:
            out[dataset] = b.verify()
    return out
