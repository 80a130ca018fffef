"""Answering a batch of questions: greedy decoding with per-row LoRA weights and the newline stop rule
(method.md equation 4), on-the-fly passage gradients, and the gold answer's NLL.

Every question of a batch can carry its own adapted LoRA weights ``phi'_q`` (per-row tensors
``[batch, r, in]`` / ``[batch, out, r]``, batched low-rank matmuls in :class:`regrad_lib.core.lora.LoRALinear`), so
a batch of questions is decoded in one loop: prompts LEFT-padded, one prefill forward, then one token per step
with the KV cache. A row is finished once its text, leading whitespace skipped, holds a newline (or it emitted
an end-of-sequence token); finished rows leave the batch (their cache rows and LoRA rows are dropped), and the
loop ends when every row is finished or after ``max_new_tokens``.

When every row runs the same weights (the base model or a shared ``phi``), the prompts' common token prefix
(the chat header, the instruction and the worked example: 103 of the demo's ~370–450 RAG prompt tokens) is run once
and its KV cache repeated over the batch; each row's rest is left-padded after it (positions continue from the
prefix, padding masked), so the answers are those of the unshared prefill up to float rounding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from regrad_lib.core import lora, regrad, task_batches
from regrad_lib.data import prompts

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Generation:
    """One decoded row: the new token ids (stop token included, end-of-sequence excluded), text and answer;
    ``answer_nll``: the mean token NLL of the scored gold answer (NaN when none was given); ``margins``: the
    top-1 − top-2 logit gap of each greedy choice (one per token id, plus the end-of-sequence choice if one
    ended the row)."""
    token_ids: tuple[int, ...]
    text: str
    answer: str
    answer_nll: float = math.nan
    margins: tuple[float, ...] = ()

    @property
    def min_margin(self) -> float:
        """The smallest gap: logits perturbed by less than half of it at every step give the same tokens (a
        smaller gap is a near tie, which float rounding of another machine or thread count may flip)."""
        return min(self.margins, default=math.inf)


def stop_reached(text: str, stop: str = "\n") -> bool:
    """The stop rule: ``stop`` (``generation.stop``, a newline by default) after the first non-whitespace
    character (equation 4, leading whitespace skipped)."""
    return stop in text.lstrip()


def eos_ids(model: nn.Module, tokenizer) -> set[int]:
    """End-of-sequence ids of the tokenizer and the model's generation config."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    cfg = getattr(model, "generation_config", None)
    extra = getattr(cfg, "eos_token_id", None) if cfg is not None else None
    if extra is not None:
        ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    return ids


def _left_pad(prompt_ids: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        if not p:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def _check_weights(weights: Weights | None, rows: int) -> bool:
    """True when ``weights`` are per row (3-D); checks that they have one row per prompt."""
    if weights is None:
        return False
    first = next(iter(weights.values()))
    if first.dim() == 2:
        return False
    if first.shape[0] != rows:
        raise ValueError(f"per-row LoRA weights for {first.shape[0]} rows, but {rows} prompts were given")
    return True


def _score(model: nn.Module, cache, last_logits: torch.Tensor, mask: torch.Tensor, position: torch.Tensor,
           score_ids: Sequence[Sequence[int]], pad_id: int) -> list[float]:
    """Mean NLL of each row's ``score_ids`` continuing its prompt, reusing the prompt's KV cache (one forward of
    the answer tokens only); the cache is cropped back to the prompt afterwards."""
    device = mask.device
    width = max(len(s) for s in score_ids)
    if min(len(s) for s in score_ids) == 0:
        raise ValueError("an empty answer cannot be scored")
    ids = torch.full((len(score_ids), width), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros((len(score_ids), width), dtype=torch.long, device=device)
    for i, s in enumerate(score_ids):
        ids[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        valid[i, :len(s)] = 1
    positions = position[:, -1:] + 1 + torch.arange(width, device=device)
    result = model(input_ids=ids, attention_mask=torch.cat([mask, valid], dim=1), position_ids=positions,
                   cache=cache, use_cache=True)
    cache.crop(-width)
    # token j is predicted by the logits before it: the prompt's last position for j = 0, then the answer's own
    logits = torch.cat([last_logits[:, None], result.logits[:, :-1]], dim=1)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none") * valid
    return (nll.sum(1) / valid.sum(1)).tolist()


MIN_SHARED_PREFIX = 16     # tokens; below this one prefill of the whole batch costs about the same


def shared_prefix_length(prompt_ids: Sequence[Sequence[int]]) -> int:
    """Length of the prompts' common token prefix, leaving every prompt at least one token of its own
    (its last position's logits start decoding); 0 for a single prompt or a prefix too short to pay."""
    if len(prompt_ids) < 2:
        return 0
    length = min(len(os.path.commonprefix([list(p) for p in prompt_ids])), min(map(len, prompt_ids)) - 1)
    return length if length >= MIN_SHARED_PREFIX else 0


def _prefill_prefix(model: nn.Module, prefix: Sequence[int], rows: int, device):
    """KV cache of ``prefix`` (positions 0…P−1) computed once and repeated for ``rows`` rows."""
    ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)
    result = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                   position_ids=torch.arange(len(prefix), device=device)[None], use_cache=True, logits_to_keep=1)
    result.cache.batch_repeat_interleave(rows)
    return result.cache


def _decode(model: nn.Module, tokenizer, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
            weights: Weights | None, score_ids: Sequence[Sequence[int]] | None,
            stop: str = "\n", share_prefix: bool = True) -> tuple[list[list[int]], list[float], list[list[float]]]:
    n = len(prompt_ids)
    per_row = _check_weights(weights, n)
    device = next(model.parameters()).device
    shared = shared_prefix_length(prompt_ids) if share_prefix and not per_row else 0
    ids, mask = _left_pad([p[shared:] for p in prompt_ids], tokenizer.pad_token_id, device)
    position = shared + (mask.cumsum(1) - 1).clamp_min(0)
    cache = None
    if shared:
        context = lora.use(model, weights) if weights is not None else contextlib.nullcontext()
        with context:
            cache = _prefill_prefix(model, prompt_ids[0][:shared], n, device)
        mask = torch.cat([mask.new_ones((n, shared)), mask], dim=1)
    stops = eos_ids(model, tokenizer)
    out: list[list[int]] = [[] for _ in range(n)]
    margins: list[list[float]] = [[] for _ in range(n)]
    nll = [math.nan] * n
    active = torch.arange(n, device=device)        # original row of each batch row
    rows = weights
    step_ids, step_pos = ids, position
    for step in range(max_new_tokens):
        context = lora.use(model, rows) if rows is not None else contextlib.nullcontext()
        with context:
            result = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, cache=cache,
                           use_cache=True, logits_to_keep=1)
            if step == 0 and score_ids is not None:     # right after the prefill: score the gold answers
                nll = _score(model, result.cache, result.logits[:, -1], mask, step_pos, score_ids,
                             tokenizer.pad_token_id)
        cache = result.cache
        last = result.logits[:, -1]
        next_ids = last.argmax(dim=-1)
        top2 = (last.float() if last.dtype in (torch.float16, torch.bfloat16) else last).topk(2, dim=-1).values
        gaps = (top2[:, 0] - top2[:, 1]).tolist()
        keep = []
        for j, (row, token) in enumerate(zip(active.tolist(), next_ids.tolist())):
            margins[row].append(gaps[j])
            if token in stops:
                continue
            out[row].append(token)
            if stop_reached(tokenizer.decode(out[row], skip_special_tokens=True), stop):
                continue
            keep.append(j)
        if not keep:
            break
        if len(keep) < len(active):           # drop finished rows: cache, mask, LoRA rows
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            active, mask, next_ids = active[index], mask[index], next_ids[index]
            step_pos = step_pos[index]
            if per_row:
                rows = {name: w.index_select(0, active) for name, w in weights.items()}
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        step_ids = next_ids[:, None]
        step_pos = step_pos[:, -1:] + 1
    return out, nll, margins


@torch.no_grad()
def greedy(model: nn.Module, tokenizer, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
           weights: Weights | None = None, stop: str = "\n", share_prefix: bool = True) -> list[list[int]]:
    """Greedy new tokens for every prompt, decoded together; ``weights`` shared (2-D) or one row per prompt (3-D).

    ``weights=None`` runs the model as it is (its live LoRA, or the base model inside ``lora.disabled``).
    ``share_prefix``: run the prompts' common prefix once (shared weights only; see the module notes).
    """
    if not prompt_ids:
        return []
    return _decode(model, tokenizer, prompt_ids, max_new_tokens, weights, None, stop, share_prefix)[0]


def decode(tokenizer, token_ids: Sequence[int], stop: str = "\n") -> Generation:
    """Text of the new tokens and the answer extracted from it (:func:`prompts.extract_answer`)."""
    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    return Generation(tuple(token_ids), text, prompts.extract_answer(text, stop))


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
             weights: Weights | None = None, score_ids: Sequence[Sequence[int]] | None = None,
             stop: str = "\n", share_prefix: bool = True) -> list[Generation]:
    """:func:`greedy` then :func:`decode` for every prompt; with ``score_ids`` (one gold answer's label ids per
    prompt) also each answer's mean token NLL, from the prefill's KV cache (the prompt runs once); each row's
    ``margins`` tell where its greedy choice was a near tie. ``stop``: the stop string (``generation.stop``);
    ``share_prefix`` as in :func:`greedy`."""
    if not prompt_ids:
        return []
    tokens, nll, margins = _decode(model, tokenizer, prompt_ids, max_new_tokens, weights, score_ids, stop,
                                   share_prefix)
    return [dataclasses.replace(decode(tokenizer, t, stop), answer_nll=v, margins=tuple(m))
            for t, v, m in zip(tokens, nll, margins)]


def online_gradients(learner, batch: Sequence[task_batches.Task]) -> Weights:
    """Each task's ``Σ_d g_d`` (equation 2's sum) from one padded forward/backward over all their passages.

    Passages are cut at ``bank_context_len``, as in the Gradient Bank, so this equals the bank's sums.
    """
    passages = [p for t in batch for p in t.passages]
    group = torch.tensor([i for i, t in enumerate(batch) for _ in t.passages], dtype=torch.long)
    cfg = learner.preset.learner
    tokens = task_batches.passage_batch(learner.tokenizer, passages, cfg.bank_context_len, cfg.passage_format)
    grads, _ = regrad.group_gradients(learner.model, learner.phi, tokens.to(learner.device),
                                      group.to(learner.device), len(batch), precision=learner.precision)
    return {n: g.detach() for n, g in grads.items()}


def answer_nll(learner, batch: Sequence[task_batches.Task], weights: Weights | None, context: bool) -> list[float]:
    """Mean token NLL of each task's first gold answer (:func:`prompts.answer_ids`, ``L_ans``) under ``weights``
    (None: the base model) and the prompt with or without its passages: one full forward of prompt + answer
    (the reference for :func:`generate`'s ``score_ids``, which reuses the prompt's cache)."""
    tokens = task_batches.qa_batch(learner.tokenizer, batch, learner.preset.learner, with_context=context, stage="eval")
    use = lora.disabled(learner.model) if weights is None else lora.use(learner.model, weights)
    with torch.no_grad(), learner.autocast(), use:
        return regrad.token_losses(learner.model, tokens.to(learner.device)).float().tolist()
