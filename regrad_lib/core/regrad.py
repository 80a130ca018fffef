"""The functional core of ReGrad: LM losses, passage gradients, the adaptation step, the meta objective.

Everything works on a dict of LoRA tensors (``phi``, see :mod:`regrad_lib.core.lora`) and batches of token ids.
The central trick: run a batch with *per-group* LoRA weights ``phi`` expanded to ``[G, ...]`` and gathered per
row; the gradient of the summed per-row losses w.r.t. the expanded tensor is then, exactly, each group's
own summed gradient. With one group per task it gives every task's ``Σ_d g_d`` (equation 2) in one
forward/backward; with one group per passage it gives per-passage gradients (the bank); with
``create_graph=True`` it stays differentiable for the second-order meta-gradient (equation 3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from regrad_lib.core import lora
from regrad_lib.data.prompts import IGNORE, Example

Weights = dict[str, torch.Tensor]


# --- batches ------------------------------------------------------------------------------------------------

@dataclass
class TokenBatch:
    """Padded token ids, attention mask and labels (``IGNORE`` on padding and unlabelled tokens)."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate(examples: Sequence[Example], pad_id: int, side: str = "right") -> TokenBatch:
    """Pad to the longest example. Right padding for losses (causal attention never sees the padding)."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[i, cols] = torch.tensor(e.input_ids)
        mask[i, cols] = 1
        labels[i, cols] = torch.tensor(e.labels)
    return TokenBatch(ids, mask, labels)


# --- precision and attention --------------------------------------------------------------------------------

def autocast(device: torch.device | str, precision: str):
    """bf16 autocast for the base model's matmuls (``precision`` "bf16"; "no": fp32); LoRA weights and alpha
    stay fp32 leaves. Only forward passes run inside it: gradients are taken outside (PyTorch's guidance)."""
    if precision == "no":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision {precision!r}: choose 'bf16' or 'no'")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def double_backward_attention(enabled: bool = True) -> Iterator[None]:
    """Fused attention kernels have no double backward: use SDPA's math backend for second-order passes."""
    if not enabled:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.MATH]):
        yield


# --- losses ---------------------------------------------------------------------------------------------

def token_losses(model: nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Per-row mean next-token cross-entropy over the labelled tokens, shape ``[rows]`` (fp32 or wider).

    For a passage (labels = ids) this is ``L_LM(d)`` of equation 1; for a QA example, ``L_ans`` of equation 3.
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    logits = logits[:, :-1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    target = batch.labels[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE,
                          reduction="none").view_as(target)
    counts = (target != IGNORE).sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("a row has no labelled token (empty passage or answer after truncation)")
    return nll.sum(dim=1) / counts


def _expand(phi: Weights, groups: int, differentiable: bool) -> Weights:
    """``phi`` repeated per group as views; a fresh leaf when ``phi`` itself is not being differentiated."""
    out = {}
    for name, t in phi.items():
        e = t.unsqueeze(0).expand(groups, *t.shape)
        out[name] = e if differentiable and t.requires_grad else e.detach().clone().requires_grad_(True)
    return out


def group_gradients(model: nn.Module, phi: Weights, batch: TokenBatch, group_of_row: torch.Tensor, groups: int,
                    create_graph: bool = False, precision: str = "no") -> tuple[Weights, torch.Tensor]:
    """Each group's gradient of the sum of its rows' mean LM losses: ``{name: [groups, *shape]}``, and the losses.

    ``group_of_row[i]`` is the group of batch row ``i``. One forward and one backward for the whole batch.
    With ``create_graph`` the result stays a differentiable function of ``phi`` (second order). The forward runs
    under ``precision``'s autocast; the gradient is taken outside it.
    """
    expanded = _expand(phi, groups, differentiable=create_graph)
    identity = groups == len(batch) and bool((group_of_row == torch.arange(groups, device=group_of_row.device)).all())
    with torch.enable_grad():  # also under an outer no_grad (evaluation): the gather must stay differentiable
        rows = expanded if identity else {n: e.index_select(0, group_of_row) for n, e in expanded.items()}
        with lora.use(model, rows), autocast(batch.input_ids.device, precision):
            losses = token_losses(model, batch)
        grads = torch.autograd.grad(losses.sum(), list(expanded.values()), create_graph=create_graph)
    return dict(zip(expanded, grads)), losses


def summed_gradient(model: nn.Module, phi: Weights, batch: TokenBatch, create_graph: bool = False,
                    precision: str = "no") -> Weights:
    """``Σ_d g_d`` over all rows of ``batch`` (equation 2's sum) from one padded forward/backward."""
    group = torch.zeros(len(batch), dtype=torch.long, device=batch.input_ids.device)
    grads, _ = group_gradients(model, phi, batch, group, 1, create_graph, precision)
    return {n: g[0] for n, g in grads.items()}


def per_passage_gradients(model: nn.Module, phi: Weights, batch: TokenBatch,
                          precision: str = "no") -> tuple[Weights, torch.Tensor]:
    """``g_d`` for every row (equation 1) from one batched pass: ``{name: [rows, *shape]}`` and the losses."""
    rows = torch.arange(len(batch), device=batch.input_ids.device)
    return group_gradients(model, phi, batch, rows, len(batch), create_graph=False, precision=precision)


# --- step sizes and the update ----------------------------------------------------------------------------

class StepSizes(nn.Module):
    """Learned step sizes ``alpha`` (method.md "alpha_mode"): fix, same, tie (per tensor) or full (per element)."""

    def __init__(self, phi: Weights, mode: str, init: float):
        super().__init__()
        if mode not in ("fix", "same", "tie", "full"):
            raise ValueError(f"alpha_mode {mode!r}: choose fix, same, tie or full")
        self.mode = mode
        self.names = list(phi)
        self.values = nn.ParameterDict()
        if mode in ("fix", "same"):
            self.values["all"] = nn.Parameter(torch.tensor(float(init)), requires_grad=mode == "same")
        else:
            for name, t in phi.items():
                shape = () if mode == "tie" else tuple(t.shape[-2:])
                self.values[self._key(name)] = nn.Parameter(torch.full(shape, float(init), device=t.device))

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.values["all"] if self.mode in ("fix", "same") else self.values[self._key(name)]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Per LoRA tensor (for logging and plots): the scalar or the mean of the per-element values."""
        return {name: self[name].detach().float().mean() for name in self.names}


def apply_update(phi: Weights, grads: Weights, alpha: StepSizes, gamma: float = 1.0) -> Weights:
    """``phi' = phi - gamma * alpha ⊙ grad`` (equation 2); ``grads`` may carry a leading per-group dim."""
    return {name: phi[name] - gamma * alpha[name] * grads[name] for name in phi}


# --- the meta objective ------------------------------------------------------------------------------------

@dataclass
class TaskBatch:
    """Several tasks: their passages (rows grouped by task) and their QA examples (one row per task).

    ``truncated_prompts``: how many passages of the QA prompts were shortened to fit ``max_prompt_len``.
    """
    passages: TokenBatch
    task_of_passage: torch.Tensor
    qa: TokenBatch
    truncated_prompts: int = 0

    def to(self, device) -> TaskBatch:
        return TaskBatch(self.passages.to(device), self.task_of_passage.to(device), self.qa.to(device),
                         self.truncated_prompts)

    def __len__(self) -> int:
        return len(self.qa)


def adapted_weights(model: nn.Module, phi: Weights, alpha: StepSizes, tasks: TaskBatch, *, gamma: float = 1.0,
                    create_graph: bool = False, precision: str = "no") -> Weights:
    """Every task's ``phi'_q = phi - gamma * alpha ⊙ Σ_{d in D_q} g_d``, as per-row tensors ``[tasks, ...]``."""
    grads, _ = group_gradients(model, phi, tasks.passages, tasks.task_of_passage, len(tasks), create_graph,
                               precision)
    if not create_graph:
        grads = {n: g.detach() for n, g in grads.items()}
    return apply_update(phi, grads, alpha, gamma)


def meta_losses(model: nn.Module, phi: Weights, alpha: StepSizes, tasks: TaskBatch, *,
                first_order: bool = False, precision: str = "no") -> torch.Tensor:
    """Per-task outer loss at the adapted weights (equation 3); differentiable w.r.t. ``phi`` and ``alpha``.

    Second order by default: the inner gradients keep their graph, so the meta-gradient flows through them.
    Forward passes run under ``precision``'s autocast, gradients outside it.
    """
    with double_backward_attention(enabled=not first_order):
        adapted = adapted_weights(model, phi, alpha, tasks, create_graph=not first_order, precision=precision)
        with lora.use(model, adapted), autocast(tasks.qa.input_ids.device, precision):
            return token_losses(model, tasks.qa)


def passage_losses(model: nn.Module, phi: Weights, tasks: TaskBatch, *, precision: str = "no") -> torch.Tensor:
    """Per-task mean LM loss of its passages at the unadapted ``phi`` (the ``outer_loss = false`` ablation of
    method.md equation 3, as the public code's: no inner step, ``alpha`` untouched)."""
    with lora.use(model, phi), autocast(tasks.passages.input_ids.device, precision):
        losses = token_losses(model, tasks.passages)
    group = tasks.task_of_passage
    total = torch.zeros(len(tasks), dtype=losses.dtype, device=losses.device).index_add(0, group, losses)
    return total / torch.bincount(group, minlength=len(tasks)).to(losses.dtype)
