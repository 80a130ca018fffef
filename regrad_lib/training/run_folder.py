"""A training run's folder ``outputs/<run>/`` as 03_train keeps it: what was asked (``train_request.json``), the
summary that marks it finished, what a restart does with the folder (keep a finished run, resume an unfinished one
with the same settings, refuse other settings), and which validation row's weights are kept (checkpoint
selection). The training log and the learned step sizes are read in :mod:`regrad_lib.io.run_state`, where 06_analyze
reads them too."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from regrad_lib import config
from regrad_lib.io import artifacts, checkpoint, ownership, paths

log = logging.getLogger(__name__)

# Train args that may change between an interrupted run and its resumption (they do not change the math).
RESUMABLE_CHANGES = {"eval_steps", "save_steps", "keep_steps", "logging_steps", "on_nonfinite"}


def is_better(row: dict, best: dict | None, metric: str) -> bool:
    """F1 higher (ties broken by lower loss) or loss lower; a missing F1 falls back to the loss."""
    def key(r):
        loss = r["eval_loss"] if r["eval_loss"] is not None else math.inf
        return (-r["eval_f1"], loss) if metric == "f1" and r["eval_f1"] is not None else (loss,)
    return best is None or key(row) < key(best)


# preset sections meta-training never reads: changing them neither refuses a resume nor retrains a finished run
NOT_TRAINED = ("name", "cpt", "baselines")


def request_of(preset: config.Preset, train_datasets: Sequence[str], train_file: str) -> dict:
    return {"train_datasets": list(train_datasets), "train_file": train_file,
            "preset": {k: v for k, v in preset.to_dict().items() if k not in NOT_TRAINED}}


def changed_settings(folder: Path, request: dict) -> list[str]:
    """Settings of ``request`` that differ from the run saved in ``folder`` (generation and logging may change)."""
    saved = artifacts.read_json(folder / paths.TRAIN_REQUEST)
    diffs = [k for k in ("train_datasets", "train_file") if saved.get(k) != request[k]]
    for section, values in request["preset"].items():
        old = saved["preset"].get(section, {})
        diffs += [f"{section}.{k}" for k, v in values.items() if old.get(k) != v
                  and not (section == "generation" or (section == "train" and k in RESUMABLE_CHANGES))]
    return diffs


def check_resumable(folder: Path, request: dict) -> None:
    diffs = changed_settings(folder, request)
    if diffs:
        raise ValueError(f"{paths.relative(folder)} holds an unfinished run with other settings ({', '.join(diffs)}); "
                         "use the same settings to resume it, overwrite=True to start again, or another run name")


def kept_summary(folder: Path, request: dict) -> dict | None:
    """The saved summary of a finished run with these settings (kept, as a re-run pipeline expects), else None."""
    if not (folder / paths.TRAIN_SUMMARY).exists():
        return None
    diffs = changed_settings(folder, request) if (folder / paths.TRAIN_REQUEST).exists() else ["(no saved request)"]
    if diffs:
        raise FileExistsError(f"{paths.relative(folder)} is a finished training run with other settings "
                              f"({', '.join(diffs)}); pass overwrite=True to train it again, or choose another run "
                              "name")
    log.info("%s is a finished run with these settings: kept (overwrite=True trains it again)", paths.relative(folder))
    return {**artifacts.read_json(folder / paths.TRAIN_SUMMARY), "status": "kept"}


def prepare(folder: Path, request: dict, overwrite: bool, resume: bool) -> bool:
    """Make ``folder`` ready; True when an unfinished run will be resumed from its checkpoint."""
    if (folder / paths.TRAIN_SUMMARY).exists() and not overwrite:
        raise FileExistsError(f"{paths.relative(folder)} is a finished training run ({paths.TRAIN_SUMMARY}); pass "
                              "overwrite=True to train it again, or choose another run name")
    if folder.exists() and any(folder.iterdir()):
        if overwrite:
            log.info("overwrite=True: removing %s", paths.relative(folder))
            ownership.remove_run(folder)
        elif not checkpoint.recover(folder):   # interrupted before its first complete checkpoint
            log.info("%s holds no complete checkpoint: starting the run again", paths.relative(folder))
            ownership.remove_run(folder)
        elif resume and (folder / paths.TRAIN_REQUEST).exists():
            check_resumable(folder, request)
            return True
        else:
            raise FileExistsError(f"{paths.relative(folder)} holds an unfinished run: resume=True continues it, "
                                  "overwrite=True starts again")
    ownership.mark_run(folder)
    return False


def summary_of(run, preset, train_datasets, train_file, data, state, rows, wall) -> dict:
    """``train_summary.json`` of a finished run: what was trained on, how far (``state``: the loop's
    :class:`~regrad_lib.training.train.LoopState`), the first and last losses and validations of the log ``rows``,
    the best validation and the speed over ``wall`` seconds."""
    train_rows = [r for r in rows if r["kind"] == "train" and r["loss"] is not None]
    evals = [r for r in rows if r["kind"] == "eval"]
    return {"run": run, "preset": preset.name, "train_datasets": list(train_datasets), "train_file": train_file,
            "steps": state.step, "tasks": state.tasks_seen, "train_tasks": len(data.train),
            "validation_tasks": len(data.validation),
            "first_loss": train_rows[0]["loss"] if train_rows else None,
            "last_loss": train_rows[-1]["loss"] if train_rows else None,
            "first_eval": evals[0] if evals else None, "last_eval": evals[-1] if evals else None,
            "best_eval": state.best, "metric_for_best_model": preset.train.metric_for_best_model,
            "skipped_nonfinite": state.skipped_nonfinite, "truncated_prompts": state.truncated_prompts,
            "wall_s": wall,
            "tasks_per_s": round(state.tasks_seen / wall, 4) if wall else None}
