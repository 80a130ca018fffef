"""A kept step of a training run as a run of its own: the points of a learning curve, each evaluated by 04_encode and
05_evaluate like any finished run.

03_train keeps the weights after the steps of ``keep_steps`` (``outputs/<run>/steps/<step>/``). :func:`point_run`
makes ``outputs/<run>-<step>/`` from one of them: the run's configs (unchanged: the schedule is the whole run's, so
the weights are those of step ``step`` of that schedule), its request, the kept weights as
``meta_state.safetensors``, the log up to that step and a summary that says what it is (``kept_step_of``, ``steps``
and ``selection = "last"``: the weights of that step, not the best on the validation slice). The fine-tuned baselines
of such a run train as many steps with the same rule (:mod:`regrad_lib.training.sft`).
"""

from __future__ import annotations

import shutil

from regrad_lib import config
from regrad_lib.io import artifacts, ownership, paths, run_state, tensorfile
from regrad_lib.io.run_state import read_state
from regrad_lib.training.train_data import step_batches, training_data


def point_name(run: str, step: int) -> str:
    """The name of ``run``'s kept step ``step`` as a run: ``<run>-<step, 3 digits or more>``."""
    return f"{run}-{int(step):03d}"


def kept_steps(run: str) -> list[int]:
    """The steps of ``run`` whose weights 03_train kept (finished or not)."""
    folder = paths.kept_step_state(run, 1).parent.parent
    return sorted(int(p.name) for p in folder.iterdir() if (p / paths.META_STATE).is_file()) if folder.is_dir() else []


def point_run(run: str, step: int, *, baselines: dict | None = None, overwrite: bool = False) -> str:
    """``outputs/<run>-<step>/`` from ``run``'s kept step ``step`` (see the module docstring); kept when it was
    made from the same weights. ``baselines``: the ``baseline_config.json`` of the point (e.g. the learning rate the
    fine-tuned baselines use), else the run's."""
    source = paths.output_dir(run)
    state = paths.kept_step_state(run, step)
    if not state.is_file():
        raise FileNotFoundError(f"{paths.relative(state)} not found: {run} kept the steps {kept_steps(run)} "
                                f"(train_args keep_steps), not {step}")
    read_state(state)                                   # checksum and finite weights, before anything is written
    name = point_name(run, step)
    target = paths.output_dir(name)
    digest = tensorfile.text_digest(state)
    summary_file = target / paths.TRAIN_SUMMARY
    if summary_file.is_file():
        saved = artifacts.read_json(summary_file)
        if saved.get("kept_step_of") == run and saved.get("steps") == step and saved.get("weights_sha256") == digest \
                and not overwrite:
            return name
        if not overwrite:
            raise FileExistsError(f"{paths.relative(target)} holds another run than step {step} of {run}: pass "
                                  "overwrite=True to make it again")
    if target.exists():
        ownership.remove_run(target)
    preset = config.load_preset(source)
    if baselines is not None:
        preset = preset.replace(baselines=baselines)
    ownership.mark_run(target)
    preset.save(target)
    shutil.copyfile(source / paths.TRAIN_REQUEST, target / paths.TRAIN_REQUEST)
    shutil.copyfile(state, target / paths.META_STATE)
    rows = [r for r in run_state.read_training_log(run) if r["step"] <= step]
    artifacts.write_jsonl(target / paths.TRAINING_LOG, rows)
    artifacts.write_provenance(target, {"kept_step_of": run, "step": step, "preset": preset.to_dict()})
    request = artifacts.read_json(source / paths.TRAIN_REQUEST)
    data = training_data(request["train_datasets"], request["train_file"], preset.train)
    tasks = sum(len(b) for b in step_batches(len(data.train), preset.train.seed, preset.train.meta_batch_size, step))
    artifacts.write_json(summary_file, {
        "run": name, "kept_step_of": run, "steps": step, "selection": "last", "weights_sha256": digest,
        "preset": preset.name, "train_datasets": request["train_datasets"], "train_file": request["train_file"],
        "tasks": tasks, "log_rows": len(rows)})   # last: the point is finished
    return name

