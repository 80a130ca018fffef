"""LoRA on selected linear layers, with weights that can be swapped in per call — shared or per example.

ReGrad needs three things plain adapters do not give together:
- functional weights: the adapted ``phi'`` is a differentiable function of ``phi`` and ``alpha``;
- per-example weights: every question (or every training task) has its own adapted LoRA, and a batch of
  questions runs in ONE forward with batched low-rank matmuls (``A`` of shape ``[batch, r, in]``);
- per-example gradients: the gradient w.r.t. such a per-example weight tensor is exactly each example's own
  gradient, so one backward gives every passage's gradient (the Gradient Bank's hot loop).

Names follow the module path, e.g. ``model.layers.8.mlp.gate_proj.lora_A`` (A: ``[r, in]``, B: ``[out, r]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections.abc import Iterator

import torch
from torch import nn

from regrad_lib.config import PeftConfig

Weights = dict[str, torch.Tensor]


class LoRALinear(nn.Module):
    """``y = W x + scaling * B A x``; A and B can be overridden by per-call tensors (2-D shared or 3-D per row)."""

    def __init__(self, base: nn.Linear, r: int, scaling: float, init: bool | str = True):
        super().__init__()
        self.base = base
        self.scaling = scaling
        a, b = initial_pair(base.in_features, base.out_features, r, init)
        self.lora_A, self.lora_B = nn.Parameter(a), nn.Parameter(b)
        self.override: tuple[torch.Tensor, torch.Tensor] | None = None
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.enabled:
            return y
        a, b = self.override if self.override is not None else (self.lora_A, self.lora_B)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        a, b = a.to(dtype), b.to(dtype)
        if a.dim() == 2:
            delta = (x.to(dtype) @ a.transpose(0, 1)) @ b.transpose(0, 1)
        else:  # one LoRA per row of the batch: batched low-rank matmuls, no weight copies
            if a.shape[0] != x.shape[0]:
                raise ValueError(f"per-example LoRA weights for {a.shape[0]} rows, but the batch has {x.shape[0]}")
            delta = torch.bmm(torch.bmm(x.to(dtype), a.transpose(1, 2)), b.transpose(1, 2))
        return y + (delta * self.scaling).to(y.dtype)


def initial_pair(in_features: int, out_features: int, r: int,
                 init: bool | str = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh (A, B) in fp32, drawn from torch's global generator. peft's ``init_lora_weights``: True = A as
    nn.Linear (kaiming), B = 0; "gaussian" = A ~ N(0, 1/r), B = 0; False = both as nn.Linear (not a no-op)."""
    a = torch.empty(r, in_features, dtype=torch.float32)
    b = torch.zeros(out_features, r, dtype=torch.float32)
    if init is True or init is False:
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    else:
        nn.init.normal_(a, std=1 / r)
    if init is False:
        nn.init.kaiming_uniform_(b, a=math.sqrt(5))
    return a, b


def fresh(model: nn.Module, peft: PeftConfig, seed: int = 0) -> Weights:
    """The LoRA weights :func:`attach` would give ``model``'s LoRA layers with this ``seed`` (same draws, same
    order), as new leaves on their device: a fresh LoRA for a model whose LoRA already holds other weights."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    out = {}
    for name, m in modules(model).items():
        a, b = initial_pair(m.base.in_features, m.base.out_features, peft.r, peft.init_lora_weights)
        out[f"{name}.lora_A"], out[f"{name}.lora_B"] = a.to(m.lora_A.device), b.to(m.lora_B.device)
    torch.random.set_rng_state(generator_state)
    return out


def targeted(name: str, peft: PeftConfig) -> bool:
    """Whether peft would put a LoRA on module ``name`` (peft's ``check_target_module_exists``): ``target_modules``
    as a regex (full match) or as names matched exactly or as a ``.``-suffix; ``layers_to_transform`` against the
    first number after ``layers_pattern`` (default: after any module name)."""
    wanted = peft.target_modules
    if isinstance(wanted, str):
        return re.fullmatch(wanted, name) is not None
    if name in wanted:
        return True
    if not any(name.endswith(f".{t}") for t in wanted):
        return False
    layers = peft.layers_to_transform
    if layers is None or layers == []:
        return True
    patterns = [peft.layers_pattern] if isinstance(peft.layers_pattern, str) else list(peft.layers_pattern or [])
    regexes = [rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\." for p in patterns] or [r".*?\.[^.]*\.(?P<idx>\d+)\."]
    match = next((m for m in (re.match(x, name) for x in regexes) if m is not None), None)
    if match is None:
        return False
    index = int(match.group("idx"))
    return index == layers if isinstance(layers, int) else index in layers


def attach(model: nn.Module, peft: PeftConfig, seed: int = 0) -> list[str]:
    """Wrap the target linear layers of ``model`` in :class:`LoRALinear`; returns the wrapped module names.

    The base model is frozen; only ``lora_A``/``lora_B`` are parameters that require grad.
    """
    model.requires_grad_(False)
    targets = []
    for name, module in model.named_modules():
        if not name or not targeted(name, peft):
            continue
        if not isinstance(module, nn.Linear):
            raise ValueError(f"target module {name} is a {type(module).__name__}: regrad's LoRA wraps linear layers "
                             "only; narrow target_modules in the preset's peft_config.json")
        targets.append(name)
    if not targets:
        raise ValueError(f"No linear layer matches target_modules={peft.target_modules}, layers_to_transform="
                         f"{peft.layers_to_transform} and layers_pattern={peft.layers_pattern}; check the preset's "
                         "peft_config.json")
    rank = {name: min(model.get_submodule(name).in_features, model.get_submodule(name).out_features)
            for name in targets}
    narrowest = min(rank, key=rank.get)
    if peft.r > rank[narrowest]:     # a larger r adds nothing but memory (r = 10**9 asked the allocator for 256 GB)
        raise ValueError(f"peft_config.json: r = {peft.r} is more than the rank of the layer {narrowest} "
                         f"({rank[narrowest]}, the smaller of its input and output sizes): a LoRA of rank r cannot "
                         f"exceed it; give r <= {rank[narrowest]}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        wrapped = LoRALinear(base, peft.r, peft.scaling, peft.init_lora_weights).to(base.weight.device)
        setattr(parent, child, wrapped)
    torch.random.set_rng_state(generator_state)
    return targets


def modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def parameters(model: nn.Module) -> Weights:
    """phi: the live LoRA parameters, in layout order (module order, A then B)."""
    out = {}
    for name, m in modules(model).items():
        out[f"{name}.lora_A"] = m.lora_A
        out[f"{name}.lora_B"] = m.lora_B
    if not out:
        raise ValueError("the model has no LoRA layers: call lora.attach(model, preset.peft) first")
    return out


def layout(weights: Weights) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of each LoRA tensor, in order; the last ``ndim`` dims of per-row tensors are kept."""
    out = []
    for name, t in weights.items():
        shape = tuple(t.shape[-2:])
        out.append((name, shape))
    return out


def layout_hash(weights: Weights) -> str:
    return hash_layout(layout(weights))


def hash_layout(shapes: list[tuple[str, tuple[int, ...]]]) -> str:
    """A short hash of a layout's names and shapes (what a bank's gradients must match)."""
    text = json.dumps([[n, list(s)] for n, s in shapes])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def numel(weights: Weights) -> int:
    return sum(math.prod(shape) for _, shape in layout(weights))


def flatten(weights: Weights) -> torch.Tensor:
    """One vector (per row for per-row tensors) in layout order."""
    first = next(iter(weights.values()))
    lead = first.shape[:-2]
    return torch.cat([t.reshape(*lead, -1) for t in weights.values()], dim=-1)


def unflatten(vector: torch.Tensor, shapes: list[tuple[str, tuple[int, ...]]]) -> Weights:
    out, offset = {}, 0
    lead = vector.shape[:-1]
    for name, shape in shapes:
        n = math.prod(shape)
        out[name] = vector[..., offset:offset + n].reshape(*lead, *shape)
        offset += n
    if offset != vector.shape[-1]:
        raise ValueError(f"vector of {vector.shape[-1]} values does not match a layout of {offset}")
    return out


@contextlib.contextmanager
def use(model: nn.Module, weights: Weights) -> Iterator[None]:
    """Run ``model`` with these LoRA weights (tensors of ``[r, in]``/``[out, r]`` or per-row ``[n, ...]``)."""
    mods = modules(model)
    missing = {f"{n}.lora_A" for n in mods} - set(weights)
    if missing:
        raise KeyError(f"LoRA weights missing for {sorted(missing)[:3]}...")
    try:
        for name, m in mods.items():
            m.override = (weights[f"{name}.lora_A"], weights[f"{name}.lora_B"])
        yield
    finally:
        for m in mods.values():
            m.override = None


@contextlib.contextmanager
def disabled(model: nn.Module) -> Iterator[None]:
    """Run the base model: every LoRA branch off (closed-book and RAG baselines)."""
    mods = list(modules(model).values())
    try:
        for m in mods:
            m.enabled = False
        yield
    finally:
        for m in mods:
            m.enabled = True


def load_into(model: nn.Module, weights: Weights) -> None:
    """Copy saved LoRA values into the live parameters (shapes checked)."""
    live = parameters(model)
    if set(live) != set(weights):
        raise ValueError(f"saved LoRA tensors do not match the model: missing {sorted(set(live) - set(weights))[:3]}, "
                         f"unexpected {sorted(set(weights) - set(live))[:3]}")
    with torch.no_grad():
        for name, p in live.items():
            if p.shape != weights[name].shape:
                raise ValueError(f"LoRA tensor {name}: saved shape {tuple(weights[name].shape)} != {tuple(p.shape)}")
            p.copy_(weights[name])
