"""The Gradient Bank: every passage's LoRA gradient ``g_d`` (method.md equation 1), looked up by passage id.

With :mod:`regrad_lib.bank.on_disk` (the format, checks and checksums) and :mod:`regrad_lib.bank.writer`
(:class:`~regrad_lib.bank.writer.BankWriter`), the only code that reads or writes gradient files. A bank is a folder
``offline/<topk>/<run>/<dataset>/<split>_all/<scheme>/`` (``paths.bank_dir``) of safetensors shards and a
``manifest.json`` (format version 2, described in :mod:`regrad_lib.bank.on_disk`); one bank holds one storage
scheme (:mod:`regrad_lib.bank.schemes`: fp32, bf16, fp16, int8, int4, int2, with per-group bf16 scales).

Reads are memory-mapped (``safe_open`` + ``get_slice``): a lookup reads only the rows it needs. Integrity:

- :meth:`GradientBank.open` refuses a malformed or inconsistent manifest (:class:`BankFormatError` naming the
  field), a missing or truncated shard, a shard header that disagrees with the manifest (identity, scheme,
  shapes, the id list's sha256), and — given ``learner`` or hashes — a bank of other weights
  (:class:`BankMismatchError`). Cost: one header read per shard (no gradient bytes).
- every row read (``get``, ``rows``, ``sum``, ``sum_many``, ``iter_blocks``) is checked against its stored
  CRC-32, which also covers the passage id, so a damaged row or a shifted id list is refused
  (:class:`BankCorruptError`), never served. Cost: zlib's CRC-32 over the stored bytes, on the CPU as rows are
  read, before they move to the target device (measured by ``bench/integrity_bench.py``: BENCHMARKS.md,
  "Integrity checks").
- :meth:`GradientBank.verify` reads everything: file sha256, every row's CRC-32, finite decoded values.

Decoding happens inside :meth:`GradientBank.sum_many` on the target device (stored codes are moved, not fp32
rows), summing in fp32 in the order given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from regrad_lib.bank import schemes
from regrad_lib.bank.on_disk import (
    CRC,
    MANIFEST,
    BankCorruptError,
    BankError,
    BankFormatError,
    BankMismatchError,
    check_rows,
    check_shard_header,
    header,
    layout_of,
    rebuild,
    sha256_file,
    validate_manifest,
    where,
)
from regrad_lib.core import lora
from regrad_lib.io import artifacts, paths

log = logging.getLogger(__name__)

DEFAULT_SCHEME = schemes.DEFAULT
Weights = dict[str, torch.Tensor]


def header_for(learner, scheme: str = DEFAULT_SCHEME, **source) -> dict:
    """:func:`header` for a :class:`regrad_lib.core.learner.Learner` (``source``: run, dataset, split, topk …)."""
    from regrad_lib.core import modeling
    model = learner.model
    return header(model=learner.preset.learner.model_name_or_path, model_id=modeling.model_id(model),
                  model_revision=getattr(model.config, "_commit_hash", None), preset=learner.preset.name,
                  phi=learner.phi, meta_hash=learner.meta_hash(), scheme=scheme, source=source)


class _Shard:
    """An open shard: its safetensors handle, slices of the stored tensors, the rows' CRC-32s (read lazily)."""

    def __init__(self, handle, slices: dict, file: Path):
        self.handle, self.slices, self.file = handle, slices, file
        self._crc: list[int] | None = None

    def crc(self) -> list[int]:
        if self._crc is None:
            self._crc = self.handle.get_tensor(CRC).tolist()
        return self._crc


class GradientBank:
    """A memory-mapped, read-only, checked Gradient Bank. Use :meth:`open` or :func:`open_bank`."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.scheme = validate_manifest(manifest, path / MANIFEST)
        self.layout = layout_of(manifest)
        self._where: dict[str, tuple[int, int]] = {}
        for s, shard in enumerate(manifest["shards"]):
            for row, pid in enumerate(shard["ids"]):
                self._where[pid] = (s, row)
        self._shards: dict[int, _Shard] = {}
        self._decoders: dict[torch.device, schemes.Decoder] = {}

    @classmethod
    def open(cls, path: str | os.PathLike, *, layout_hash: str | None = None, meta_hash: str | None = None,
             model: str | None = None, learner=None, scheme: str | None = None) -> GradientBank:
        """Open a bank and check it (see the module docstring); refuse it when its layout, meta weights, model or
        scheme differ from those asked for (``learner`` supplies the first three)."""
        path = paths.resolve(path)
        manifest_file = path / MANIFEST
        if not manifest_file.exists():
            others = present_schemes(path.parent) if path.parent.name.endswith("_all") else []
            hint = f"; banks of this split exist in schemes {others}" if others else ""
            raise FileNotFoundError(f"no Gradient Bank at {paths.relative(path)} ({MANIFEST} missing): it is written "
                                    f"by 04_encode ({where(path)}){hint}")
        try:
            manifest = artifacts.read_json(manifest_file, unique_keys=True)    # a key twice: the last would win
        except (ValueError, UnicodeDecodeError) as e:
            raise BankFormatError(f"{paths.relative(manifest_file)} cannot be read ({e}); {rebuild(path)}") from None
        bank = cls(path, manifest)
        bank.check(learner, layout_hash=layout_hash, meta_hash=meta_hash, model=model, scheme=scheme)
        bank._check_files()
        for s in range(len(manifest["shards"])):
            bank._shard(s)
        return bank

    def check(self, learner=None, *, layout_hash: str | None = None, meta_hash: str | None = None,
              model: str | None = None, scheme: str | None = None) -> GradientBank:
        """Raise :class:`BankMismatchError` unless the bank matches ``learner`` (model, LoRA layout, meta weights)
        and the given hashes / model / scheme; returns the bank."""
        if learner is not None:
            layout_hash = layout_hash or learner.layout_hash()
            meta_hash = meta_hash or learner.meta_hash()
            model = model or learner.preset.learner.model_name_or_path
        wanted = {"model": model, "layout_hash": layout_hash, "meta_hash": meta_hash,
                  "scheme": None if scheme is None else schemes.parse(scheme).name}
        bad = {k: v for k, v in wanted.items() if v is not None and self.manifest[k] != v}
        if bad:
            shown = "; ".join(f"{k}: bank {self.manifest[k]!r} != requested {v!r}" for k, v in bad.items())
            raise BankMismatchError(
                f"Gradient Bank {paths.relative(self.path)} was encoded with other weights or settings ({shown}). "
                f"The run's meta weights or LoRA layout changed since the bank was built, or it is another run's "
                f"bank: {rebuild(self.path)}")
        return self

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
        """Stored bytes of one gradient: the scheme's values and scales, plus its 8-byte checksum."""
        return self.scheme.row_bytes(self.layout) + 8

    def bytes_on_disk(self) -> int:
        files = [self.path / s["file"] for s in self.manifest["shards"]] + [self.path / MANIFEST]
        return sum(f.stat().st_size for f in files)

    def _shard_file(self, s: int) -> Path:
        return self.path / self.manifest["shards"][s]["file"]

    def _check_files(self) -> None:
        for s, shard in enumerate(self.manifest["shards"]):
            file = self._shard_file(s)
            if not file.exists():
                raise BankError(f"shard {paths.relative(file)} listed in the manifest is missing: {rebuild(self.path)}")
            size = file.stat().st_size
            if size != shard["bytes"]:
                raise BankError(f"shard {paths.relative(file)} is {size} bytes but the manifest says {shard['bytes']} "
                                f"(truncated or replaced): {rebuild(self.path)}")

    # --- reads ------------------------------------------------------------------------------------------
    def _shard(self, s: int) -> _Shard:
        if s not in self._shards:
            file = self._shard_file(s)
            try:
                handle = safe_open(str(file), framework="pt")
                slices = {k: handle.get_slice(k) for k in handle.keys()}
                tensors = {k: (v.get_shape(), v.get_dtype()) for k, v in slices.items()}
                metadata = handle.metadata()
            except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # a damaged header
                raise BankCorruptError(f"shard {paths.relative(file)} cannot be read ({type(e).__name__}: {e}); it "
                                       f"is corrupted: {rebuild(self.path)}") from e
            check_shard_header(metadata, tensors, self.manifest, s, file)
            self._shards[s] = _Shard(handle, {k: v for k, v in slices.items() if k != CRC}, file)
        return self._shards[s]

    def _locate(self, pid: str) -> tuple[int, int]:
        try:
            return self._where[pid]
        except KeyError:
            raise KeyError(f"passage id {pid!r} is not in the Gradient Bank {paths.relative(self.path)} "
                           f"({len(self)} entries): run 04_encode for {where(self.path)} over the questions that "
                           "retrieve it") from None

    def _read_range(self, s: int, start: int, stop: int) -> dict[str, torch.Tensor]:
        """Stored rows ``start:stop`` of shard ``s`` (CPU), CRC-checked."""
        shard = self._shard(s)
        parts = {k: v[start:stop] for k, v in shard.slices.items()}
        ids = self.manifest["shards"][s]["ids"][start:stop]
        check_rows(ids, parts, shard.crc()[start:stop], [shard.file.name] * len(ids), range(start, stop), self.path)
        return parts

    def stored(self, pids: Sequence[str]) -> dict[str, torch.Tensor]:
        """The stored tensors of ``pids`` (``values`` and, for integer schemes, ``scales``; rows in the order
        given, CPU), each row checked against its CRC-32; reads only those rows."""
        where_ = [self._locate(str(p)) for p in pids]
        out = {name: torch.empty((len(where_), cols), dtype=dtype)
               for name, (cols, dtype) in self.scheme.shapes(self.layout).items()}
        order = sorted(range(len(where_)), key=lambda i: where_[i])
        i = 0
        while i < len(order):  # read runs of consecutive rows of one shard with one slice
            s, start = where_[order[i]]
            j = i + 1
            while j < len(order) and where_[order[j]][0] == s and where_[order[j]][1] <= where_[order[j - 1]][1] + 1:
                j += 1
            stop = where_[order[j - 1]][1] + 1
            block = {k: v[start:stop] for k, v in self._shard(s).slices.items()}
            for k in order[i:j]:
                for name, tensor in out.items():
                    tensor[k] = block[name][where_[k][1] - start]
            i = j
        shards = [self._shard(s) for s, _ in where_]
        check_rows([str(p) for p in pids], out, [sh.crc()[row] for sh, (_, row) in zip(shards, where_)],
                   [sh.file.name for sh in shards], [row for _, row in where_], self.path)
        return out

    def rows(self, pids: Sequence[str], device: str | torch.device = "cpu") -> torch.Tensor:
        """The gradients of ``pids`` decoded to fp32, ``[len(pids), numel]`` on ``device``."""
        parts = {k: v.to(device) for k, v in self.stored(pids).items()}
        return self.scheme.decode(parts, self.layout)

    def get(self, pid: str) -> Weights:
        """One passage's gradient as the LoRA dict (fp32, CPU)."""
        return lora.unflatten(self.rows([pid])[0], self.layout)

    def sum(self, pids: Sequence[str], device: str | torch.device = "cpu") -> Weights:
        """``Σ_{d in pids} g_d`` (equation 2's sum) as the LoRA dict, fp32 on ``device``; reads only those rows."""
        if not pids:
            raise ValueError("bank.sum needs at least one passage id")
        return {n: g[0] for n, g in self.sum_many([pids], device).items()}

    def sum_many(self, groups: Sequence[Sequence[str]], device: str | torch.device = "cpu") -> Weights:
        """One summed gradient per group (question): ``{name: [len(groups), *shape]}``, fp32 on ``device``.

        Each distinct passage is read once (CRC-checked) and moved to ``device`` in its stored form; it is decoded
        there and added in fp32, entries in the order given; an empty group gives zeros.
        """
        device = torch.device(device)
        unique = list(dict.fromkeys(str(p) for g in groups for p in g))
        index = {p: i for i, p in enumerate(unique)}
        total = torch.zeros((len(groups), self.scheme.padded(self.layout)), dtype=torch.float32, device=device)
        if unique:
            parts = {k: v.to(device) for k, v in self.stored(unique).items()}
            decoder = self._decoders.get(device) or self._decoders.setdefault(
                device, self.scheme.decoder(self.layout, device))
            for q, group in enumerate(groups):
                for p in group:
                    i = index[str(p)]
                    decoder.add(total[q:q + 1], {k: v[i:i + 1] for k, v in parts.items()})
        return schemes.unflatten(total, self.layout, self.scheme)

    def iter_blocks(self, block_rows: int = 256) -> Iterator[tuple[list[str], torch.Tensor]]:
        """Every entry, shard by shard, in blocks of at most ``block_rows``: (ids, ``[n, numel]`` fp32), checked."""
        for s, shard in enumerate(self.manifest["shards"]):
            for start in range(0, shard["rows"], block_rows):
                stop = min(start + block_rows, shard["rows"])
                yield shard["ids"][start:stop], self.scheme.decode(self._read_range(s, start, stop), self.layout)

    def norms(self) -> dict[str, float]:
        """The L2 norm of every stored gradient (for the notebook's histogram)."""
        out = {}
        for ids, block in self.iter_blocks():
            out.update(zip(ids, block.norm(dim=1).tolist()))
        return out

    def verify(self) -> dict:
        """Read everything: shard sizes, sha256 and headers, every row's CRC-32, finite values. Raises BankError."""
        from tqdm.auto import tqdm

        self._check_files()
        for s, shard in enumerate(self.manifest["shards"]):
            file = self._shard_file(s)
            if sha256_file(file) != shard["sha256"]:
                raise BankCorruptError(f"shard {paths.relative(file)} does not match its sha256 in the manifest "
                                       f"(corrupted): {rebuild(self.path)}")
            self._shard(s)
        largest = 0.0
        with tqdm(total=len(self), desc=f"verify {paths.relative(self.path)}", unit="passage") as bar:
            for ids, block in self.iter_blocks():
                finite = torch.isfinite(block).all(dim=1)
                if not bool(finite.all()):
                    bad = [p for p, ok in zip(ids, finite.tolist()) if not ok]
                    raise BankCorruptError(f"Gradient Bank {paths.relative(self.path)}: non-finite values in the "
                                           f"gradients of passages {bad[:5]}: {rebuild(self.path)}")
                largest = max(largest, float(block.norm(dim=1).max()))
                bar.update(len(ids))
        return {"path": paths.relative(self.path), "entries": len(self), "shards": len(self.manifest["shards"]),
                "bytes_on_disk": self.bytes_on_disk(), "scheme": self.scheme.name, "max_norm": largest}

    def close(self) -> None:
        self._shards.clear()
        self._decoders.clear()

    def __enter__(self) -> GradientBank:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def present_schemes(split_dir: Path) -> list[str]:
    """Schemes with a bank (a manifest) under ``offline/<topk>/<run>/<dataset>/<split>_all/``, sorted."""
    return sorted(p.name for p in split_dir.iterdir() if (p / MANIFEST).is_file()) if split_dir.is_dir() else []


def open_bank(topk: int, run: str, dataset: str, split: str, scheme: str = DEFAULT_SCHEME, **checks) -> GradientBank:
    """``GradientBank.open(paths.bank_dir(topk, run, dataset, split, scheme), scheme=scheme, **checks)``."""
    name = schemes.parse(scheme).name
    return GradientBank.open(paths.bank_dir(topk, run, dataset, split, name), scheme=name, **checks)


def serving_topk(topk: int, run: str, dataset: str, split: str, scheme: str = DEFAULT_SCHEME) -> int:
    """The top-K whose bank serves questions answered with their top ``topk`` passages: ``topk`` when it has a bank,
    else the smallest K > ``topk`` with one (04_encode with ``topk = K`` banked every question's top K, which
    hold its top ``topk``), else ``topk`` (whose absent bank is then reported by :func:`open_bank`)."""
    name = schemes.parse(scheme).name
    banked = sorted(int(p.name) for p in paths.offline_dir().iterdir() if p.name.isdigit()
                    and (paths.bank_dir(int(p.name), run, dataset, split, name) / MANIFEST).is_file()) \
        if paths.offline_dir().is_dir() else []
    return next((k for k in banked if k >= topk), topk)


def schemes_on_disk(topk: int, run: str, dataset: str, split: str) -> list[str]:
    """The schemes of ``dataset``/``split`` that have a bank in ``offline/<topk>/<run>/``."""
    return present_schemes(paths.bank_split_dir(topk, run, dataset, split))


def storage_scheme(name: str) -> schemes.Scheme:
    """A scheme name checked (``ValueError`` naming the allowed ones)."""
    return schemes.parse(name)
