"""The Gradient Bank's on-disk format (version 2): manifest and shard-header checks, checksums, errors.

Only :mod:`regrad_lib.bank.reader` (reading), :mod:`regrad_lib.bank.writer` (writing) and this module touch gradient
files. A bank folder ``offline/<topk>/<run>/<dataset>/<split>_all/<scheme>/`` holds

- ``<prefix>-<nnnnn>.safetensors`` shards (any plain file name the manifest lists), each with the tensors
  ``values`` ``[rows, cols]`` (the scheme's codes or values, :mod:`regrad_lib.bank.schemes`), ``scales``
  ``[rows, groups]`` bf16 (integer schemes only) and ``crc32`` ``[rows]`` int64: the CRC-32 of the row's
  passage id (UTF-8), then its ``values`` bytes, then its ``scales`` bytes. Its safetensors metadata repeats
  the bank's identity (format, version, scheme, group_size, numel, layout_hash, meta_hash) and holds the
  shard's ``ids`` (JSON list, row order) and ``ids_sha256``, so a shard describes itself;
- ``manifest.json``: ``format``, ``version``, ``model``, ``model_id``, ``model_revision``, ``preset``,
  ``layout`` (``[[name, shape], …]``), ``layout_hash``, ``meta_hash``, ``numel``, ``scheme``, ``group_size``,
  ``source``, ``count``, ``shards`` (``[{file, rows, bytes, sha256, ids_sha256, ids}, …]``), ``provenance``,
  ``requests``.

``ids_sha256`` = sha256 of the id list as compact JSON. Opening a bank checks the manifest's structure and types
(:class:`BankFormatError`, naming the manifest and the field), each shard's size and header (identity, shapes,
dtypes, and that its ``ids_sha256`` equals the manifest's and the manifest's ids hash to it); every row read
is checked against its CRC-32 (:class:`BankCorruptError`); :meth:`GradientBank.verify` also checks each file's
sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from regrad_lib.bank import schemes
from regrad_lib.core import lora
from regrad_lib.io import paths

FORMAT, VERSION = "regrad-gradient-bank", 2
MANIFEST = "manifest.json"
CRC = "crc32"
IDENTITY = ("model", "layout_hash", "meta_hash", "scheme", "group_size", "numel")  # what a resumed encode must match
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int8: "I8",
                      torch.uint8: "U8", torch.int64: "I64"}


class BankError(ValueError):
    """A bank folder is missing, truncated, corrupted or of another model; the message names the file and fix."""


class BankFormatError(BankError):
    """A manifest or shard header is malformed or inconsistent (wrong type, count, duplicate shard or id …)."""


class BankMismatchError(BankError):
    """The bank was encoded with another model, LoRA layout, meta weights or scheme than the one asked for."""


class BankCorruptError(BankError):
    """Stored bytes do not match their checksum: the bank must not be served."""


def where(path: Path) -> str:
    """``run=…, dataset=…, split=…, topk=…, scheme=…`` recovered from a bank path, for error messages."""
    parts = path.parts
    if len(parts) >= 5 and parts[-2].endswith("_all"):
        return (f"run={parts[-4]!r}, dataset={parts[-3]!r}, split={parts[-2][:-4]!r}, topk={parts[-5]}, "
                f"scheme={parts[-1]!r}")
    return f"bank {paths.relative(path)}"


def rebuild(path: Path) -> str:
    """The fix every damaged-bank message ends with."""
    return f"re-run 04_encode for {where(path)} with overwrite=True"


def header(*, model: str, model_id: str, model_revision: str | None, preset: str, phi: dict, meta_hash: str,
           scheme: str = schemes.DEFAULT, source: dict | None = None) -> dict:
    """The identity part of a manifest: which model, LoRA layout and meta weights, stored in which scheme."""
    return {"format": FORMAT, "version": VERSION, "model": model, "model_id": model_id,
            "model_revision": model_revision, "preset": preset,
            "layout": [[name, list(shape)] for name, shape in lora.layout(phi)],
            "layout_hash": lora.layout_hash(phi), "meta_hash": meta_hash, "numel": lora.numel(phi),
            **schemes.describe(scheme), "source": source or {}}


def layout_of(manifest: dict) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(shape)) for name, shape in manifest["layout"]]


def ids_checksum(ids: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(ids), separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def _row_bytes(parts: dict[str, torch.Tensor]) -> list:
    """Per stored tensor (values, then scales), its rows as uint8 numpy arrays (CPU, no copy)."""
    return [parts[k].contiguous().view(torch.uint8).numpy() for k in (schemes.VALUES, schemes.SCALES) if k in parts]


def row_checksums(ids: Sequence[str], parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """CRC-32 of each row: its passage id, then its bytes in every stored tensor; ``[rows]`` int64."""
    arrays = _row_bytes(parts)
    out = []
    for i, pid in enumerate(ids):
        crc = zlib.crc32(pid.encode())
        for a in arrays:
            crc = zlib.crc32(a[i], crc)
        out.append(crc)
    return torch.tensor(out, dtype=torch.int64)


def check_rows(ids: Sequence[str], parts: dict[str, torch.Tensor], stored: Sequence[int],
               files: Sequence[str], rows: Sequence[int], bank: Path) -> None:
    """Raise :class:`BankCorruptError` for the first row whose CRC-32 differs from the stored one."""
    got = row_checksums(ids, parts).tolist()
    for pid, a, b, file, row in zip(ids, got, stored, files, rows):
        if a != b:
            raise BankCorruptError(
                f"Gradient Bank {paths.relative(bank)}: shard {file} row {row} (passage {pid!r}) does not match its "
                f"checksum: the stored gradient or the shard's id list is corrupted and is not served; "
                f"{rebuild(bank)}")


def shard_metadata(manifest: dict, ids: Sequence[str]) -> dict[str, str]:
    """The safetensors metadata of a new shard (all strings)."""
    meta = {k: json.dumps(manifest[k]) for k in ("version", "scheme", "group_size", "numel", "layout_hash",
                                                  "meta_hash")}
    return {"format": FORMAT, **meta, "ids": json.dumps(list(ids), ensure_ascii=False), "ids_sha256": ids_checksum(ids)}


# --- manifest validation ----------------------------------------------------------------------------------------

class _Checker:
    def __init__(self, file: Path):
        self.file = file

    def fail(self, field: str, problem: str) -> BankFormatError:
        return BankFormatError(f"{paths.relative(self.file)}: field {field!r} {problem}; the manifest is damaged or "
                               f"was edited: {rebuild(self.file.parent)}")

    def get(self, obj: dict, key: str, kind, field: str | None = None, nullable: bool = False):
        field = field or key
        if key not in obj:
            raise self.fail(field, "is missing")
        value = obj[key]
        if value is None and nullable:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(field, f"is {type(value).__name__} {_short(value)}, expected {names}")
        return value


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# long: every field of the manifest checked in one pass, in file order, each check naming its field
def validate_manifest(manifest, file: Path) -> schemes.Scheme:
    """Check a manifest's structure and internal consistency; its scheme. Raises :class:`BankFormatError`."""
    c = _Checker(file)
    if not isinstance(manifest, dict):
        raise BankFormatError(f"{paths.relative(file)}: the manifest is a JSON {type(manifest).__name__}, expected an "
                              f"object; {rebuild(file.parent)}")
    if manifest.get("format") != FORMAT:
        raise c.fail("format", f"is {_short(manifest.get('format'))}, expected {FORMAT!r}: not a Gradient Bank")
    version = manifest.get("version")
    if version != VERSION:
        raise BankFormatError(f"{paths.relative(file)}: Gradient Bank format version {version!r}, but this library "
                              f"reads version {VERSION} (per-row checksums, storage schemes): re-encode it — "
                              f"{rebuild(file.parent)}")
    for key in ("model", "model_id", "preset", "layout_hash", "meta_hash", "scheme"):
        c.get(manifest, key, str)
    c.get(manifest, "model_revision", str, nullable=True)
    try:
        scheme = schemes.parse(manifest["scheme"])
    except ValueError as e:
        raise c.fail("scheme", str(e)) from None
    if c.get(manifest, "group_size", int, nullable=True) != scheme.group_size or scheme.name != manifest["scheme"]:
        raise c.fail("group_size", f"= {manifest['group_size']!r} does not match scheme {manifest['scheme']!r}")
    layout = c.get(manifest, "layout", list)
    if not layout:
        raise c.fail("layout", "is empty")
    for i, entry in enumerate(layout):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], list)
                and entry[1] and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in entry[1])):
            raise c.fail(f"layout[{i}]", f"is {_short(entry)}, expected [name, [positive sizes]]")
    if lora.hash_layout(layout_of(manifest)) != manifest["layout_hash"]:
        raise c.fail("layout_hash", "does not match the field 'layout'")
    numel = sum(math.prod(s) for _, s in layout)
    if c.get(manifest, "numel", int) != numel:
        raise c.fail("numel", f"= {manifest['numel']} does not match the layout's {numel}")
    count = c.get(manifest, "count", int)
    shards = c.get(manifest, "shards", list)
    files: dict[str, int] = {}
    owner: dict[str, int] = {}
    rows = 0
    for i, shard in enumerate(shards):
        f = f"shards[{i}]"
        if not isinstance(shard, dict):
            raise c.fail(f, f"is {type(shard).__name__}, expected an object")
        name = c.get(shard, "file", str, f"{f}.file")
        if name != Path(name).name or name.startswith(".") or not name.endswith(".safetensors"):
            raise c.fail(f"{f}.file", f"= {name!r} is not a plain *.safetensors file name in the bank folder")
        if name in files:
            raise c.fail(f"{f}.file", f"= {name!r} is listed twice (also shards[{files[name]}])")
        files[name] = i
        n = c.get(shard, "rows", int, f"{f}.rows")
        if n < 1 or c.get(shard, "bytes", int, f"{f}.bytes") < 1:
            raise c.fail(f"{f}.rows", f"= {n}, bytes = {shard['bytes']}: a shard holds at least one row")
        c.get(shard, "sha256", str, f"{f}.sha256")
        ids = c.get(shard, "ids", list, f"{f}.ids")
        if len(ids) != n:
            raise c.fail(f"{f}.ids", f"lists {len(ids)} ids for {n} rows")
        bad = [p for p in ids if not isinstance(p, str)]
        if bad:
            raise c.fail(f"{f}.ids", f"holds non-string ids {_short(bad[:3])}")
        for pid, k in Counter(ids).items():
            if k > 1 or pid in owner:
                other = f"shards[{owner[pid]}].ids" if pid in owner else f"{f}.ids"
                raise c.fail(f"{f}.ids", f"repeats passage id {pid!r} (also in {other}): one entry per id")
            owner[pid] = i
        if ids_checksum(ids) != c.get(shard, "ids_sha256", str, f"{f}.ids_sha256"):
            raise c.fail(f"{f}.ids", f"does not match {f}.ids_sha256 (ids removed, added or reordered)")
        rows += n
    if count != rows:
        raise c.fail("count", f"= {count} but the shards hold {rows} rows")
    return scheme


def check_shard_header(metadata: dict | None, tensors: dict[str, tuple[list[int], str]], manifest: dict, s: int,
                       file: Path) -> None:
    """Shard ``s``'s safetensors header (metadata and tensor shapes/dtypes) against the manifest."""
    shard, scheme = manifest["shards"][s], schemes.parse(manifest["scheme"])
    meta = metadata or {}

    def fail(problem: str) -> BankFormatError:
        return BankFormatError(f"shard {paths.relative(file)} (manifest field 'shards[{s}]'): {problem}; "
                               f"{rebuild(file.parent)}")

    if meta.get("format") != FORMAT:
        raise fail(f"its header is not a {FORMAT} shard (metadata format={meta.get('format')!r})")
    for key in ("version", "scheme", "group_size", "numel", "layout_hash", "meta_hash"):
        try:
            value = json.loads(meta.get(key, "null"))
        except json.JSONDecodeError:
            value = meta.get(key)
        if value != manifest[key]:
            raise fail(f"its header says {key}={value!r}, the manifest {manifest[key]!r} (a shard of another bank "
                       "or scheme: schemes are never mixed within a bank)")
    if meta.get("ids_sha256") != shard["ids_sha256"]:
        raise fail("its id list differs from the manifest's (ids_sha256 of the header "
                   f"{str(meta.get('ids_sha256'))[:12]}… != manifest {shard['ids_sha256'][:12]}…)")
    wanted = {name: ([shard["rows"], cols], SAFETENSORS_DTYPES[dtype])
              for name, (cols, dtype) in scheme.shapes(layout_of(manifest)).items()}
    wanted[CRC] = ([shard["rows"]], "I64")
    got = {name: (list(shape), dtype) for name, (shape, dtype) in tensors.items()}
    if got != wanted:
        raise fail(f"it holds tensors {got}, expected {wanted}")


def file_digest(file: Path, tensors: dict[str, torch.Tensor]) -> tuple[str, int]:
    """sha256 and size of a just-written safetensors file: its header read back + the tensors' bytes in memory."""
    with file.open("rb") as f:
        prefix = f.read(8)
        head = f.read(int.from_bytes(prefix, "little"))
    entries = {k: v for k, v in json.loads(head).items() if k != "__metadata__"}
    size, h, offset = file.stat().st_size, hashlib.sha256(prefix), 0
    h.update(head)
    for name in sorted(entries, key=lambda k: entries[k]["data_offsets"][0]):
        t = tensors[name].contiguous()
        start, stop = entries[name]["data_offsets"]
        if start != offset or stop - start != t.numel() * t.element_size():
            raise BankError(f"{file}: tensor {name!r} at bytes {start}..{stop} of the data, expected {offset}.."
                            f"{offset + t.numel() * t.element_size()}")
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
        offset = stop
    if size != 8 + len(head) + offset:
        raise BankError(f"{file}: {size} bytes written, expected {8 + len(head) + offset} (disk full?)")
    return h.hexdigest(), size


def sha256_file(file: Path) -> str:
    h = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()
