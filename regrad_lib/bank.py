"""The Gradient Bank: every passage's LoRA gradient ``g_d`` (method.md equation 1), looked up by passage id.

The only module that reads or writes gradient files. A bank is a folder (``paths.bank_dir``,
``offline/<topk>/<run>/<dataset>/<split>_all/``) holding

- ``shard-00000.safetensors`` …: one 2-D tensor ``gradients`` of ``[rows, D]`` each (at most ~2 GB), in the
  storage dtype (bf16 by default; fp16, fp32), ``D = lora.numel(phi)``, each row a flat vector in the layout
  order of :func:`lora.flatten`;
- ``manifest.json``: model, preset, LoRA layout and ``layout_hash``, ``meta_hash`` of the meta weights the
  gradients were computed with, storage dtype, passage count, the shard map (each shard's file, size, sha256
  and the passage ids of its rows, in row order) and provenance.

Writes are atomic: a shard is written to a temporary file and renamed, then the manifest is rewritten
atomically, so an interrupted encode never leaves a manifest pointing at a missing or partial shard. Reads are
memory-mapped (``safe_open`` + ``get_slice``): a lookup reads only the rows it needs, never the whole bank.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import artifacts, lora, paths

log = logging.getLogger(__name__)

FORMAT, VERSION = "regrad-gradient-bank", 1
MANIFEST = "manifest.json"
TENSOR = "gradients"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MAX_SHARD_BYTES = 2 * 1024 ** 3
DEFAULT_SHARD_BYTES = 1024 ** 3
IDENTITY = ("model", "layout_hash", "meta_hash", "dtype", "numel")   # what a resumed encode must agree on
Weights = dict[str, torch.Tensor]


class BankError(ValueError):
    """A bank folder is missing, truncated, corrupted or of another model; the message names the file and fix."""


class BankMismatchError(BankError):
    """The bank was encoded with another model, LoRA layout or meta weights than the one asked for."""


def storage_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"bank dtype {name!r} is not supported; choose one of {list(DTYPES)} (bf16 is the default)")
    return DTYPES[name]


def _where(path: Path) -> str:
    """``run=…, dataset=…, split=…`` recovered from a bank path, for error messages."""
    parts = path.parts
    if len(parts) >= 4 and parts[-1].endswith("_all"):
        return (f"run={parts[-3]!r}, dataset={parts[-2]!r}, split={parts[-1][:-4]!r}, topk={parts[-4]}")
    return f"bank {paths.relative(path)}"


def header(*, model: str, model_id: str, model_revision: str | None, preset: str, phi: Weights, meta_hash: str,
           dtype: str, source: dict | None = None) -> dict:
    """The identity part of a manifest: which model, LoRA layout and meta weights, stored how."""
    storage_dtype(dtype)
    return {"format": FORMAT, "version": VERSION, "model": model, "model_id": model_id,
            "model_revision": model_revision, "preset": preset,
            "layout": [[name, list(shape)] for name, shape in lora.layout(phi)],
            "layout_hash": lora.layout_hash(phi), "meta_hash": meta_hash, "numel": lora.numel(phi),
            "dtype": dtype, "source": source or {}}


def header_for(learner, dtype: str = "bf16", **source) -> dict:
    """:func:`header` for a :class:`regrad_lib.learner.Learner` (``source``: run, dataset, split, topk …)."""
    from . import modeling
    model = learner.model
    return header(model=learner.preset.learner.model_name_or_path, model_id=modeling.model_id(model),
                  model_revision=getattr(model.config, "_commit_hash", None), preset=learner.preset.name,
                  phi=learner.phi, meta_hash=learner.meta_hash(), dtype=dtype, source=source)


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


# --- reading --------------------------------------------------------------------------------------------

class GradientBank:
    """A memory-mapped, read-only Gradient Bank. Use :meth:`open`."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.layout = [(name, tuple(shape)) for name, shape in manifest["layout"]]
        self.dtype = storage_dtype(manifest["dtype"])
        self._where: dict[str, tuple[int, int]] = {}
        for s, shard in enumerate(manifest["shards"]):
            for row, pid in enumerate(shard["ids"]):
                self._where[pid] = (s, row)
        self._handles: dict[int, object] = {}

    @classmethod
    def open(cls, path: str | os.PathLike, *, layout_hash: str | None = None, meta_hash: str | None = None,
             model: str | None = None, learner=None) -> "GradientBank":
        """Open a bank; refuse it when its layout, meta weights or model differ from those asked for (or the learner's).

        Checks that every shard listed in the manifest exists with its recorded size (a truncated shard is refused).
        """
        path = paths.resolve(path)
        manifest_file = path / MANIFEST
        if not manifest_file.exists():
            raise FileNotFoundError(f"no Gradient Bank at {paths.relative(path)} ({MANIFEST} missing): it is written "
                                    f"by 04_encode ({_where(path)})")
        manifest = artifacts.read_json(manifest_file)
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise BankError(f"{paths.relative(manifest_file)}: not a version-{VERSION} {FORMAT} manifest "
                            f"(format={manifest.get('format')!r}, version={manifest.get('version')!r}); "
                            "re-run 04_encode with overwrite=True")
        if learner is not None:
            layout_hash = layout_hash or learner.layout_hash()
            meta_hash = meta_hash or learner.meta_hash()
            model = model or learner.preset.learner.model_name_or_path
        wanted = {"model": model, "layout_hash": layout_hash, "meta_hash": meta_hash}
        bad = {k: v for k, v in wanted.items() if v is not None and manifest[k] != v}
        if bad:
            shown = "; ".join(f"{k}: bank {manifest[k]!r} != requested {v!r}" for k, v in bad.items())
            raise BankMismatchError(
                f"Gradient Bank {paths.relative(path)} was encoded with other weights ({shown}). The run's meta "
                f"weights or LoRA layout changed since the bank was built: re-run 04_encode for {_where(path)} with "
                "overwrite=True")
        bank = cls(path, manifest)
        bank._check_sizes()
        return bank

    # --- facts ------------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Passage ids, in storage order."""
        return list(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, pid: object) -> bool:
        return pid in self._where

    @property
    def numel(self) -> int:
        return int(self.manifest["numel"])

    @property
    def bytes_per_passage(self) -> int:
        """Bytes of one stored gradient (``numel`` × the storage dtype's size)."""
        return self.numel * self.dtype.itemsize

    def bytes_on_disk(self) -> int:
        files = [self.path / s["file"] for s in self.manifest["shards"]] + [self.path / MANIFEST]
        return sum(f.stat().st_size for f in files)

    def _shard_file(self, s: int) -> Path:
        return self.path / self.manifest["shards"][s]["file"]

    def _check_sizes(self) -> None:
        for s, shard in enumerate(self.manifest["shards"]):
            file = self._shard_file(s)
            if not file.exists():
                raise BankError(f"shard {paths.relative(file)} listed in the manifest is missing: re-run 04_encode "
                                f"for {_where(self.path)} with overwrite=True")
            size = file.stat().st_size
            if size != shard["bytes"]:
                raise BankError(f"shard {paths.relative(file)} is {size} bytes but the manifest says {shard['bytes']} "
                                f"(truncated or replaced): re-run 04_encode for {_where(self.path)} with overwrite=True")

    # --- reads ------------------------------------------------------------------------------------------
    def _slice(self, s: int):
        if s not in self._handles:
            file = self._shard_file(s)
            try:
                handle = safe_open(str(file), framework="pt")
                tensor = handle.get_slice(TENSOR)
            except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # a damaged header
                raise BankError(f"shard {paths.relative(file)} cannot be read ({type(e).__name__}: {e}); it is "
                                f"corrupted: re-run 04_encode for {_where(self.path)} with overwrite=True") from e
            rows = self.manifest["shards"][s]["rows"]
            if list(tensor.get_shape()) != [rows, self.numel]:
                raise BankError(f"shard {paths.relative(file)} holds a tensor of shape {tensor.get_shape()}, the "
                                f"manifest says [{rows}, {self.numel}]: re-run 04_encode with overwrite=True")
            self._handles[s] = (handle, tensor)
        return self._handles[s][1]

    def _locate(self, pid: str) -> tuple[int, int]:
        try:
            return self._where[pid]
        except KeyError:
            raise KeyError(f"passage id {pid!r} is not in the Gradient Bank {paths.relative(self.path)} "
                           f"({len(self)} entries): run 04_encode for {_where(self.path)} over the questions that "
                           "retrieve it") from None

    def rows(self, pids: Sequence[str]) -> torch.Tensor:
        """The stored vectors of ``pids`` as ``[len(pids), D]`` in the storage dtype; reads only those rows."""
        where = [self._locate(str(p)) for p in pids]
        out = torch.empty((len(where), self.numel), dtype=self.dtype)
        order = sorted(range(len(where)), key=lambda i: where[i])
        i = 0
        while i < len(order):  # read runs of consecutive rows of one shard with one slice
            s, start = where[order[i]]
            j = i + 1
            while j < len(order) and where[order[j]][0] == s and where[order[j]][1] <= where[order[j - 1]][1] + 1:
                j += 1
            stop = where[order[j - 1]][1] + 1
            block = self._slice(s)[start:stop]
            for k in order[i:j]:
                out[k] = block[where[k][1] - start]
            i = j
        return out

    def get(self, pid: str) -> Weights:
        """One passage's gradient as the LoRA dict (fp32, CPU)."""
        return lora.unflatten(self.rows([pid])[0].float(), self.layout)

    def sum(self, pids: Sequence[str], device: str | torch.device = "cpu") -> Weights:
        """``Σ_{d in pids} g_d`` (equation 2's sum) as the LoRA dict, fp32 on ``device``; reads only those rows."""
        if not pids:
            raise ValueError("bank.sum needs at least one passage id")
        return {n: g[0] for n, g in self.sum_many([pids], device).items()}

    def sum_many(self, groups: Sequence[Sequence[str]], device: str | torch.device = "cpu") -> Weights:
        """One summed gradient per group (question): ``{name: [len(groups), *shape]}``, fp32 on ``device``.

        Each distinct passage is read once; entries are added in the order given; an empty group gives zeros.
        """
        unique = list(dict.fromkeys(str(p) for g in groups for p in g))
        index = {p: i for i, p in enumerate(unique)}
        total = {n: torch.zeros((len(groups), *shape), dtype=torch.float32, device=device) for n, shape in self.layout}
        stored = self.rows(unique).to(device) if unique else None
        for q, group in enumerate(groups):
            for p in group:
                for n, g in lora.unflatten(stored[index[str(p)]], self.layout).items():
                    total[n][q].add_(g)   # fp32 += storage dtype: exact widening, no fp32 copy of the rows
        return total

    def iter_blocks(self, block_rows: int = 256) -> Iterator[tuple[list[str], torch.Tensor]]:
        """Every entry, shard by shard, in blocks of at most ``block_rows``: (ids, ``[n, D]`` storage dtype)."""
        for s, shard in enumerate(self.manifest["shards"]):
            for start in range(0, shard["rows"], block_rows):
                stop = min(start + block_rows, shard["rows"])
                yield shard["ids"][start:stop], self._slice(s)[start:stop]

    def norms(self) -> dict[str, float]:
        """The L2 norm of every stored gradient (for the notebook's histogram)."""
        out = {}
        for ids, block in self.iter_blocks():
            out.update(zip(ids, block.float().norm(dim=1).tolist()))
        return out

    def verify(self) -> dict:
        """Read every entry: shard sizes and sha256, tensor shapes, finite values. Raises :class:`BankError`."""
        from tqdm.auto import tqdm

        self._check_sizes()
        for s, shard in enumerate(self.manifest["shards"]):
            file = self._shard_file(s)
            if _sha256(file) != shard["sha256"]:
                raise BankError(f"shard {paths.relative(file)} does not match its sha256 in the manifest (corrupted): "
                                f"re-run 04_encode for {_where(self.path)} with overwrite=True")
            if len(shard["ids"]) != shard["rows"]:
                raise BankError(f"{paths.relative(self.path / MANIFEST)}: shard {shard['file']} lists "
                                f"{len(shard['ids'])} ids for {shard['rows']} rows")
        largest = 0.0
        with tqdm(total=len(self), desc=f"verify {paths.relative(self.path)}", unit="passage") as bar:
            for ids, block in self.iter_blocks():
                finite = torch.isfinite(block).all(dim=1)
                if not bool(finite.all()):
                    bad = [p for p, ok in zip(ids, finite.tolist()) if not ok]
                    raise BankError(f"Gradient Bank {paths.relative(self.path)}: non-finite values in the gradients "
                                    f"of passages {bad[:5]}: re-run 04_encode with overwrite=True")
                largest = max(largest, float(block.float().norm(dim=1).max()))
                bar.update(len(ids))
        return {"path": paths.relative(self.path), "entries": len(self), "shards": len(self.manifest["shards"]),
                "bytes_on_disk": self.bytes_on_disk(), "dtype": self.manifest["dtype"], "max_norm": largest}

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> "GradientBank":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- writing --------------------------------------------------------------------------------------------

class BankWriter:
    """Appends gradients to a bank (new or resumed) in shards of at most ``shard_bytes``. Use :meth:`open`.

    Full shards are written by one background thread while the caller computes the next batches (at most one
    shard waits); a failed write is raised by the next :meth:`append` or by :meth:`close`. Rows not yet in a
    written shard are lost when the process dies, and recomputed by a resumed encode.
    """

    def __init__(self, path: Path, manifest: dict, rows_per_shard: int, background: bool = True):
        self.path, self.manifest, self.rows_per_shard = path, manifest, rows_per_shard
        self.dtype = storage_dtype(manifest["dtype"])
        self._known = {p for s in manifest["shards"] for p in s["ids"]}
        self._ids: list[str] = []
        self._chunks: list[torch.Tensor] = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="bank-writer") if background else None
        self._pending: Future | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, head: dict, *, overwrite: bool = False,
             shard_bytes: int = DEFAULT_SHARD_BYTES, config: dict | None = None,
             background: bool = True) -> "BankWriter":
        """Start a bank at ``path`` or resume the one there (its identity must equal ``head``; else refused)."""
        path = paths.resolve(path)
        if not 0 < shard_bytes <= MAX_SHARD_BYTES:
            raise ValueError(f"shard_bytes={shard_bytes} must be in (0, {MAX_SHARD_BYTES}] (shards of at most ~2 GB)")
        if overwrite and path.exists():
            (path / MANIFEST).unlink(missing_ok=True)     # first: the folder is no bank from here on
        if (path / MANIFEST).exists():
            existing = GradientBank.open(path)
            diff = {k: (existing.manifest[k], head[k]) for k in IDENTITY if existing.manifest[k] != head[k]}
            if diff:
                shown = "; ".join(f"{k}: bank {a!r} != now {b!r}" for k, (a, b) in diff.items())
                raise BankMismatchError(f"Gradient Bank {paths.relative(path)} exists with other settings ({shown}): "
                                        "pass overwrite=True (04_encode: overwrite = True) to rebuild it")
            manifest = existing.manifest
            log.info("resuming %s: %d entries present", paths.relative(path), len(existing))
        else:
            manifest = {**head, "count": 0, "shards": [], "provenance": artifacts.provenance(config)}
        path.mkdir(parents=True, exist_ok=True)
        listed = {s["file"] for s in manifest["shards"]}
        for stray in path.iterdir():   # orphans of an interrupted write, or the old bank when overwriting
            if stray.name != MANIFEST and stray.name not in listed and (
                    stray.suffix == ".tmp" or stray.name.endswith(".safetensors")):
                stray.unlink()
        manifest.setdefault("requests", []).append({**head.get("source", {}), "started": time.strftime("%FT%T%z")})
        row_bytes = manifest["numel"] * storage_dtype(manifest["dtype"]).itemsize
        return cls(path, manifest, max(1, shard_bytes // row_bytes), background)

    def ids(self) -> set[str]:
        """Passage ids already stored, being written or buffered."""
        return set(self._known)

    def append(self, ids: Sequence[str], vectors: torch.Tensor) -> None:
        """Add ``[len(ids), D]`` gradients (on any device; cast to the storage dtype there, then copied to the CPU)."""
        ids = [str(p) for p in ids]
        if vectors.shape != (len(ids), self.manifest["numel"]):
            raise ValueError(f"gradients of shape {tuple(vectors.shape)} for {len(ids)} ids; expected "
                             f"[{len(ids)}, {self.manifest['numel']}]")
        twice = [p for p in ids if p in self._known] + [p for p, k in Counter(ids).items() if k > 1]
        if twice:
            raise ValueError(f"passage ids {twice[:5]} are already in {paths.relative(self.path)}: one entry per id")
        vectors = vectors.detach()
        if len(ids):
            limit = torch.finfo(self.dtype).max        # NaN fails both comparisons; inf and overflow fail one
            ok = (vectors.amax(dim=1) <= limit) & (vectors.amin(dim=1) >= -limit)
            if not bool(ok.all()):
                bad = [p for p, good in zip(ids, ok.tolist()) if not good]
                raise ValueError(f"non-finite gradients for passages {bad[:5]} (in {self.manifest['dtype']}): check "
                                 "the run's meta weights; with dtype='fp16' large values overflow, use bf16 or fp32")
        stored = vectors.to(self.dtype).to("cpu")
        self._known.update(ids)
        self._ids.extend(ids)
        self._chunks.append(stored)
        while len(self._ids) >= self.rows_per_shard:
            self._submit(self.rows_per_shard)

    def _submit(self, n: int) -> None:
        ids, chunks, taken = self._ids[:n], [], 0
        while taken < n:
            chunk = self._chunks.pop(0)
            if taken + len(chunk) > n:
                self._chunks.insert(0, chunk[n - taken:])
                chunk = chunk[:n - taken]
            chunks.append(chunk)
            taken += len(chunk)
        del self._ids[:n]
        self._wait()
        if self._pool is None:
            self._write_shard(ids, chunks)
        else:
            self._pending = self._pool.submit(self._write_shard, ids, chunks)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write_shard(self, ids: list[str], chunks: list[torch.Tensor]) -> None:
        rows = torch.cat(chunks) if len(chunks) > 1 else chunks[0].contiguous()
        shards = self.manifest["shards"]
        name = f"shard-{len(shards):05d}.safetensors"
        with artifacts.atomic_path(self.path / name) as tmp:
            save_file({TENSOR: rows}, str(tmp), metadata={"format": FORMAT, "dtype": self.manifest["dtype"]})
            digest, size = _file_digest(tmp, rows)
        shards.append({"file": name, "rows": len(ids), "bytes": size, "sha256": digest, "ids": ids})
        self.manifest["count"] += len(ids)
        artifacts.write_json(self.path / MANIFEST, self.manifest, indent=1)
        log.debug("wrote %s (%d rows)", name, len(ids))

    def adopt(self, part: str | os.PathLike) -> int:
        """List the shards of ``part`` (a bank of the same identity written by another process of a job) in this bank:
        each file is hard-linked in (copied across filesystems) as ``<part name>-<file>``, then the manifest is
        rewritten, once. Shards already listed are skipped, so a merge that was interrupted can be run again.
        Returns the rows added."""
        self.flush()
        with GradientBank.open(part) as other:
            diff = [k for k in IDENTITY if other.manifest[k] != self.manifest[k]]
            if diff:
                raise BankMismatchError(f"{paths.relative(other.path)} differs from {paths.relative(self.path)} in "
                                        f"{diff}: pass overwrite=True (04_encode: overwrite = True) to rebuild it")
            shards = other.manifest["shards"]
        listed = {s["file"] for s in self.manifest["shards"]}
        added = 0
        for shard in shards:
            name = f"{Path(part).name}-{shard['file']}"
            if name in listed:
                continue
            twice = self._known.intersection(shard["ids"])
            if twice:
                raise BankError(f"passage ids {sorted(twice)[:5]} of {paths.relative(Path(part) / shard['file'])} are "
                                f"already in {paths.relative(self.path)}: one entry per id")
            with artifacts.atomic_path(self.path / name) as tmp:
                tmp.unlink()
                try:
                    os.link(Path(part) / shard["file"], tmp)
                except OSError:
                    shutil.copyfile(Path(part) / shard["file"], tmp)
            self.manifest["shards"].append({**shard, "file": name})
            self.manifest["count"] += shard["rows"]
            self._known.update(shard["ids"])
            added += shard["rows"]
        if added or not (self.path / MANIFEST).exists():
            artifacts.write_json(self.path / MANIFEST, self.manifest, indent=1)
        return added

    def flush(self) -> None:
        """Write whatever is buffered as one (smaller) shard and wait for the writes."""
        if self._ids:
            self._submit(len(self._ids))
        self._wait()

    def close(self) -> Path:
        """Flush the buffer, stop the writer thread; the bank folder."""
        try:
            self.flush()
        finally:
            self.abandon()
        if not (self.path / MANIFEST).exists():
            raise BankError(f"nothing was written to {paths.relative(self.path)}: no gradients were appended")
        return self.path

    def abandon(self) -> None:
        """Drop the buffered rows (a resume recomputes them); the shard being written is finished first."""
        self._ids, self._chunks = [], []
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "BankWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()


def _file_digest(file: Path, rows: torch.Tensor) -> tuple[str, int]:
    """sha256 and size of a just-written one-tensor safetensors file: its header read back + the rows in memory."""
    with file.open("rb") as f:
        prefix = f.read(8)
        head = f.read(int.from_bytes(prefix, "little"))
    data = rows.view(torch.uint8).numpy() if rows.numel() else b""
    size = file.stat().st_size
    if size != 8 + len(head) + rows.numel() * rows.element_size():
        raise BankError(f"{file}: {size} bytes written, expected {8 + len(head)} + the tensor's bytes (disk full?)")
    h = hashlib.sha256(prefix)
    h.update(head)
    h.update(data)
    return h.hexdigest(), size


def open_bank(topk: int, run: str, dataset: str, split: str, **checks) -> GradientBank:
    """``GradientBank.open(paths.bank_dir(topk, run, dataset, split), **checks)``."""
    return GradientBank.open(paths.bank_dir(topk, run, dataset, split), **checks)

