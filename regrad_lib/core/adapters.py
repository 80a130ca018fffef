"""PEFT LoRA adapters in and out: the meta-trained ``phi`` and one question's ``phi'_q`` as standard adapters, and
a warm start of ``phi`` from one.

A PEFT LoRA adapter is a folder with ``adapter_config.json`` (peft's ``LoraConfig``) and
``adapter_model.safetensors`` keyed ``base_model.model.<module path>.lora_A.weight`` (``[r, in]``) and
``….lora_B.weight`` (``[out, r]``). This project's LoRA (:mod:`regrad_lib.core.lora`) holds the same two tensors per
module as ``<module path>.lora_A`` / ``.lora_B`` with the same scaling ``lora_alpha / r`` and peft's rule for
which modules are targeted, so the conversion is a renaming; ``PeftModel.from_pretrained(base, folder)`` then
computes the same logits. The step sizes ``alpha`` and the run's configs have no PEFT field: they stay in
``outputs/<run>/`` beside ``outputs/<run>/adapter/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from regrad_lib import config
from regrad_lib.io import artifacts, ownership, params, paths, runlock, tensorfile
from regrad_lib.io.run_state import read_state, trained_state

__all__ = ["CONFIG_FILE", "INFO_FILE", "PREFIX", "WEIGHTS_FILE", "describe", "export_run", "load_into", "lora_config",
           "peft_key", "read", "same_model", "save"]

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
INFO_FILE = "regrad_adapter.json"        # what the adapter is (run, question, gamma); peft ignores it; always
                                         # written: it marks a folder regrad may replace (regrad_lib.io.ownership)
PREFIX = "base_model.model."
Weights = dict[str, torch.Tensor]


def lora_config(peft: config.PeftConfig, base_model: str | None = None):
    """peft's ``LoraConfig`` for the preset's LoRA layout (inference mode: an adapter to load, not to train)."""
    from peft import LoraConfig

    return LoraConfig(r=peft.r, lora_alpha=peft.lora_alpha, lora_dropout=peft.lora_dropout,
                      target_modules=peft.target_modules, layers_to_transform=peft.layers_to_transform,
                      layers_pattern=peft.layers_pattern, bias=peft.bias, task_type=peft.task_type,
                      init_lora_weights=peft.init_lora_weights, base_model_name_or_path=base_model,
                      inference_mode=True)


def peft_key(name: str) -> str:
    """``model.layers.8.mlp.gate_proj.lora_A`` -> ``base_model.model.model.layers.8.mlp.gate_proj.lora_A.weight``."""
    return f"{PREFIX}{name}.weight"


def regrad_name(key: str, where: str = "adapter") -> str:
    """The inverse of :func:`peft_key`; anything but a LoRA A/B weight is refused, naming the key."""
    if not (key.startswith(PREFIX) and key.endswith((".lora_A.weight", ".lora_B.weight"))):
        raise ValueError(f"{where}: tensor {key!r} is not a LoRA weight (expected {PREFIX}<module>.lora_A.weight "
                         "or .lora_B.weight); regrad loads plain LoRA adapters only")
    return key[len(PREFIX):-len(".weight")]


def save(folder: str | Path, weights: Weights, peft: config.PeftConfig, *, base_model: str | None = None,
         info: dict | None = None) -> Path:
    """Write ``weights`` (2-D LoRA tensors, this project's names) as a PEFT adapter folder, atomically.

    An existing ``folder`` is replaced only when regrad wrote it (it holds ``regrad_adapter.json``) or it is
    empty; non-finite weights are refused (a NaN adapter would load silently elsewhere)."""
    folder = paths.resolve(folder)
    ownership.check_replaceable(folder, [INFO_FILE], "PEFT adapter",
                                "choose another folder (adapters are written only into new folders or ones "
                                "regrad wrote)")
    tensors = {}
    for name, t in weights.items():
        if t.dim() != 2:
            raise ValueError(f"LoRA tensor {name} has shape {tuple(t.shape)}: one adapter holds one set of 2-D "
                             "weights (take one row of per-question weights)")
        tensors[peft_key(name)] = t.detach().float().contiguous().cpu()
    tensorfile.check_finite(tensors, f"adapter {paths.relative(folder)}", fix="not written: the weights are "
                            "unusable (check the run's meta_state and the gradients)")
    with artifacts.atomic_dir(folder) as tmp:
        tensorfile.save(tmp / WEIGHTS_FILE, tensors, {"format": "pt"}, shown_as=folder / WEIGHTS_FILE)
        lora_config(peft, base_model).save_pretrained(str(tmp))
        artifacts.write_json(tmp / INFO_FILE, artifacts.provenance(info or {}))
    log.info("wrote PEFT adapter %s (%d tensors)", paths.relative(folder), len(tensors))
    return folder


def read(folder: str | Path):
    """(peft ``LoraConfig``, weights under this project's names) of a PEFT LoRA adapter folder."""
    from peft import LoraConfig, PeftConfig

    folder = paths.resolve(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: a PEFT LoRA adapter folder holds {CONFIG_FILE} and "
                                    f"{WEIGHTS_FILE} (peft's save_pretrained, or adapters.export_run)")
    config_file = paths.relative(folder / CONFIG_FILE)
    artifacts.read_json(folder / CONFIG_FILE, unique_keys=True)    # broken JSON or a key given twice: named here
    try:
        cfg = PeftConfig.from_pretrained(str(folder))   # peft's own reader and checks
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{config_file}: peft cannot read it ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, LoraConfig):
        raise ValueError(f"{config_file}: peft_type {cfg.peft_type} is not a LoRA adapter")
    where = paths.relative(folder / WEIGHTS_FILE)
    tensors, _ = tensorfile.load(folder / WEIGHTS_FILE, required=None, finite=lambda k: True,
                                 fix="give a complete adapter with finite weights (export it again)")
    return cfg, {regrad_name(k, where): v for k, v in tensors.items()}


def describe(folder: str | Path) -> dict:
    """What a notebook shows of an adapter folder: its files, rank, scaling, targets and tensor count."""
    cfg, weights = read(folder)
    folder = paths.resolve(folder)
    targets = cfg.target_modules if isinstance(cfg.target_modules, str) else sorted(cfg.target_modules)
    return {"adapter": paths.relative(folder), "files": sorted(p.name for p in folder.iterdir()), "r": cfg.r,
            "lora_alpha": cfg.lora_alpha, "target_modules": targets,
            "layers_to_transform": cfg.layers_to_transform, "base_model": cfg.base_model_name_or_path,
            "tensors": len(weights), "values": sum(t.numel() for t in weights.values())}


# --- out ------------------------------------------------------------------------------------------------------

@params.typed
@runlock.writer("adapter export")
def export_run(run: str, allow_unfinished: bool = False) -> Path:
    """``outputs/<run>/adapter/``: the run's selected ``phi`` (``meta_state.safetensors``) as a PEFT adapter.

    03_train writes it at the end of a run; call this for runs trained before it did. No model is loaded. An
    unfinished run is refused unless ``allow_unfinished=True``.
    """
    state = trained_state(run, allow_unfinished)
    preset = config.load_preset(state.parent)
    phi = {k[len("phi."):]: v for k, v in read_state(state).items() if k.startswith("phi.")}
    return save(paths.adapter_dir(run), phi, preset.peft, base_model=preset.learner.model_name_or_path,
                info={"run": run, "weights": "phi (meta-trained LoRA initialisation)", "source": paths.META_STATE})


# --- in -------------------------------------------------------------------------------------------------------

def _check_layout(cfg, weights: Weights, live: dict[str, torch.Tensor], peft: config.PeftConfig, where: str) -> None:
    """The adapter must have the preset's rank, scaling and modules, tensor by tensor; the error names the first
    difference."""
    for key in ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern"):
        if getattr(cfg, key, None):
            raise ValueError(f"{where}: {key}={getattr(cfg, key)!r} is not plain LoRA; regrad cannot start from it")
    if cfg.r != peft.r:
        raise ValueError(f"{where}: rank r={cfg.r}, but the preset's peft_config.json has r={peft.r}")
    if cfg.lora_alpha / cfg.r != peft.scaling:
        raise ValueError(f"{where}: lora_alpha={cfg.lora_alpha} (scaling {cfg.lora_alpha / cfg.r:g}), but the "
                         f"preset's peft_config.json has lora_alpha={peft.lora_alpha} (scaling {peft.scaling:g})")
    modules = lambda names: sorted({n.rpartition(".")[0] for n in names})  # noqa: E731
    missing = [m for m in modules(live) if m not in modules(weights)]
    if missing:
        raise ValueError(f"{where}: no LoRA weights for module {missing[0]} ({len(missing)} module(s) missing), "
                         "which the preset's target_modules / layers_to_transform select")
    extra = [m for m in modules(weights) if m not in modules(live)]
    if extra:
        raise ValueError(f"{where}: LoRA weights for module {extra[0]} ({len(extra)} module(s)), which the preset's "
                         f"peft_config.json does not target (target_modules={peft.target_modules}, "
                         f"layers_to_transform={peft.layers_to_transform})")
    for name, p in live.items():
        if name not in weights:
            raise ValueError(f"{where}: tensor {peft_key(name)} is missing")
        if tuple(weights[name].shape) != tuple(p.shape):
            raise ValueError(f"{where}: {peft_key(name)} has shape {tuple(weights[name].shape)}, the model's LoRA "
                             f"needs {tuple(p.shape)} (another base model?)")


def same_model(a: str | None, b: str | None) -> bool:
    """Whether two ``model_name_or_path`` values name one model: the same last path component (case aside), so
    a hub id and its local copy (``HuggingFaceTB/SmolLM2-135M-Instruct``, ``models/SmolLM2-135M-Instruct``) match."""
    def last(name: str) -> str:
        return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()
    return a is None or b is None or last(a) == last(b)


def load_into(model: torch.nn.Module, folder: str | Path, peft: config.PeftConfig,
              base_model: str | None = None) -> None:
    """Warm start: copy a PEFT LoRA adapter of the same layout into the model's live LoRA weights ``phi``.

    ``base_model`` (the preset's ``model_name_or_path``): an adapter whose ``base_model_name_or_path`` names
    another model is refused (a LoRA of one model means nothing on another, even where the shapes agree)."""
    from regrad_lib.core import lora

    cfg, weights = read(folder)
    where = paths.relative(paths.resolve(folder))
    if not same_model(cfg.base_model_name_or_path, base_model):
        raise ValueError(f"{where}: the adapter was made for the base model {cfg.base_model_name_or_path!r}, but the "
                         f"preset's model is {base_model!r}; use an adapter of that model (if it is the same model "
                         f"under another name, set base_model_name_or_path in its {CONFIG_FILE})")
    live = lora.parameters(model)
    _check_layout(cfg, weights, live, peft, where)
    lora.load_into(model, {n: weights[n].float() for n in live})
    log.info("phi initialised from the PEFT adapter %s", paths.relative(paths.resolve(folder)))
