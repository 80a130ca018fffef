"""Which folders the project wrote, and the one way it deletes a whole folder.

regrad deletes a folder only when (a) it lies inside the artifact folder it belongs to (``outputs/`` for a run,
``indexes/`` for an index, ...), (b) it is a real folder, not a symbolic link, and (c) the project wrote it:

- a training run folder gets the marker ``regrad_run.json`` when 03_train creates it; a run folder made before
  markers existed is recognised by 03_train's own request file ``train_request.json``, written right after the
  folder was made (such folders are never given a marker, so the checksum rule below stays true);
- an adapter folder holds ``regrad_adapter.json`` (``adapters.INFO_FILE``), which the project always writes;
- an index folder holds its manifest or its build state.

Anything else is refused, naming the folder and what is missing: the user moves it away, never the project.
The run marker also says that the run's training files carry checksums (:mod:`regrad_lib.io.tensorfile`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from regrad_lib.io import artifacts, paths

log = logging.getLogger(__name__)

RUN_MARKER = "regrad_run.json"
LEGACY_RUN_FILES = (paths.TRAIN_REQUEST,)     # 03_train's first own file before markers existed


class NotOursError(FileExistsError):
    """A folder regrad would replace but did not write (or cannot safely delete); names it and the fix."""


def mark_run(folder: str | os.PathLike) -> Path:
    """Create the run folder (if needed) and its marker: this run's files were written by regrad, with checksums."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return artifacts.write_json(folder / RUN_MARKER, {"written_by": "regrad 03_train", "kind": "training run",
                                                      "checksums": "regrad_sha256 in each safetensors file"})


def run_marked(folder: str | os.PathLike) -> bool:
    """True when the run folder carries the marker (its training files must carry checksums)."""
    return (Path(folder) / RUN_MARKER).is_file()


def is_run(folder: str | os.PathLike) -> bool:
    """True for a run folder written by 03_train: the marker, or (made before markers) its request file."""
    return any((Path(folder) / name).is_file() for name in (RUN_MARKER, *LEGACY_RUN_FILES))


def _shown(folder: Path) -> str:
    """The folder as users write it, without following a link at its end (``paths.relative`` resolves)."""
    return str(Path(paths.relative(folder.parent)) / folder.name)


def remove(folder: str | os.PathLike, root: str | os.PathLike, what: str, marks: Sequence[str], fix: str) -> None:
    """Delete ``folder`` (a ``what``, e.g. "training run") when it is safe: inside ``root``, a real folder, and
    holding one of the files ``marks``; otherwise :class:`NotOursError` naming it and ``fix``."""
    folder, root = Path(folder), Path(root)
    shown = _shown(folder)
    if folder.is_symlink():
        raise NotOursError(f"{shown} is a symbolic link (to {os.readlink(folder)}): regrad does not delete through "
                           f"links; remove the link yourself or {fix}")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise NotOursError(f"{shown} is a file, not a {what} folder: move it away or {fix}")
    inside = folder.resolve()
    if inside == root.resolve() or root.resolve() not in inside.parents:
        raise NotOursError(f"{shown} is not inside {paths.relative(root)}: regrad deletes only {what} folders "
                           f"there; {fix}")
    if not any((folder / name).is_file() for name in marks) and any(folder.iterdir()):
        raise NotOursError(f"{shown} was not written by regrad (it holds no {' or '.join(marks)}): it is not "
                           f"deleted; move it away or {fix}")
    log.info("removing %s", shown)
    shutil.rmtree(folder)


def remove_run(folder: str | os.PathLike) -> None:
    """Delete a training run folder ``outputs/<run>/`` written by 03_train (see :func:`remove`)."""
    remove(folder, Path(folder).parent, "training run", (RUN_MARKER, *LEGACY_RUN_FILES),
           "choose another run name")


def check_replaceable(folder: str | os.PathLike, marks: Sequence[str], what: str, fix: str) -> None:
    """Refuse to replace ``folder`` unless it is absent, empty, or a real folder holding one of ``marks``."""
    folder = Path(folder)
    shown = _shown(folder)
    if folder.is_symlink():
        raise NotOursError(f"{shown} is a symbolic link (to {os.readlink(folder)}): regrad does not replace it; "
                           f"{fix}")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise NotOursError(f"{shown} is a file, not a {what} folder: {fix}")
    if any(folder.iterdir()) and not any((folder / name).is_file() for name in marks):
        raise NotOursError(f"{shown} exists and was not written by regrad (it holds no {' or '.join(marks)}): it "
                           f"is not replaced; {fix}")
