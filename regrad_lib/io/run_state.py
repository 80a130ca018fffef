"""Where a training run stands on disk and the files 03_train writes as it goes: its meta weights file, whether
03_train finished it, the refusal of an unfinished run, the training log (its one writer and one reader) and the
learned step sizes (a run's files only; no model is loaded here, so training, adapters, results, the learner and
06_analyze's reporting all ask here).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from regrad_lib.io import artifacts, ownership, paths

if TYPE_CHECKING:
    import torch

__all__ = ["UnfinishedRunError", "append_training_log", "read_alpha", "read_state", "read_training_log", "run_finished",
           "trained_revision", "trained_state", "unfinished_message"]

log = logging.getLogger(__name__)


class UnfinishedRunError(RuntimeError):
    """A training run without its summary (interrupted or failed) was asked for without ``allow_unfinished``."""


def run_finished(run: str) -> bool:
    """True when 03_train finished ``outputs/<run>/`` (its ``train_summary.json`` exists)."""
    return paths.train_summary_file(run).is_file()


def unfinished_message(run: str) -> str:
    from regrad_lib.io import (
        checkpoint,  # torch: loaded only when a run's checkpoint is asked about
    )

    folder = paths.output_dir(run)
    state = checkpoint.folder(folder) / checkpoint.STATE
    try:
        saved = artifacts.read_json(state)
        where = f"; its last checkpoint is after step {saved['step']} of {saved['total_steps']}"
    except (OSError, ValueError, KeyError, TypeError):
        where = "; it has no checkpoint"
    return (f"{paths.relative(folder)} is an unfinished training run: it has no {paths.TRAIN_SUMMARY} (training was "
            f"interrupted or stopped by an error such as a non-finite loss){where}. Resume it by running 03_train "
            f"again with the same settings (train.train({run!r}, ...) continues from its checkpoint), or pass "
            f"allow_unfinished=True to use its current {paths.META_STATE} anyway (recorded in the outputs)")


def is_weight(name: str) -> bool:
    """The meta weights of a state file (``phi.*`` LoRA weights, ``alpha.*`` step sizes), which must be finite."""
    return name.startswith(("phi.", "alpha."))


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a run's ``meta_state.safetensors``, checksum verified (required in a run folder with the
    marker) and weights finite; a damaged file is refused naming it."""
    from regrad_lib.io import (
        tensorfile,  # torch: loaded only when tensors are read, not for the log or a table
    )

    path = Path(path)
    tensors, _ = tensorfile.load(path, required=ownership.run_marked(path.parent), finite=is_weight,
                                 fix=f"train the run again (03_train with overwrite=True) or restore {path.name}")
    return tensors


def trained_state(run: str, allow_unfinished: bool = False) -> Path:
    """``outputs/<run>/meta_state.safetensors`` of a finished run (else an error naming 03_train and the fix)."""
    state = paths.meta_state_file(run)
    if not state.exists():
        raise FileNotFoundError(f"{paths.relative(state)} not found: it is written by 03_train (run={run!r})")
    if not allow_unfinished and not run_finished(run):
        raise UnfinishedRunError(unfinished_message(run))
    return state


def trained_revision(run: str) -> str | None:
    """The git revision 03_train recorded for ``run`` in its provenance (the code that made it), if any."""
    file = paths.provenance_file(paths.output_dir(run))
    return artifacts.read_json(file).get("git_revision") if file.is_file() else None


# --- the training log: one row per logged optimizer step ("train") or validation pass ("eval") -------------------

def append_training_log(path: Path, row: dict) -> None:
    """Append one row to a run's ``training_log.jsonl`` (a line at a time, so a kill leaves every earlier row)."""
    with artifacts.naming(path), path.open("a", encoding="utf-8") as f:   # a full disk names the log
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_training_log(run: str) -> list[dict]:
    """The rows of ``outputs/<run>/training_log.jsonl``, each with ``kind`` and ``step``.

    The log is appended a line at a time, so a kill or a full disk can cut its last line short: that line is
    dropped with a warning (every row before it is whole). A damaged line before the last, or a row without
    ``kind`` or ``step``, is refused naming the file and the line.
    """
    path = paths.training_log_file(run)
    if not path.is_file():
        raise FileNotFoundError(f"{paths.relative(path)} not found: it is written by 03_train (run={run!r})")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if number < len(lines):
                raise ValueError(f"{paths.relative(path)}: line {number} is not valid JSON ({e.msg})") from None
            log.warning("%s: dropped its last line, cut short: %r", paths.relative(path), line[:80])
            continue
        if not isinstance(row, dict) or "kind" not in row or "step" not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{paths.relative(path)}: line {number} lacks 'kind' or 'step' (keys {keys})")
        rows.append(row)
    return rows


# --- the learned step sizes --------------------------------------------------------------------------------------

def read_alpha(run: str) -> dict[str, float]:
    """The selected step sizes of ``outputs/<run>/meta_state.safetensors`` per LoRA tensor (``alpha.*``, a tensor's
    per-element values averaged), in natural order of the tensor names (layer 2 before layer 10)."""
    path = paths.meta_state_file(run)
    if not path.is_file():
        raise FileNotFoundError(f"{paths.relative(path)} not found: it is written by 03_train (run={run!r})")
    out = {key[len("alpha."):].replace("__", "."): float(value.float().mean())
           for key, value in read_state(path).items() if key.startswith("alpha.")}
    if not out:
        raise ValueError(f"{paths.relative(path)} holds no 'alpha.*' tensors; is it a meta_state file of 03_train?")
    return {name: out[name] for name in sorted(out, key=_natural)}


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
