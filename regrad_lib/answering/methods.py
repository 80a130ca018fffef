"""The LoRA weights each method of 05_evaluate answers with (method.md "Baselines", equation 2); which methods exist
and what each uses is :mod:`regrad_lib.answering.specs`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from regrad_lib import config
from regrad_lib.answering.specs import SPECS, MethodSpec
from regrad_lib.core import adapters, generation, regrad, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.io import params


def method_weights(spec: MethodSpec, learner: Learner, batch: Sequence[task_batches.Task],
                   pids: Sequence[Sequence[str]], bank, gamma: float) -> dict[str, torch.Tensor] | None:
    """The LoRA weights of a batch: None (base model), the learner's ``phi`` (shared) or per-row ``phi'_q``
    (equation 2).

    Without an update the learner's own ``phi`` answers: the meta-trained LoRA, or for weights trained apart the
    learner the caller passes (continual post-training's, :func:`regrad_lib.cpt.continual.post_train`; a fine-tuned
    baseline's, :func:`regrad_lib.training.sft.learner`).
    """
    if spec.base:
        return None
    phi = {n: p.detach() for n, p in learner.phi.items()}
    if not spec.adapts:
        return phi
    if spec.update == "online":
        grads = generation.online_gradients(learner, batch)
    else:
        grads = bank.sum_many([list(p) for p in pids], learner.device)
    with torch.no_grad():
        grads = {n: g.to(device=learner.device, dtype=phi[n].dtype) for n, g in grads.items()}
        return {n: w.detach() for n, w in regrad.apply_update(phi, grads, learner.alpha, gamma).items()}


def require_bank(bank):
    """``bank`` if it is a :class:`regrad_lib.bank.reader.GradientBank`, else a TypeError saying how to open one."""
    from regrad_lib.bank.reader import GradientBank

    if not isinstance(bank, GradientBank):
        raise TypeError(f"bank= must be a regrad_lib.bank.reader.GradientBank (reader.open_bank(topk, run, dataset, "
                        f"split, scheme, learner=learner)), not {type(bank).__name__}")
    return bank


PASSAGE_SETTINGS = ("bank_context_len", "passage_format")     # how the bank's passages were cut and formatted


def checked_bank(bank, learner: Learner):
    """``bank`` after the same model / LoRA layout / meta-weights checks as ``open_bank(learner=...)``, and with
    its passages cut and formatted as the learner's (online gradients and ``prompt_passages = "as_gradient"``
    prompts take that cut)."""
    from regrad_lib.bank.on_disk import BankMismatchError

    bank = require_bank(bank).check(learner)
    source, cfg = bank.manifest.get("source", {}), learner.preset.learner
    bad = {k: (source[k], getattr(cfg, k)) for k in PASSAGE_SETTINGS if k in source and source[k] != getattr(cfg, k)}
    if bad:
        shown = "; ".join(f"{k}: bank {a!r} != learner {b!r}" for k, (a, b) in bad.items())
        raise BankMismatchError(f"the Gradient Bank's passages were cut or formatted otherwise than the learner's "
                                f"({shown}): re-encode it with 04_encode (overwrite = True)")
    return bank


def question_weights(learner: Learner, task: task_batches.Task, *, bank=None,
                     gamma: float = 1.0) -> dict[str, torch.Tensor]:
    """One question's ``phi'_q`` (equation 2, 2-D tensors): its passages' gradients from ``bank``, or online."""
    spec = SPECS["regrad" if bank is not None else "regrad_online"]
    if bank is not None:
        checked_bank(bank, learner)
    rows = method_weights(spec, learner, [task], [list(task.passage_ids)], bank, gamma)
    return {n: w[0] for n, w in rows.items()}


def export_question(learner, task, folder: str | Path, *, bank=None, gamma: float | None = None,
                    run: str | None = None) -> Path:
    """One question's adapted weights ``phi'_q = phi - gamma·alpha ⊙ Σ g_d`` (equation 2) as a PEFT adapter.

    The gradients of ``task``'s passages come from ``bank`` (a :class:`regrad_lib.bank.reader.GradientBank`) or, without
    one, are computed on the fly (the same sums). ``gamma`` defaults to the run's ``learner.gamma``.
    """
    gamma = learner.preset.learner.gamma if gamma is None else params.number("gamma", gamma)
    config.check_number(gamma, "gamma", allow_zero=True)            # as the config: the update's scale, >= 0
    if not isinstance(task, task_batches.Task) or not task.passages:
        raise ValueError(f"export_question: question {getattr(task, 'test_id', task)!r} has no passages: phi'_q is "
                         "made of its passages' gradients; give a task with its retrieved passages "
                         "(task_batches.load or an augmented record)")
    weights = question_weights(learner, task, bank=bank, gamma=gamma)
    info = {"run": run, "weights": "phi'_q = phi - gamma * alpha * sum of the passages' gradients (equation 2)",
            "question": task.question, "test_id": task.test_id, "passage_ids": list(task.passage_ids),
            "gamma": gamma, "gradients": "bank" if bank is not None else "online", "meta_hash": learner.meta_hash()}
    return adapters.save(folder, weights, learner.preset.peft, base_model=learner.preset.learner.model_name_or_path,
                info=info)
