"""Resumable meta-training checkpoints: weights, optimizer, schedule, data order and RNG, without pickle.

``outputs/<run>/checkpoint/`` holds two files, written together (a crash-safe folder swap,
:func:`artifacts.atomic_dir`; :func:`recover` finishes a swap cut short by a kill):
- ``state.safetensors``: ``phi.*`` and ``alpha.*`` (the :class:`~regrad_lib.core.learner.Learner` layout, so
  ``learner.load_state`` reads it), every optimizer state tensor as ``optim.<param index>.<name>``, and the
  torch RNG states as ``rng.torch`` / ``rng.cuda.<i>`` (uint8);
- ``trainer_state.json``: the step, data order, scheduler position, best score, the optimizer's non-tensor
  state and ``param_groups``, and Python's RNG state.

``state.safetensors`` carries the checksum of its tensors, the SHA-256 of ``trainer_state.json`` and the step
(:mod:`regrad_lib.io.tensorfile`); :func:`load` verifies all three, so a flipped bit or an edited step is refused
naming the file instead of resuming with other weights. Checkpoints of runs made before checksums existed (no
run marker, :mod:`regrad_lib.io.ownership`) are resumed unverified.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from regrad_lib.io import artifacts, ownership, paths, tensorfile

log = logging.getLogger(__name__)

FOLDER = "checkpoint"
TENSORS = "state.safetensors"
STATE = "trainer_state.json"
STATE_SHA256 = "trainer_state_sha256"       # metadata of TENSORS: the checksum of STATE, written with it
FIX = "this checkpoint cannot be resumed: restore it, or start the run again with overwrite=True"


def folder(run_dir: str | Path) -> Path:
    return Path(run_dir) / FOLDER


def exists(run_dir: str | Path) -> bool:
    ckpt = folder(run_dir)
    return (ckpt / TENSORS).is_file() and (ckpt / STATE).is_file()


def recover(run_dir: str | Path) -> bool:
    """Put back the newest complete checkpoint after a kill inside its folder swap; True if one exists."""
    artifacts.recover_dir(folder(run_dir))
    return exists(run_dir)


def optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's state dict as (tensors for safetensors, everything else for JSON)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in sd["state"].items():
        scalars[str(index)] = {}
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[str(index)][name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"state": scalars, "param_groups": groups}


def optimizer_state(tensors: dict[str, torch.Tensor], saved: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(entry) for i, entry in saved["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in saved["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def save(run_dir: str | Path, learner, optimizer: torch.optim.Optimizer, trainer_state: dict) -> Path:
    """Write ``checkpoint/`` for resuming after the step ``trainer_state["step"]`` (atomic: all or nothing)."""
    tensors = dict(learner.state_dict())
    optim_tensors, optim_json = optimizer_parts(optimizer)
    tensors.update(optim_tensors)
    tensors.update(_rng_tensors())
    state = {**trainer_state, "optimizer": optim_json, "python_rng": _python_rng(),
             "layout_hash": learner.layout_hash()}
    target = folder(run_dir)
    with artifacts.atomic_dir(target) as tmp:
        artifacts.write_json(tmp / STATE, state)
        tensorfile.save(tmp / TENSORS, tensors, {"step": str(trainer_state.get("step")),
                                                 STATE_SHA256: tensorfile.text_digest(tmp / STATE)},
                        shown_as=target / TENSORS)
    log.debug("checkpoint at step %s: %s", trainer_state.get("step"), paths.relative(target))
    return target


def load(run_dir: str | Path, learner, optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights, optimizer and RNG from ``checkpoint/``; returns the trainer state (step, order, ...)."""
    ckpt = folder(run_dir)
    if not recover(run_dir):
        raise FileNotFoundError(f"{paths.relative(ckpt)} has no {TENSORS} + {STATE}: nothing to resume; "
                                "start the run again with overwrite=True")
    required = ownership.run_marked(run_dir)
    tensors, metadata = tensorfile.load(ckpt / TENSORS, required=required, fix=FIX,
                                        finite=lambda k: k.startswith(("phi.", "alpha.")))
    state = verified_state(ckpt, metadata, required)
    if state.get("layout_hash") != learner.layout_hash():
        raise ValueError(f"{paths.relative(ckpt / STATE)}: LoRA layout {state.get('layout_hash')} differs from the "
                         f"preset's {learner.layout_hash()}; the run's peft_config changed: use overwrite=True")
    learner.load_tensors(tensors, ckpt / TENSORS)
    optimizer.load_state_dict(optimizer_state(tensors, state.pop("optimizer")))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                        key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state.pop("python_rng")
    random.setstate((version, tuple(internal), gauss))
    return state


def verified_state(ckpt: Path, metadata: dict[str, str], required: bool) -> dict:
    """``trainer_state.json``, checked against the checksum and step recorded in ``state.safetensors`` (``required``:
    they must be there; checkpoints written before checksums have none)."""
    where = paths.relative(ckpt / STATE)
    if required and STATE_SHA256 not in metadata:
        raise tensorfile.IntegrityError(f"{paths.relative(ckpt / TENSORS)} records no checksum of {STATE}; {FIX}")
    if STATE_SHA256 in metadata and metadata[STATE_SHA256] != tensorfile.text_digest(ckpt / STATE):
        raise tensorfile.IntegrityError(f"{where} does not match the checksum recorded in {TENSORS}: it was "
                                        f"damaged or edited after the checkpoint was written; {FIX}")
    try:
        state = artifacts.read_json(ckpt / STATE)
    except ValueError as e:
        raise tensorfile.IntegrityError(f"{e}; {FIX}") from None
    if "step" in metadata and metadata["step"] != str(state.get("step")):
        raise tensorfile.IntegrityError(f"{where}: step {state.get('step')!r}, but {TENSORS} was written after step "
                                        f"{metadata['step']}; {FIX}")
    return state
