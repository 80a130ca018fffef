"""04_encode: fill the Gradient Bank with the gradient of every retrieved passage (method.md equation 1).

For the top-k passages of each record of an augmented file (``data/augmented/<dataset>/<split>.json``,
records ``start:end``), deduplicated by passage id, compute ``g_d = dL_LM(d; phi)/dphi`` with the run's trained
meta weights, in length-sorted batches: one forward and one backward per batch gives every passage's own
gradient (:func:`regrad.per_passage_gradients`), never a one-passage loop. Passages are formatted and truncated
by :func:`tasks.passage_batch` (the same function training uses, cut at ``bank_context_len``), under the
learner's precision (the same dtype policy as training; no switch to fp16), then encoded on that device in the
bank's storage scheme (:mod:`regrad_lib.bank.schemes`; :func:`encode_schemes` writes several schemes from one gradient
computation). Ids already in a bank are skipped, so an interrupted encode resumes.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from regrad_lib import config
from regrad_lib.bank import on_disk, reader
from regrad_lib.bank.writer import DEFAULT_SHARD_BYTES, MAX_SHARD_BYTES, BankWriter
from regrad_lib.core import lora, regrad, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.data import prompts
from regrad_lib.io import distributed, params, paths, runlock
from regrad_lib.io.run_state import trained_state

__all__ = ["EncodeSettings", "encode", "encode_all", "encode_schemes", "gradient_batches", "gradient_norms", "passages",
           "stats", "verify_all"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Passage:
    pid: str
    title: str
    text: str


def passages(dataset: str, split: str, topk: int = 3, start: int = 0, end: int | None = None,
             mixed: float = 0.0) -> list[Passage]:
    """The distinct top-``topk`` passages of records ``start:end`` of ``data/augmented/<dataset>/<split>.json``;
    with ``mixed`` > 0 also those the mixed-documents ablation puts in their place (:func:`tasks.mix`), so one
    bank serves the plain and the mixed evaluation (and every smaller share)."""
    file = paths.augmented_file(dataset, split)
    chosen = task_batches.load(dataset, split, topk, start, end)
    if not chosen:
        raise ValueError(f"{paths.relative(file)}: start={start}, end={end} selects none")
    numbered = list(enumerate(chosen, start))
    if task_batches.mixed_count(topk, mixed):         # the same records with their mixed passages
        numbered += list(enumerate(task_batches.load(dataset, split, topk, start, end, mixed=mixed), start))
    seen: dict[str, Passage] = {}
    for i, task in numbered:
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
        batch = task_batches.passage_batch(tok, [(p.title, p.text) for p in chunk], max_len, fmt).to(learner.device)
        grads, _ = regrad.per_passage_gradients(learner.model, learner.phi, batch, learner.precision)
        yield [p.pid for p in chunk], lora.flatten(grads)


@params.typed
@runlock.writer("04_encode")
def encode(run: str, dataset: str, split: str, *, topk: int = 3, start: int = 0, end: int | None = None,
           scheme: str = reader.DEFAULT_SCHEME, batch_size: int = 8, device: str = "cpu", overwrite: bool = False,
           learner: Learner | None = None, shard_bytes: int = DEFAULT_SHARD_BYTES,
           allow_unfinished: bool = False, mixed: float = 0.0) -> Path:
    """Encode the passages of one augmented file into ``offline/<topk>/<run>/<dataset>/<split>_all/<scheme>``.

    - ``run``: the trained learner ``outputs/<run>/`` (``Learner.from_run(run, device)``); pass ``learner`` to
      reuse one already loaded (it must be that run's; ``device`` is then ignored).
    - ``topk``, ``start``, ``end``: the top-k passages of records ``start:end`` (``end=None``: to the last).
    - ``scheme``: storage scheme (:mod:`regrad_lib.bank.schemes`): ``fp32``, ``bf16``, ``fp16``, ``int8``, ``int4``,
      ``int2``, optionally with a group size (``int4-g128``); gradients are computed in fp32 LoRA weights under the
      preset's autocast and encoded on the device either way.
    - ``batch_size``: passages per forward/backward.
    - ``overwrite``: rebuild the bank from scratch; otherwise ids already there are skipped (resume), and a bank
      made with other meta weights, layout, model or scheme is refused.
    - ``shard_bytes``: the size of one shard file (at most 2 GB).
    - ``allow_unfinished``: use a run whose training did not finish (refused otherwise); the manifest's
      ``source`` records ``run_finished``.
    - ``mixed``: also encode the passages the mixed-documents ablation (05_evaluate's ``mixed``/``mixed_sweep`` up
      to this share) puts in each question's top-k (:func:`passages`); the bank, keyed by passage id, holds both.

    In a job of several processes (:mod:`regrad_lib.io.distributed`) each process encodes its own turns of the
    passages into a part of the bank, merged once every process has finished (:func:`encode_parts`).
    """
    name = reader.storage_scheme(scheme).name
    return encode_schemes(run, dataset, split, [name], topk=topk, start=start, end=end, batch_size=batch_size,
                          device=device, overwrite=overwrite, learner=learner, shard_bytes=shard_bytes,
                          allow_unfinished=allow_unfinished, mixed=mixed)[name]


@params.typed
@runlock.writer("04_encode")
def encode_schemes(run: str, dataset: str, split: str, schemes: Sequence[str], *, topk: int = 3, start: int = 0,
                   end: int | None = None, batch_size: int = 8, device: str = "cpu", overwrite: bool = False,
                   learner: Learner | None = None, shard_bytes: int = DEFAULT_SHARD_BYTES,
                   allow_unfinished: bool = False, mixed: float = 0.0) -> dict[str, Path]:
    """:func:`encode` into one bank per scheme from ONE gradient computation: ``{scheme: bank folder}``.

    Each bank resumes on its own: a passage is computed when any of the banks lacks it, and appended only to
    those that lack it.
    """
    names = list(dict.fromkeys(reader.storage_scheme(s).name for s in schemes))
    if not names:
        raise ValueError("schemes is empty: name at least one, e.g. ['int4']")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    items = passages(dataset, split, topk, start, end, mixed)
    learner = learner or Learner.from_run(run, device, allow_unfinished)
    learner.require_finished(allow_unfinished)
    source = {"run": run, "run_finished": learner.run_finished, "dataset": dataset, "split": split, "topk": topk,
              "start": start, "end": end, "mixed": mixed, "batch_size": batch_size, "device": str(learner.device),
              "precision": learner.precision, "bank_context_len": learner.preset.learner.bank_context_len,
              "passage_format": learner.preset.learner.passage_format}
    targets = {n: paths.bank_dir(topk, run, dataset, split, n) for n in names}
    heads = {n: reader.header_for(learner, n, **source) for n in names}
    if distributed.job().size > 1 or any(paths.bank_parts_dir(t).is_dir() for t in targets.values()):
        return encode_parts(learner, items, targets, heads, batch_size=batch_size, overwrite=overwrite,
                            shard_bytes=shard_bytes)
    with contextlib.ExitStack() as stack:
        writers = {n: stack.enter_context(BankWriter.open(targets[n], heads[n], overwrite=overwrite,
                                                               shard_bytes=shard_bytes,
                                                               config=learner.preset.to_dict())) for n in names}
        done = {n: w.ids() for n, w in writers.items()}
        todo = [p for p in items if any(p.pid not in d for d in done.values())]
        log.info("%s/%s: %d distinct passages, %d to encode into %s", dataset, split, len(items), len(todo), names)
        with tqdm(total=len(todo), desc=f"encode {dataset}/{split}", unit="passage") as bar:
            for ids, vectors in gradient_batches(learner, todo, batch_size):
                _append(writers, done, ids, vectors)
                bar.update(len(ids))
    return targets


def _append(writers: dict[str, BankWriter], done: dict[str, set[str]], ids: list[str],
            vectors: torch.Tensor) -> None:
    """Each scheme's writer gets the rows it lacks (encoded on the device, shards written behind)."""
    for n, writer in writers.items():
        keep = [i for i, p in enumerate(ids) if p not in done[n]]
        if len(keep) == len(ids):
            writer.append(ids, vectors)
        elif keep:
            writer.append([ids[i] for i in keep], vectors[keep])


# --- several processes -----------------------------------------------------------------------------------

def encode_parts(learner: Learner, items: Sequence[Passage], targets: dict[str, Path], heads: dict[str, dict], *,
                 batch_size: int, overwrite: bool, shard_bytes: int) -> dict[str, Path]:
    """:func:`encode_schemes` by every process of a job: each encodes its turns of the passages not yet stored (in
    any of the schemes' banks) into a part of its own per scheme (``<bank>/.parts/<attempt>-r<rank>/``, itself a
    bank); after all have finished rank 0 lists every part's shards in each bank's manifest
    (:meth:`bank_writer.BankWriter.adopt`) and removes the parts.

    Until that merge a bank's manifest holds none of the new passages (a new bank has no manifest at all), so
    a job that dies never leaves a bank that opens or verifies as complete; its parts count as done for the next
    encode, with any number of processes (one process also finishes through parts when some are left).
    """
    job, config = distributed.job(), learner.preset.to_dict()
    prepared = {n: distributed.on_main(_prepare_parts, targets[n], heads[n], overwrite) for n in targets}
    done = {n: d for n, (_, d) in prepared.items()}
    todo = [p for p in items if any(p.pid not in d for d in done.values())]
    mine = [todo[i] for i in distributed.turns(len(todo))]
    log.info("%s: %d distinct passages, %d to encode into %s by %d process(es), %d by this one",
             paths.relative(next(iter(targets.values())).parent), len(items), len(todo), list(targets), job.size,
             len(mine))
    wanted = [n for n in targets if any(p.pid not in done[n] for p in mine)]   # a part gets at least one row
    if wanted:
        with contextlib.ExitStack() as stack:
            writers = {n: stack.enter_context(BankWriter.open(
                paths.bank_parts_dir(targets[n]) / f"{prepared[n][0]}-r{job.rank}", heads[n], shard_bytes=shard_bytes,
                config=config)) for n in wanted}
            bar = stack.enter_context(tqdm(total=len(mine), desc=f"encode {next(iter(targets.values())).parent.name}",
                                           unit="passage", disable=not job.main))
            for ids, vectors in gradient_batches(learner, mine, batch_size):
                _append(writers, done, ids, vectors)
                bar.update(len(ids))
    distributed.barrier()      # every part is complete (a process that failed has stopped the job instead)
    for n in targets:
        distributed.on_main(_merge_parts, targets[n], heads[n], shard_bytes, config)
    return targets


def _prepare_parts(target: Path, head: dict, overwrite: bool) -> tuple[str, set[str]]:
    """(this job's attempt name, the ids already stored in the bank or in parts of earlier jobs)."""
    parts = paths.bank_parts_dir(target)
    if overwrite:
        shutil.rmtree(parts, ignore_errors=True)
        BankWriter.open(target, head, overwrite=True).abandon()    # manifest and shards removed, nothing written
    done: set[str] = set()
    earlier = sorted(p for p in parts.iterdir() if p.is_dir()) if parts.is_dir() else []
    for folder in [target] + earlier:
        if not (folder / on_disk.MANIFEST).exists():
            continue               # no bank yet, or a process that died before its first shard
        with reader.GradientBank.open(folder) as stored:
            diff = {k: (stored.manifest[k], head[k]) for k in on_disk.IDENTITY if stored.manifest[k] != head[k]}
            if diff:
                shown = "; ".join(f"{k}: {a!r} != now {b!r}" for k, (a, b) in diff.items())
                raise on_disk.BankMismatchError(f"{paths.relative(folder)} was encoded with other settings ({shown}): "
                                              "pass overwrite=True (04_encode: overwrite = True) to rebuild the bank")
            done.update(stored.ids())
    numbers = [int(m.group(1)) for p in earlier if (m := re.fullmatch(r"a(\d+)-r\d+", p.name))]
    return f"a{max(numbers, default=0) + 1:03d}", done


def _merge_parts(target: Path, head: dict, shard_bytes: int, config: dict) -> None:
    parts = paths.bank_parts_dir(target)
    with BankWriter.open(target, head, shard_bytes=shard_bytes, config=config) as writer:
        for part in sorted(parts.iterdir()) if parts.is_dir() else []:
            if (part / on_disk.MANIFEST).exists():
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
    scheme: str = reader.DEFAULT_SCHEME
    frontier_schemes: list[str] = field(default_factory=list)   # written from the same gradients, for 05/06
    batch_size: int = 8
    device: str = "cpu"
    overwrite: bool = False
    preset: str | None = None          # informational: the run's saved configs are authoritative
    shard_bytes: int = DEFAULT_SHARD_BYTES
    allow_unfinished: bool = False     # True: encode with a run whose training did not finish
    mixed: float = 0.0                 # also bank the passages of the mixed-documents ablation up to this share
    missing: list[str] = field(default_factory=list, init=False)
    _loaded: Learner | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        params.check_fields(self)
        if isinstance(self.datasets, str):
            self.datasets = [self.datasets]
        if not self.datasets:
            raise ValueError("datasets is empty: name at least one, e.g. ['popqa']")
        self.scheme = reader.storage_scheme(self.scheme).name
        if isinstance(self.frontier_schemes, str):
            self.frontier_schemes = [self.frontier_schemes]
        self.frontier_schemes = [reader.storage_scheme(s).name for s in self.frontier_schemes]
        for name in ("topk", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        task_batches.mixed_count(self.topk, self.mixed)           # a share in [0, 1]
        if self.start < 0 or (self.limit is not None and self.limit < 1):
            raise ValueError(f"start={self.start} must be >= 0 and limit={self.limit} None or >= 1")
        if not 0 < self.shard_bytes <= MAX_SHARD_BYTES:
            raise ValueError(f"shard_bytes={self.shard_bytes} must be in (0, {MAX_SHARD_BYTES}] "
                             "(shards of at most ~2 GB)")
        trained_state(self.run, self.allow_unfinished)    # every step needs the (finished) run
        for dataset in self.datasets:
            task_batches.augmented_path(dataset, self.split)

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

    @property
    def schemes(self) -> list[str]:
        """The main scheme first, then the frontier schemes (each once)."""
        return list(dict.fromkeys([self.scheme, *self.frontier_schemes]))


def encode_all(settings: EncodeSettings, learner: Learner | None = None) -> dict[str, dict[str, Path]]:
    """:func:`encode_schemes` for each dataset with one loaded learner: ``{dataset: {scheme: bank folder}}``."""
    learner = learner or settings.learner()
    return {d: encode_schemes(settings.run, d, settings.split, settings.schemes, topk=settings.topk,
                              start=settings.start, end=settings.end, batch_size=settings.batch_size,
                              overwrite=settings.overwrite, learner=learner, shard_bytes=settings.shard_bytes,
                              allow_unfinished=settings.allow_unfinished, mixed=settings.mixed)
            for d in settings.datasets}


def _each(banks: dict[str, dict[str, Path]]):
    for dataset, by_scheme in banks.items():
        for scheme, path in by_scheme.items():
            yield dataset, scheme, path


def stats(banks: dict[str, dict[str, Path]]) -> list[dict]:
    """One row per bank: entries, shards, scheme, bytes on disk, bytes per passage."""
    rows = []
    for dataset, scheme, path in _each(banks):
        with reader.GradientBank.open(path, scheme=scheme) as b:
            rows.append({"dataset": dataset, "scheme": scheme, "bank": paths.relative(path), "entries": len(b),
                         "shards": len(b.manifest["shards"]), "bytes_on_disk": b.bytes_on_disk(),
                         "bytes_per_passage": b.bytes_per_passage})
    return rows


def gradient_norms(banks: dict[str, dict[str, Path]]) -> list[float]:
    """The L2 norm of every stored gradient, one value per passage, from each dataset's first (main) bank."""
    out: list[float] = []
    for by_scheme in banks.values():
        with reader.GradientBank.open(next(iter(by_scheme.values()))) as b:
            out.extend(b.norms().values())
    return out


def verify_all(banks: dict[str, dict[str, Path]], learner: Learner | None = None) -> dict[str, dict]:
    """``GradientBank.verify()`` of each bank (checked against ``learner``'s weights when given):
    ``{"<dataset>/<scheme>": report}``."""
    out = {}
    for dataset, scheme, path in _each(banks):
        with reader.GradientBank.open(path, learner=learner, scheme=scheme) as b:
            out[f"{dataset}/{scheme}"] = b.verify()
    return out
