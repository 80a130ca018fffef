"""Where a training run stands on disk: its meta weights file, whether 03_train finished it, and the refusal of an
unfinished run (a run's files only; no model is loaded here, so adapters, results and the learner can all ask)."""

from __future__ import annotations

from pathlib import Path

import torch

from regrad_lib.io import artifacts, checkpoint, ownership, paths, tensorfile

META_STATE = "meta_state.safetensors"
TRAIN_SUMMARY = "train_summary.json"   # written last by 03_train: the run is finished


class UnfinishedRunError(RuntimeError):
    """A training run without its summary (interrupted or failed) was asked for without ``allow_unfinished``."""


def run_finished(run: str) -> bool:
    """True when 03_train finished ``outputs/<run>/`` (its ``train_summary.json`` exists)."""
    return (paths.output_dir(run) / TRAIN_SUMMARY).is_file()


def unfinished_message(run: str) -> str:
    folder = paths.output_dir(run)
    state = checkpoint.folder(folder) / checkpoint.STATE
    try:
        saved = artifacts.read_json(state)
        where = f"; its last checkpoint is after step {saved['step']} of {saved['total_steps']}"
    except (OSError, ValueError, KeyError, TypeError):
        where = "; it has no checkpoint"
    return (f"{paths.relative(folder)} is an unfinished training run: it has no {TRAIN_SUMMARY} (training was "
            f"interrupted or stopped by an error such as a non-finite loss){where}. Resume it by running 03_train "
            f"again with the same settings (train.train({run!r}, ...) continues from its checkpoint), or pass "
            f"allow_unfinished=True to use its current {META_STATE} anyway (recorded in the outputs)")


def is_weight(name: str) -> bool:
    """The meta weights of a state file (``phi.*`` LoRA weights, ``alpha.*`` step sizes), which must be finite."""
    return name.startswith(("phi.", "alpha."))


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a run's ``meta_state.safetensors``, checksum verified (required in a run folder with the
    marker) and weights finite; a damaged file is refused naming it."""
    path = Path(path)
    tensors, _ = tensorfile.load(path, required=ownership.run_marked(path.parent), finite=is_weight,
                                 fix=f"train the run again (03_train with overwrite=True) or restore {path.name}")
    return tensors


def trained_state(run: str, allow_unfinished: bool = False) -> Path:
    """``outputs/<run>/meta_state.safetensors`` of a finished run (else an error naming 03_train and the fix)."""
    state = paths.output_dir(run) / META_STATE
    if not state.exists():
        raise FileNotFoundError(f"{paths.relative(state)} not found: it is written by 03_train (run={run!r})")
    if not allow_unfinished and not run_finished(run):
        raise UnfinishedRunError(unfinished_message(run))
    return state


def trained_revision(run: str) -> str | None:
    """The git revision 03_train recorded for ``run`` in its provenance (the code that made it), if any."""
    file = paths.output_dir(run) / "provenance.json"
    return artifacts.read_json(file).get("git_revision") if file.is_file() else None
