"""Writing a Gradient Bank (format: :mod:`regrad_lib.bank.on_disk`): shards in the background, atomic, resumable.

Gradients are encoded in the bank's scheme on the device they were computed on (:meth:`schemes.Scheme.encode`:
a cast, or integer codes and scales), then only the stored bytes are copied to the CPU. Full shards are written
by one background thread while the caller computes the next batches (at most one shard waits): per-row CRC-32s,
``save_file`` to a temporary name, rename, then the manifest is rewritten atomically — so an interrupted encode
never leaves a manifest pointing at a missing or partial shard, and a resume recomputes only the rows that were
still buffered. Shard files are named ``<prefix>-<nnnnn>.safetensors``; readers take any name the manifest
lists, so several writers (prefixes) can fill shards of one bank and a merge can list them all.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from regrad_lib.bank import schemes
from regrad_lib.bank.on_disk import (
    CRC,
    IDENTITY,
    MANIFEST,
    BankError,
    BankMismatchError,
    file_digest,
    ids_checksum,
    layout_of,
    row_checksums,
    shard_metadata,
)
from regrad_lib.io import artifacts, paths, tensorfile

log = logging.getLogger(__name__)

MAX_SHARD_BYTES = 2 * 1024 ** 3
DEFAULT_SHARD_BYTES = 1024 ** 3


class BankWriter:
    """Appends gradients to a bank (new or resumed) in shards of at most ``shard_bytes``. Use :meth:`open`.

    A failed background write is raised by the next :meth:`append` or by :meth:`close`. Rows not yet in a
    written shard are lost when the process dies, and recomputed by a resumed encode.
    """

    def __init__(self, path: Path, manifest: dict, rows_per_shard: int, background: bool = True,
                 prefix: str = "shard"):
        self.path, self.manifest, self.rows_per_shard, self.prefix = path, manifest, rows_per_shard, prefix
        self.scheme = schemes.parse(manifest["scheme"])
        self.layout = layout_of(manifest)
        self._known = {p for s in manifest["shards"] for p in s["ids"]}
        self._ids: list[str] = []
        self._chunks: list[dict[str, torch.Tensor]] = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="bank-writer") if background else None
        self._pending: Future | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, head: dict, *, overwrite: bool = False,
             shard_bytes: int = DEFAULT_SHARD_BYTES, config: dict | None = None, background: bool = True,
             prefix: str = "shard") -> BankWriter:
        """Start a bank at ``path`` or resume the one there (its identity, scheme included, must equal ``head``)."""
        from regrad_lib.bank.reader import GradientBank

        path = paths.resolve(path)
        if not 0 < shard_bytes <= MAX_SHARD_BYTES:
            raise ValueError(f"shard_bytes={shard_bytes} must be in (0, {MAX_SHARD_BYTES}] (shards of at most ~2 GB)")
        if not prefix or Path(prefix).name != prefix or prefix.startswith("."):
            raise ValueError(f"prefix={prefix!r} must be a plain file-name prefix such as 'shard' or 'shard-w1'")
        if overwrite and path.exists():
            (path / MANIFEST).unlink(missing_ok=True)     # first: the folder is no bank from here on
        if (path / MANIFEST).exists():
            existing = GradientBank.open(path)
            diff = {k: (existing.manifest[k], head[k]) for k in IDENTITY if existing.manifest[k] != head[k]}
            if diff:
                shown = "; ".join(f"{k}: bank {a!r} != now {b!r}" for k, (a, b) in diff.items())
                raise BankMismatchError(f"Gradient Bank {paths.relative(path)} exists with other settings ({shown}); "
                                        "one bank never mixes schemes or weights: pass overwrite=True (04_encode: "
                                        "overwrite = True) to rebuild it")
            manifest = existing.manifest
            existing.close()
            log.info("resuming %s: %d entries present", paths.relative(path), len(existing))
        else:
            manifest = {**head, "count": 0, "shards": [], "provenance": artifacts.provenance(config)}
        path.mkdir(parents=True, exist_ok=True)
        listed = {s["file"] for s in manifest["shards"]}
        ours = re.compile(rf"\.?{re.escape(prefix)}-\d+\.safetensors(\..+\.tmp)?")   # not other writers' shards
        manifest_tmp = re.compile(rf"\.{re.escape(MANIFEST)}\..+\.tmp")  # a manifest write cut short (atomic_path)
        for stray in path.iterdir():   # orphans of an interrupted write of this writer, or the old bank
            if stray.name not in listed and (ours.fullmatch(stray.name) or manifest_tmp.fullmatch(stray.name) or
                                             overwrite and (stray.suffix == ".tmp" or
                                                            stray.name.endswith(".safetensors"))):
                stray.unlink()
        manifest.setdefault("requests", []).append({**head.get("source", {}), "started": time.strftime("%FT%T%z")})
        row_bytes = schemes.parse(manifest["scheme"]).row_bytes(layout_of(manifest))
        return cls(path, manifest, max(1, shard_bytes // row_bytes), background, prefix)

    def ids(self) -> set[str]:
        """Passage ids already stored, being written or buffered."""
        return set(self._known)

    def append(self, ids: Sequence[str], vectors: torch.Tensor) -> None:
        """Add ``[len(ids), numel]`` gradients (any device), encoded in the bank's scheme there, then moved off it."""
        ids = [str(p) for p in ids]
        if vectors.shape != (len(ids), self.manifest["numel"]):
            raise ValueError(f"gradients of shape {tuple(vectors.shape)} for {len(ids)} ids; expected "
                             f"[{len(ids)}, {self.manifest['numel']}]")
        twice = [p for p in ids if p in self._known] + [p for p, k in Counter(ids).items() if k > 1]
        if twice:
            raise ValueError(f"passage ids {twice[:5]} are already in {paths.relative(self.path)}: one entry per id")
        if not ids:
            return
        parts, ok = self.scheme.encode(vectors, self.layout)
        if not bool(ok.all()):
            bad = [p for p, good in zip(ids, ok.tolist()) if not good]
            raise ValueError(f"non-finite gradients for passages {bad[:5]} (scheme {self.scheme.name}): check the "
                             "run's meta weights; with scheme 'fp16' large values overflow, use bf16, fp32 or int8")
        stored = {}
        for k, v in parts.items():
            cpu = v.to("cpu")
            stored[k] = cpu.clone() if cpu.data_ptr() == vectors.data_ptr() else cpu   # never alias the caller's
        self._known.update(ids)
        self._ids.extend(ids)
        self._chunks.append(stored)
        while len(self._ids) >= self.rows_per_shard:
            self._submit(self.rows_per_shard)

    def _submit(self, n: int) -> None:
        ids, chunks, taken = self._ids[:n], [], 0
        while taken < n:
            chunk = self._chunks.pop(0)
            rows = len(next(iter(chunk.values())))
            if taken + rows > n:
                self._chunks.insert(0, {k: v[n - taken:] for k, v in chunk.items()})
                chunk = {k: v[:n - taken] for k, v in chunk.items()}
                rows = n - taken
            chunks.append(chunk)
            taken += rows
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

    def _write_shard(self, ids: list[str], chunks: list[dict[str, torch.Tensor]]) -> None:
        tensors = {k: torch.cat([c[k] for c in chunks]) if len(chunks) > 1 else chunks[0][k].contiguous()
                   for k in chunks[0]}
        tensors[CRC] = row_checksums(ids, tensors)
        shards = self.manifest["shards"]
        name = f"{self.prefix}-{len(shards):05d}.safetensors"
        with artifacts.atomic_path(self.path / name) as tmp:
            tensorfile.save(tmp, tensors, shard_metadata(self.manifest, ids), shown_as=self.path / name,
                            checksum=False)    # rows carry CRC-32s, the file its SHA-256 in the manifest
            digest, size = file_digest(tmp, tensors)
        shards.append({"file": name, "rows": len(ids), "bytes": size, "sha256": digest,
                       "ids_sha256": ids_checksum(ids), "ids": ids})
        self.manifest["count"] += len(ids)
        artifacts.write_json(self.path / MANIFEST, self.manifest, indent=1)
        log.debug("wrote %s (%d rows)", name, len(ids))

    def adopt(self, part: str | os.PathLike) -> int:
        """List the shards of ``part`` (a bank of the same identity written by another process of a job) in this bank:
        each file is hard-linked in (copied across filesystems) as ``<part name>-<file>``, then the manifest is
        rewritten, once. Shards already listed are skipped, so a merge that was interrupted can be run again.
        Shards describe themselves (ids, checksums, identity in the header), so an adopted one reads like any other.
        Returns the rows added."""
        from regrad_lib.bank.reader import GradientBank

        self.flush()
        with GradientBank.open(part) as other:        # checked: structure, headers, identity below
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

    def __enter__(self) -> BankWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()
