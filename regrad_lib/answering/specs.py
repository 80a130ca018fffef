"""The methods of 05_evaluate, what each answers with and in which order they are shown: the one list of method
names (no torch here, so 06_analyze's tables read it without loading a model).

============== ============ ========== ========== ==========================================================
method         weights      passages   update     LoRA weights of question ``q``
                            in prompt
============== ============ ========== ========== ==========================================================
closed_book    base         no         none       none (``lora.disabled``)
rag            base         yes        none       none
sft            sft          no         none       a LoRA fine-tuned on meta-training's questions, closed book
rag_sft        rag_sft      yes        none       a LoRA fine-tuned on those questions with their passages
regrad         meta         no         bank       ``phi - gamma·alpha ⊙ Σ g_d`` from the Gradient Bank (eq. 2)
regrad_icl     meta         yes        bank       same, passages also in the prompt
regrad_online  meta         no         online     same, gradients computed on the fly (no bank)
shift          meta         no         bank       gradients of question ``q-1``'s passages (question 0: the last's)
no_update      meta         no         none       ``phi`` (gamma = 0)
no_update_icl  meta         yes        none       ``phi``: regrad_icl's control without gradients
shift_icl      meta         yes        bank       question ``q-1``'s gradients as ``shift``: regrad_icl's control
cpt            cpt          no         none       the persistent weights after continual post-training on the
                                                  documents (:mod:`regrad_lib.cpt.continual`)
cpt_rag        cpt          yes        none       the same, passages in the prompt
============== ============ ========== ========== ==========================================================

``weights`` other than base and meta are trained by a baseline apart from 03_train and passed in by the caller
(:mod:`regrad_lib.training.sft`, :mod:`regrad_lib.cpt.continual`). regrad_icl's two controls isolate the gradients in
the combined setting: against ``rag`` it also differs in the weights (the meta-trained LoRA, which has learned the
answer format), against ``no_update_icl`` only in having the update, against ``shift_icl`` only in whose passages
the update comes from; ``rag_sft`` is the RAG that learned the answer format on the same questions.

A new method is one :class:`MethodSpec` in :data:`SPECS` (docs/design.md, "Where new things go"); code asks a spec's
properties, never its method name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

WeightsKind = Literal["base", "meta", "cpt", "sft", "rag_sft"]
Update = Literal["none", "bank", "online"]
TRAINED_APART: tuple[str, ...] = ("cpt", "sft", "rag_sft")     # weights trained by a baseline, not by 03_train


@dataclass(frozen=True)
class MethodSpec:
    """How a method answers: which persistent weights, passages in the prompt or not, and its per-question update."""
    weights: WeightsKind
    context: bool                  # the question's top-k passages in the prompt
    update: Update = "none"        # phi'_q of equation 2, its gradients from the bank or computed online
    shift: bool = False            # the update of the previous question's passages (the mismatch control)

    @property
    def base(self) -> bool:
        """Answers with the base model (LoRA off)."""
        return self.weights == "base"

    @property
    def adapts(self) -> bool:
        """Answers each question with its own update of the weights (ReGrad's family): the persistent weights must
        be the same after the whole evaluation."""
        return self.update != "none"

    @property
    def reads_bank(self) -> bool:
        return self.update == "bank"

    @property
    def trained_apart(self) -> bool:
        """Its weights come from a baseline's own training (CPT, SFT), which the caller passes in."""
        return self.weights in TRAINED_APART

    @property
    def uses_passages(self) -> bool:
        """The question's retrieved passages reach its answer: in the prompt, as gradients, or as the documents CPT
        trained on (the mixed-documents ablation changes its answers)."""
        return self.context or self.adapts or self.weights == "cpt"


SPECS: dict[str, MethodSpec] = {
    "closed_book": MethodSpec("base", context=False),
    "rag": MethodSpec("base", context=True),
    "sft": MethodSpec("sft", context=False),
    "rag_sft": MethodSpec("rag_sft", context=True),
    "regrad": MethodSpec("meta", context=False, update="bank"),
    "regrad_icl": MethodSpec("meta", context=True, update="bank"),
    "regrad_online": MethodSpec("meta", context=False, update="online"),
    "shift": MethodSpec("meta", context=False, update="bank", shift=True),
    "no_update": MethodSpec("meta", context=False),
    "no_update_icl": MethodSpec("meta", context=True),
    "shift_icl": MethodSpec("meta", context=True, update="bank", shift=True),
    "cpt": MethodSpec("cpt", context=False),
    "cpt_rag": MethodSpec("cpt", context=True),
}
METHODS: tuple[str, ...] = tuple(SPECS)          # the order tables and figures show them in


def check_methods(methods: Sequence[str]) -> list[str]:
    """The method names, validated (a typo names the allowed ones; a name given twice is refused)."""
    if isinstance(methods, str):
        methods = [methods]
    bad = [m for m in methods if m not in SPECS]
    if bad:
        raise ValueError(f"Unknown method(s) {bad}; choose from {list(METHODS)}")
    twice = sorted({m for m in methods if list(methods).count(m) > 1})
    if twice:
        raise ValueError(f"methods {list(methods)} name {twice} more than once; give each method once")
    return list(methods)


def needs_bank(methods: Sequence[str]) -> bool:
    return any(SPECS[m].reads_bank for m in check_methods(methods))


def ordered(names, order: Sequence[str] = METHODS) -> list[str]:
    """``names`` once each, those of ``order`` first in its order, then the others as they came."""
    names = list(dict.fromkeys(names))
    return [n for n in order if n in names] + [n for n in names if n not in order]
