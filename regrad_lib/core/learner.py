"""The meta-learner: base model + LoRA fast weights ``phi`` + step sizes ``alpha``, saved as safetensors.

``Learner.create(preset)`` starts a fresh one (03_train); ``Learner.from_run(run)`` reopens a trained one from
``outputs/<run>/`` (04_encode, 05_evaluate): a run without ``train_summary.json`` (interrupted, or stopped by an
error) is refused unless ``allow_unfinished=True``, and the learner remembers which it was (``run_finished``).
Base weights are bf16 on a GPU when the preset trains in bf16 and fp32 otherwise; the same policy holds for
training, the bank and inference (no silent switch to fp16).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from regrad_lib import config
from regrad_lib.core import lora, modeling
from regrad_lib.core.regrad import StepSizes, Weights
from regrad_lib.io import artifacts, distributed, paths, tensorfile
from regrad_lib.io.run_state import (
    UnfinishedRunError,
    read_state,
    run_finished,
    trained_state,
    unfinished_message,
)

log = logging.getLogger(__name__)


def model_dtype(preset: config.Preset, device: str | torch.device) -> torch.dtype:
    """bf16 base weights on an accelerator when the preset trains in bf16; else fp32."""
    if torch.device(device).type == "cpu" or preset.train.mixed_precision == "no":
        return torch.float32
    return torch.bfloat16


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matmuls (x86 AVX512-BF16 or AMX); elsewhere torch emulates bf16, far slower
    than fp32 (BENCHMARKS.md, "Precision on a CPU")."""
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_avx512_bf16_supported",
                                                                      "_is_amx_tile_supported"))


@dataclass
class Learner:
    model: torch.nn.Module
    tokenizer: object
    preset: config.Preset
    phi: Weights
    alpha: StepSizes
    device: torch.device
    run: str | None = None               # the outputs/<run>/ it was loaded from (None: made in memory)
    run_finished: bool | None = None     # whether that run had finished (None: not loaded from a run)

    @classmethod
    def create(cls, preset: config.Preset, device: str = "cpu", seed: int | None = None,
               warm_start: bool = True) -> Learner:
        """A fresh learner; ``phi`` from the PEFT adapter ``learner.init_adapter`` when set (and ``warm_start``)."""
        device = distributed.local_device(device)     # cuda -> cuda:<local rank> in a job of several processes
        model, tokenizer = modeling.load(preset.learner.model_name_or_path, device=device,
                                         dtype=model_dtype(preset, device))
        lora.attach(model, preset.peft, seed=preset.train.seed if seed is None else seed)
        if warm_start and preset.learner.init_adapter is not None:
            from regrad_lib.core import adapters
            adapters.load_into(model, preset.learner.init_adapter, preset.peft, preset.learner.model_name_or_path)
        phi = lora.parameters(model)
        alpha = StepSizes(phi, preset.learner.alpha_mode, preset.learner.init_alpha).to(device)
        return cls(model, tokenizer, preset, phi, alpha, torch.device(device))

    @classmethod
    def from_run(cls, run: str, device: str = "cpu", allow_unfinished: bool = False) -> Learner:
        """The trained learner of ``outputs/<run>/`` (its four configs and ``meta_state.safetensors``).

        An unfinished run raises :class:`UnfinishedRunError` unless ``allow_unfinished=True``.
        """
        state = trained_state(run, allow_unfinished)
        learner = cls.create(config.load_preset(state.parent), device, warm_start=False)  # phi comes from the run
        learner.load_state(state)
        learner.run, learner.run_finished = run, run_finished(run)
        if not learner.run_finished:
            log.warning("using the unfinished training run %s (allow_unfinished=True)", paths.relative(state.parent))
        return learner

    def require_finished(self, allow_unfinished: bool = False) -> None:
        """Refuse a learner of an unfinished run unless ``allow_unfinished`` (one made in memory passes)."""
        if self.run_finished is False and not allow_unfinished:
            raise UnfinishedRunError(unfinished_message(self.run))

    # --- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"phi.{n}": p.detach().float().contiguous().cpu() for n, p in self.phi.items()}
        out.update({f"alpha.{k}": v.detach().float().contiguous().cpu() for k, v in self.alpha.values.items()})
        return out

    def save(self, path: str | Path) -> Path:
        """``meta_state.safetensors`` (with its checksum); non-finite weights are refused, never written."""
        tensors = self.state_dict()
        tensorfile.check_finite(tensors, paths.relative(path), fix="the meta weights diverged: lower the learning "
                                "rate, or check the warm-start adapter")
        with artifacts.atomic_path(path) as tmp:
            tensorfile.save(tmp, tensors, {"alpha_mode": self.alpha.mode, "layout_hash": self.layout_hash()},
                            shown_as=path)
        return Path(path)

    def load_state(self, path: str | Path) -> None:
        """Load a run's ``meta_state.safetensors`` (checked: :func:`read_state`)."""
        self.load_tensors(read_state(path), path)

    def load_tensors(self, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
        """phi and alpha from a state file's tensors (``path`` names it in errors)."""
        try:
            lora.load_into(self.model, {k[4:]: v for k, v in tensors.items() if k.startswith("phi.")})
        except ValueError as e:      # the run's peft_config.json no longer describes the saved LoRA
            raise ValueError(f"{paths.relative(path)}: {e}: the LoRA layout of the preset (peft_config.json: r "
                             f"{self.preset.peft.r}, target_modules {self.preset.peft.target_modules}) is not the "
                             "one this file was written with; restore the run's peft_config.json, or train again "
                             "(overwrite = True)") from None
        alpha = {k[6:]: v for k, v in tensors.items() if k.startswith("alpha.")}
        if set(alpha) != set(self.alpha.values):
            raise ValueError(f"{path}: step sizes {sorted(alpha)[:3]} do not match alpha_mode "
                             f"{self.alpha.mode!r} of the run's learner_config.json")
        with torch.no_grad():
            for k, v in alpha.items():
                self.alpha.values[k].copy_(v)

    def layout_hash(self) -> str:
        return lora.layout_hash(self.phi)

    def meta_hash(self) -> str:
        """A hash of the meta weights (phi and alpha) the bank's gradients depend on."""
        h = hashlib.sha256()
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def precision(self) -> str:
        """The autocast precision of gradient work (meta-training, the bank, online gradients): the preset's
        ``mixed_precision``; on a CPU only where it computes bf16 natively (AVX512-BF16 or AMX), else fp32."""
        wanted = self.preset.train.mixed_precision
        return wanted if self.device.type != "cpu" or wanted == "no" or cpu_has_bf16() else "no"

    @property
    def eval_precision(self) -> str:
        """The autocast precision of evaluation's forward passes (decoding, answer NLL): as :attr:`precision` on an
        accelerator, fp32 on a CPU, where bf16 moves a question's answer NLL by 0.034 nats (SD; BENCHMARKS.md,
        "Precision on a CPU") — noise in every paired difference."""
        return self.precision if self.device.type != "cpu" else "no"

    def autocast(self):
        """Autocast for evaluation's forward-only passes (:attr:`eval_precision`); gradient code passes
        :attr:`precision` to :mod:`regrad_lib.core.regrad` itself (autocast around forwards only)."""
        from regrad_lib.core.regrad import autocast
        return autocast(self.device, self.eval_precision)
