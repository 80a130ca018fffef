"""The methods of 05_evaluate and the LoRA weights each answers with (method.md "Baselines", equation 2).

============== ============ ================ ===========================================================
method         weights      passages in      LoRA weights of question ``q``
============== ============ ================ ===========================================================
closed_book    base model   no               none (``lora.disabled``)
rag            base model   prompt           none
regrad         meta LoRA    no               ``phi - gamma·alpha ⊙ Σ g_d`` from the Gradient Bank (eq. 2)
regrad_icl     meta LoRA    prompt           same, for a model meta-trained with ``blind_context = false``
regrad_online  meta LoRA    no               same, gradients computed on the fly (no bank)
shift          meta LoRA    no               gradients of question ``q-1``'s passages (question 0: the last's)
no_update      meta LoRA    no               ``phi`` (gamma = 0)
no_update_icl  meta LoRA    prompt           ``phi`` (gamma = 0): regrad_icl's control without gradients
shift_icl      meta LoRA    prompt           question ``q-1``'s gradients as ``shift``: regrad_icl's control
                                             with the wrong gradients and the right passages in the prompt
cpt            CPT weights  no               the persistent weights after continual post-training on the
                                             documents (:mod:`regrad_lib.cpt.continual`): the learner passed in
cpt_rag        CPT weights  prompt           the same, passages in the prompt
============== ============ ================ ===========================================================

regrad_icl's two controls isolate the gradients in the combined setting: against ``rag`` it also differs in the
weights (the meta-trained LoRA, which has learned the answer format), against ``no_update_icl`` only in having the
update, against ``shift_icl`` only in whose passages the update comes from.

A new method is one :class:`MethodSpec` in :data:`SPECS` (docs/design.md, "Where things go"); the harness
(:mod:`regrad_lib.answering.harness`) answers every method the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from regrad_lib.core import adapters, generation, regrad, task_batches

# A regrad_lib.core.learner.Learner. Not imported, even for type checking: the learner sits above this module (it
# loads warm-start adapters, which use question_weights), and tests/test_layers.py counts every import.
Learner = Any

METHODS = ("closed_book", "rag", "regrad", "regrad_icl", "regrad_online", "shift", "no_update", "no_update_icl",
           "shift_icl", "cpt", "cpt_rag")
Source = Literal["none", "phi", "bank", "online", "cpt"]


@dataclass(frozen=True)
class MethodSpec:
    """How a method answers: base model or meta LoRA, passages in the prompt, where the gradients come from."""
    base: bool
    context: bool
    source: Source
    shift: bool = False


SPECS = {
    "closed_book": MethodSpec(base=True, context=False, source="none"),
    "rag": MethodSpec(base=True, context=True, source="none"),
    "regrad": MethodSpec(base=False, context=False, source="bank"),
    "regrad_icl": MethodSpec(base=False, context=True, source="bank"),
    "regrad_online": MethodSpec(base=False, context=False, source="online"),
    "shift": MethodSpec(base=False, context=False, source="bank", shift=True),
    "no_update": MethodSpec(base=False, context=False, source="phi"),
    "no_update_icl": MethodSpec(base=False, context=True, source="phi"),
    "shift_icl": MethodSpec(base=False, context=True, source="bank", shift=True),
    "cpt": MethodSpec(base=False, context=False, source="cpt"),
    "cpt_rag": MethodSpec(base=False, context=True, source="cpt"),
}


def check_methods(methods: Sequence[str]) -> list[str]:
    """The method names, validated (a typo names the allowed ones)."""
    if isinstance(methods, str):
        methods = [methods]
    bad = [m for m in methods if m not in SPECS]
    if bad:
        raise ValueError(f"Unknown method(s) {bad}; choose from {list(METHODS)}")
    return list(methods)


def needs_bank(methods: Sequence[str]) -> bool:
    return any(SPECS[m].source == "bank" for m in check_methods(methods))


def adapts_per_question(method: str) -> bool:
    """Whether ``method`` answers each question with its own update of the weights (ReGrad's family), whose
    persistent weights must be the same after the whole evaluation."""
    return SPECS[method].source in ("bank", "online")


def method_weights(spec: MethodSpec, learner: Learner, batch: Sequence[task_batches.Task], pids: Sequence[Sequence[str]],
                   bank, gamma: float) -> dict[str, torch.Tensor] | None:
    """The LoRA weights of a batch: None (base model), ``phi`` (shared) or per-row ``phi'_q`` (equation 2).

    ``source="cpt"``: the learner's own ``phi``, shared; the caller passes the learner continual post-training made
    (:func:`regrad_lib.cpt.continual.post_train`), whose ``model`` and ``phi`` are the persistent weights after the stream.
    """
    if spec.base:
        return None
    phi = {n: p.detach() for n, p in learner.phi.items()}
    if spec.source in ("phi", "cpt"):
        return phi
    if spec.source == "online":
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
        raise TypeError(f"bank= must be a regrad_lib.bank.reader.GradientBank (bank.open_bank(topk, run, dataset, split, "
                        f"scheme, learner=learner)), not {type(bank).__name__}")
    return bank


PASSAGE_SETTINGS = ("bank_context_len", "passage_format")     # how the bank's passages were cut and formatted


def checked_bank(bank, learner: Learner):
    """``bank`` after the same model / LoRA layout / meta-weights checks as ``open_bank(learner=...)``, and with
    its passages cut and formatted as the learner's (online gradients and ``prompt_passages = "as_gradient"``
    prompts take that cut)."""
    from regrad_lib.bank.reader import BankMismatchError

    bank = require_bank(bank).check(learner)
    source, cfg = bank.manifest.get("source", {}), learner.preset.learner
    bad = {k: (source[k], getattr(cfg, k)) for k in PASSAGE_SETTINGS if k in source and source[k] != getattr(cfg, k)}
    if bad:
        shown = "; ".join(f"{k}: bank {a!r} != learner {b!r}" for k, (a, b) in bad.items())
        raise BankMismatchError(f"the Gradient Bank's passages were cut or formatted otherwise than the learner's "
                                f"({shown}): re-encode it with 04_encode (overwrite = True)")
    return bank


def question_weights(learner: Learner, task: task_batches.Task, *, bank=None, gamma: float = 1.0) -> dict[str, torch.Tensor]:
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
    gamma = learner.preset.learner.gamma if gamma is None else gamma
    weights = question_weights(learner, task, bank=bank, gamma=gamma)
    info = {"run": run, "weights": "phi'_q = phi - gamma * alpha * sum of the passages' gradients (equation 2)",
            "question": task.question, "test_id": task.test_id, "passage_ids": list(task.passage_ids),
            "gamma": gamma, "gradients": "bank" if bank is not None else "online", "meta_hash": learner.meta_hash()}
    return adapters.save(folder, weights, learner.preset.peft, base_model=learner.preset.learner.model_name_or_path,
                info=info)
