"""How far two runs of the same float computation may differ when their sums run in another order.

Thread count, batch composition (padding width), the split of a job into processes and a CPU's vector kernels
all change the order in which a matmul or a reduction adds its terms; the results then differ in the last bits,
and a greedy choice between two nearly equal logits can flip. Tests that compare such runs (one process against
two, one thread count against another) use these tolerances instead of exact equality, and compare generated
text only where the greedy choice was no near tie (:attr:`regrad_lib.core.generation.Generation.min_margin`).

The bound. The float sum of n terms, in any order, satisfies |ŝ − s| ≤ γ_(n−1) Σ|x_i| with γ_k = k·u / (1 − k·u)
and u = eps / 2 the unit roundoff (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 4.4);
a dot product adds one rounding per product. Two orders each obey the bound, so they differ by at most
2·γ_n·Σ|x_i| ≈ n · eps · Σ|x_i|. A value computed through a chain of such reductions (the layers of a network,
then its backward pass) carries, to first order, the sum of their errors, each scaled by the condition of what
follows. The decoders here normalise the input of every block (RMSNorm), so that condition is taken as 1 and the
chain's bound is ``eps × (the lengths of all reductions the value passes through) × magnitude``, where the
magnitude bounds the terms' absolute sum Σ|x_i| of the value's last reduction. This is a first-order model,
not a proof: a badly conditioned step would amplify the error. It is also a worst case (rounding errors mostly
cancel), so measured differences sit orders of magnitude below it; each test using it also checks that the
tolerance stays far below the differences it must still detect.
"""

from __future__ import annotations

import math

import torch


def eps(dtype: torch.dtype = torch.float32) -> float:
    """The machine epsilon of ``dtype`` (2^-23 for fp32, 2^-7 for bf16)."""
    return torch.finfo(dtype).eps


def reorder_tolerance(terms: int, magnitude: float, dtype: torch.dtype = torch.float32) -> float:
    """``terms × eps(dtype) × magnitude``: the most two summation orders of a computation may differ by, where
    ``terms`` counts the summed terms along the computation's chain of reductions and ``magnitude`` bounds the
    absolute sum of the terms of its last one (module notes)."""
    if terms < 0 or magnitude < 0 or not math.isfinite(magnitude):
        raise ValueError(f"terms={terms}, magnitude={magnitude}: both must be finite and >= 0")
    return terms * eps(dtype) * magnitude


def forward_terms(config, tokens: int, lora_rank: int = 0) -> int:
    """Summed terms along one forward pass of a Llama-style decoder over ``tokens`` positions, to a
    log-probability: per layer the two RMSNorms and the q/k/v, gate and up projections (``hidden_size`` each),
    the attention scores (``head_dim``), the softmax and the weighted sum over positions (``tokens`` each), the
    output projection (``hidden_size``), the down projection (``intermediate_size``) and a LoRA path (its rank
    twice); then the final norm and the LM head (``hidden_size``) and the log-softmax over the vocabulary."""
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    per_layer = 2 * hidden + 3 * hidden + head_dim + 2 * tokens + hidden + 2 * hidden + inter + 2 * lora_rank
    return config.num_hidden_layers * per_layer + 2 * hidden + config.vocab_size


def gradient_terms(config, tokens: int, lora_rank: int = 0) -> int:
    """Summed terms along a passage gradient (equation 1): the forward pass, the backward pass through the same
    reductions transposed, and the weight gradient's sum over the ``tokens`` positions."""
    return 2 * forward_terms(config, tokens, lora_rank) + tokens


def logit_magnitude(model: torch.nn.Module) -> float:
    """A bound on Σ|h_i·W_vi| of every logit: the final hidden state is RMS-normalised (‖h‖ ≤ √hidden · max|norm
    weight|), so by Cauchy–Schwarz each logit's terms sum to at most ‖h‖ · max_v ‖W_v‖ (W: the LM head)."""
    config = model.config
    norm = model.get_decoder().norm.weight.detach().float() if hasattr(model, "get_decoder") else None
    scale = float(norm.abs().max()) if norm is not None else 1.0
    head = model.get_output_embeddings().weight.detach().float()
    return math.sqrt(config.hidden_size) * scale * float(head.norm(dim=1).max())


def meta_step_terms(config, learner_config, lora_rank: int = 0, meta_batch: int = 1) -> int:
    """Summed terms along one second-order meta step (equation 3) and its logged loss: the inner passage gradient
    (:func:`gradient_terms` over ``max_context_len``), the answer's forward pass with ``phi'`` (over
    ``max_prompt_len`` tokens), the outer backward through both (the forward again and the inner gradient again:
    the double backward) and the sum over the ``meta_batch`` tasks (across processes included)."""
    inner = gradient_terms(config, learner_config.max_context_len, lora_rank)
    outer = forward_terms(config, learner_config.max_prompt_len, lora_rank)
    return 2 * inner + 2 * outer + meta_batch


def adam_drift(relative_error: float, learning_rates) -> float:
    """How far two AdamW trajectories whose gradients differ by ``relative_error`` may move a weight apart: a
    step moves each weight by lr · m̂ / (√v̂ + ε), about lr at most; relative errors in m̂ and in √v̂ change that by
    at most 2 · ``relative_error`` of it, so after the steps at these ``learning_rates`` the weights differ by at
    most 2 · relative_error · Σ lr (first order: a gradient component as small as its own rounding error could
    move by up to 2 · lr, so a test using this checks weights whose gradients are not that small)."""
    return 2 * relative_error * sum(learning_rates)
