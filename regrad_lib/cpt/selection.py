"""How continual post-training's settings are chosen from a grid (``python -m experiments.cpt_grid``): the rule,
written down and applied by code, on numbers measured on a validation stream (the probe's training people that
meta-training never used), never on reported questions.

The rule: **the most knowledge on the validation stream among the settings that drift no more than ReGrad's own
persistent weights do.** ReGrad answers every question from its meta-trained LoRA, which differs from the base model
by meta-training; that change is the drift ReGrad itself carries, so it is the fair ceiling for a baseline it is
compared with "at equal drift". Per drift measure the ceiling is the meta-trained weights' change from the base
model (general-text NLL, general-question answer NLL, both in nats), floored at zero (weights that improved a
measure do not oblige CPT to improve it too). Knowledge is answer accuracy of the validation questions, closed book,
after the stream's last chunk, ties broken by the lower answer NLL, then the lower learning rate and the fewer
epochs (the cheaper setting). When no setting is under the ceiling, the one that exceeds it least (the largest of
its two excesses, in nats) is chosen and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GridPoint:
    """One setting's validation numbers: knowledge (acc ×100, answer NLL) and drift from the base model (nats)."""
    label: str
    learning_rate: float
    epochs_per_chunk: int
    knowledge_acc: float
    knowledge_nll: float | None
    text_drift: float             # general-text NLL − the base model's
    answer_drift: float           # general-question answer NLL − the base model's


@dataclass(frozen=True)
class Ceiling:
    """The most drift a chosen setting may show, per measure (nats)."""
    text: float
    answer: float

    @classmethod
    def of_regrad(cls, base: dict, meta: dict) -> Ceiling:
        """ReGrad's persistent weights' change from the base model (general-set points ``base`` and ``meta``:
        ``general_text_nll``, ``general_nll``), each floored at 0."""
        return cls(max(meta["general_text_nll"] - base["general_text_nll"], 0.0),
                   max(meta["general_nll"] - base["general_nll"], 0.0))

    def admits(self, p: GridPoint) -> bool:
        return p.text_drift <= self.text and p.answer_drift <= self.answer

    def excess(self, p: GridPoint) -> float:
        """How far ``p`` is over the ceiling: the larger of its two excesses (≤ 0 when admitted)."""
        return max(p.text_drift - self.text, p.answer_drift - self.answer)


@dataclass(frozen=True)
class Choice:
    point: GridPoint
    admitted: bool                # False: no setting was under the ceiling; the least excess was taken
    admitted_labels: tuple[str, ...]

    def describe(self, ceiling: Ceiling) -> str:
        p = self.point
        how = (f"the most knowledge among the {len(self.admitted_labels)} setting(s) under the ceiling"
               if self.admitted else "no setting was under the ceiling: the one exceeding it least "
                                     f"({ceiling.excess(p):+.3f} nats)")
        return (f"{p.label} (learning rate {p.learning_rate:g}, {p.epochs_per_chunk} epoch(s) per chunk): {how}; "
                f"validation acc {p.knowledge_acc:.1f}, answer NLL {_num(p.knowledge_nll)}, text drift "
                f"{p.text_drift:+.4f} (ceiling {ceiling.text:.4f}), answer drift {p.answer_drift:+.4f} "
                f"(ceiling {ceiling.answer:.4f})")


def _num(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _knowledge_key(p: GridPoint) -> tuple:
    nll = p.knowledge_nll if p.knowledge_nll is not None and math.isfinite(p.knowledge_nll) else math.inf
    return (-p.knowledge_acc, nll, p.learning_rate, p.epochs_per_chunk, p.label)


def choose(points: list[GridPoint], ceiling: Ceiling) -> Choice:
    """The module's rule applied to ``points`` (one arm's grid)."""
    if not points:
        raise ValueError("choose: the grid has no measured point")
    admitted = [p for p in points if ceiling.admits(p)]
    if admitted:
        return Choice(min(admitted, key=_knowledge_key), True, tuple(p.label for p in admitted))
    return Choice(min(points, key=lambda p: (ceiling.excess(p), *_knowledge_key(p))), False, ())
