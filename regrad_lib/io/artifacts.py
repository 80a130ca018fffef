"""Atomic writes and provenance snapshots shared by every artifact writer."""

from __future__ import annotations

import codecs
import contextlib
import errno
import glob
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from regrad_lib.io import paths

__all__ = ["atomic_dir", "atomic_path", "current_umask", "git_revision", "naming", "pid_alive", "provenance",
           "read_json", "read_text", "recover_dir", "write_json", "write_jsonl", "write_provenance", "write_text"]

_LIBRARIES = ("torch", "transformers", "peft", "safetensors", "tantivy", "elasticsearch", "regrad")


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows; a writer thread may run meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    A failure leaves ``target`` as it was (nothing half-written is ever visible). The file gets the mode a
    plain ``open`` would give it (0666 less the umask), not mkstemp's private 0600.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    with naming(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with naming(target):
            yield tmp_path
            tmp_path.chmod(0o666 & ~current_umask())
            os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def naming(target: str | os.PathLike) -> Iterator[None]:
    """An OSError inside (a full disk, a read-only folder) re-raised naming ``target``: ``OSError: [Errno 28]
    No space left on device`` alone does not say which file could not be written. Errors that already name a
    file (``FileExistsError`` of a refusal, ``FileNotFoundError`` with a path) pass unchanged."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None or str(target) in str(e):
            raise
        fix = "; free space on that disk (or set REGRAD_WORK to a larger one) and run it again: what was finished " \
              "is kept" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise type(e)(e.errno, f"{e.strerror} (writing {paths.relative(target)}){fix}", str(target)) from e


# A folder is replaced in steps that each leave one complete copy findable by recover_dir:
#   write .<name>.<pid>.<random>.tmp/  ->  rename it to .<name>.new  (complete from here on)
#   rename <name> -> .<name>.old  ->  rename .<name>.new -> <name>  ->  delete .<name>.old
def _new(target: Path) -> Path:
    return target.with_name(f".{target.name}.new")


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def pid_alive(pid: int) -> bool:
    """Whether a process of this id exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dir(target: str | os.PathLike) -> Path | None:
    """Finish or undo a folder swap of :func:`atomic_dir` that a killed process left half done.

    Keeps the newest complete copy as ``target`` (``.<name>.new``, else ``target``, else ``.<name>.old``),
    deletes the others and the temporary folders of dead processes; returns ``target`` if it exists.
    """
    target = Path(target)
    new, old = _new(target), _old(target)
    if target.parent.is_dir():
        for stray in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            pid = stray.name[len(target.name) + 2:].split(".", 1)[0]
            if stray.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(stray, ignore_errors=True)
    if new.is_dir():                       # complete: promote it
        if target.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(new, target)
    if old.exists():
        if target.exists():
            shutil.rmtree(old)             # the swap had finished; only the clean-up was cut short
        else:
            os.replace(old, target)
    return target if target.exists() else None


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``.

    Crash-safe: a process killed at any point leaves either the old or the new folder complete, and
    :func:`recover_dir` (called here first, and by readers that resume) puts the newest complete one back.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    try:
        with naming(target):
            yield tmp
        follow_umask(tmp)  # mkdtemp makes it private, safetensors writes 0600 files
        os.replace(tmp, _new(target))
        if target.exists():
            os.replace(target, _old(target))
        os.replace(_new(target), target)
        if _old(target).exists():
            shutil.rmtree(_old(target))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def follow_umask(folder: str | os.PathLike) -> None:
    """Give ``folder`` and everything in it the modes a plain ``mkdir``/``open`` would (0777/0666 less the umask):
    some writers (mkdtemp, safetensors' ``save_file``) create private 0700/0600 entries."""
    mask = current_umask()
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def write_text(target: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    with atomic_path(target, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def _dumps(obj: Any, target: str | os.PathLike, indent: int | None) -> str:
    """Strict JSON (no NaN/Infinity, which other readers reject); a non-finite number names the file."""
    try:
        return json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"{target}: refusing to write a non-finite number (NaN or inf) as JSON ({e})") from None


def write_json(target: str | os.PathLike, obj: Any, overwrite: bool = True, indent: int | None = 2) -> Path:
    return write_text(target, _dumps(obj, target, indent) + "\n", overwrite)


def write_jsonl(target: str | os.PathLike, rows: list[dict], overwrite: bool = True) -> Path:
    text = "".join(_dumps(r, target, None) + "\n" for r in rows)
    return write_text(target, text, overwrite)


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file (a leading BOM is dropped); undecodable bytes name the file, line and byte."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raw = raw[3:] if raw.startswith(codecs.BOM_UTF8) else raw     # e.start counts after the mark
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{paths.relative(path)}: line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                         f"{e.start}: {e.reason}); save the file as UTF-8") from None


def read_json(path: str | os.PathLike, unique_keys: bool = False) -> Any:
    """A JSON file; ``unique_keys``: a key given twice in one object is an error (configs: the last one would
    silently win), naming the file and the key."""
    path = Path(path)
    return parse_json(read_text(path), path, unique_keys)


def parse_json(text: str, where: str | os.PathLike, unique_keys: bool = False) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique(where) if unique_keys else None)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e


def _unique(where: str | os.PathLike):
    def pairs(items: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"{where}: key {key!r} appears twice in one JSON object ({out[key]!r}, then "
                                 f"{value!r}); give each key once")
            out[key] = value
        return out
    return pairs


def git_revision() -> str | None:
    """The checkout's commit (with '-dirty' when it has uncommitted changes), or None outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.repo_root(), capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.repo_root(),
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def provenance(config: dict | None = None) -> dict:
    """What every artifact folder records: resolved config, git revision, library versions."""
    return {"config": config or {}, "git_revision": git_revision(), "versions": library_versions()}


def write_provenance(folder: str | os.PathLike, config: dict | None = None, name: str = paths.PROVENANCE) -> Path:
    return write_json(Path(folder) / name, provenance(config))
