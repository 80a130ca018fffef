"""Training tensor files (``meta_state.safetensors``, the checkpoint, adapters) with a checksum, read and written
with errors that name the file.

Each file carries the SHA-256 of its own tensors (names, dtypes, shapes and bytes, in name order) and of its
other metadata in its safetensors metadata (``regrad_sha256``), so the check travels with the file, and a file
replaced atomically can never disagree with a separate record. Reading recomputes it: a flipped bit anywhere in
the tensors is refused naming the file; a truncated or damaged file (safetensors' bare ``SafetensorError``)
likewise.

Files written before checksums existed have none: ``required=False`` reads them (once-per-file warning);
the callers require one where the folder was written by a version that writes them (:mod:`regrad_lib.io.ownership`,
the run folder's marker), so stripping the checksum from a new run's file is refused too.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from regrad_lib.io import artifacts, paths

log = logging.getLogger(__name__)

CHECKSUM = "regrad_sha256"
_warned: set[str] = set()


class IntegrityError(ValueError):
    """A tensor file that is damaged, truncated, or whose tensors do not match its checksum; names the file."""


def digest(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """SHA-256 of the metadata (but the checksum itself) and of the tensors' names, dtypes, shapes and bytes, in
    name order (independent of the file layout)."""
    h = hashlib.sha256()
    shown = {k: v for k, v in (metadata or {}).items() if k != CHECKSUM}
    h.update(json.dumps(shown, sort_keys=True).encode() + b"\0")
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def text_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (a JSON file written with the tensors, e.g. the checkpoint's trainer state)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
         *, shown_as: str | os.PathLike | None = None, checksum: bool = True) -> Path:
    """Write ``tensors`` (with their checksum in the metadata) to ``path``, mode by the umask; a write error
    (a full disk) names ``shown_as`` (the final name when ``path`` is a temporary file)."""
    path = Path(path)
    meta = dict(metadata or {})
    if checksum:
        meta[CHECKSUM] = digest(tensors, meta)
    target = shown_as or path
    with artifacts.naming(target):
        try:
            save_file(dict(tensors), str(path), metadata=meta)
        except SafetensorError as e:   # an I/O error inside the Rust writer: ENOSPC arrives as this
            code = re.search(r"code: (\d+)", str(e))
            raise OSError(int(code.group(1)) if code else errno.EIO,
                          f"cannot write {paths.relative(target)}: {e}", str(target)) from e
        path.chmod(0o666 & ~artifacts.current_umask())     # safetensors creates 0600 files
    return path


def read_metadata(path: str | os.PathLike, *, fix: str) -> dict[str, str]:
    """The safetensors metadata of ``path`` (its header only, no tensor read); a missing, truncated or damaged file
    is refused naming it and ``fix``."""
    path = Path(path)
    where = paths.relative(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where} not found ({fix})")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise IntegrityError(f"{where} cannot be read: it is truncated or damaged ({type(e).__name__}: {e}); "
                             f"{fix}") from None


def load(path: str | os.PathLike, *, required: bool | None, fix: str,
         finite: Callable[[str], bool] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of ``path``, its checksum verified.

    ``required``: a file without a checksum is refused (False: read with a warning, written before checksums;
    None: read silently, a file from elsewhere, e.g. a PEFT adapter made by peft);
    ``fix``: what the user should do, appended to every refusal; ``finite``: tensors whose name it accepts must
    hold finite values only (NaN/inf refused naming the file and the tensor).
    """
    path = Path(path)
    where = paths.relative(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where} not found ({fix})")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise IntegrityError(f"{where} cannot be read: it is truncated or damaged ({type(e).__name__}: {e}); "
                             f"{fix}") from None
    stored = metadata.get(CHECKSUM)
    if stored is None:
        if required:
            raise IntegrityError(f"{where} has no checksum ({CHECKSUM}), though its folder was written by a version "
                                 f"of regrad that writes one: its header was changed or damaged; {fix}")
        if required is False and str(path) not in _warned:
            _warned.add(str(path))
            log.warning("%s was written before training files carried checksums: read without verifying it", where)
    elif stored != digest(tensors, metadata):
        raise IntegrityError(f"{where}: its tensors do not match their checksum: the file was damaged or edited "
                             f"after it was written; {fix}")
    if finite is not None:
        check_finite(tensors, where, finite, fix)
    return tensors, metadata


def check_finite(tensors: Mapping[str, torch.Tensor], where: str, which: Callable[[str], bool] = lambda k: True,
                 fix: str = "") -> None:
    """Refuse NaN/inf in the floating-point tensors whose name ``which`` accepts, naming ``where`` and the tensor."""
    bad = [k for k, t in sorted(tensors.items()) if which(k) and t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        first = tensors[bad[0]]
        count = int((~first.isfinite()).sum())
        raise ValueError(f"{where}: non-finite weights (NaN or inf) in {bad[0]} ({count} of {first.numel()} values)"
                         + (f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else "")
                         + (f"; {fix}" if fix else ""))
