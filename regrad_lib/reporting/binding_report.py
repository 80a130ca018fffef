"""Does an answer carry *this person's* fact? The binding probe's answer shares, for 06_analyze.

Each question of the binding probe (:mod:`regrad_lib.data.probe_binding`) has the asked person and two distractor people
of the same family in its top-k, with the same relation and other values. Per method, every answer is sorted into
one of three kinds by the EM rule (:func:`metrics.score`): the asked person's value, a distractor's value, neither.
The name-swap control reads families: the three members' questions share the same passages and differ only in the
name asked, so a family answered with one value for all members is *name-blind*, and one answered with each member's
own value is *bound*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from regrad_lib.answering.specs import METHODS
from regrad_lib.data import metrics
from regrad_lib.io import result_files
from regrad_lib.io.result_files import method_predictions
from regrad_lib.reporting.analysis import MarkdownTable, Missing

__all__ = ["DATASET", "shares", "BindingTable", "Shares", "NameEffectTable", "method_shares", "name_effect",
           "name_effects"]

DATASET = "probe_binding"


@dataclass(frozen=True)
class Shares:
    """One method's answers on the binding probe: counts of each kind, and of families by the name-swap control."""

    method: str
    n: int
    asked: int
    distractor: int
    neither: int
    families: int            # families with every member answered
    name_blind: int          # ... answered with one value for every member
    bound: int               # ... answered with each member's own value

    @property
    def ratio(self) -> float:
        """Asked-value answers per distractor-value answer (inf when no distractor answer)."""
        return self.asked / self.distractor if self.distractor else float("inf")


@dataclass
class BindingTable(MarkdownTable):
    """Per method: shares of answers equal to the asked person's value, a distractor's value, neither."""

    shares: list[Shares]

    def __iter__(self):
        return iter(self.shares)

    def header(self) -> list[str]:
        return ["method", "n", "asked person's value", "a distractor's value", "neither", "asked : distractor",
                "families name-blind", "families bound"]

    def rows(self) -> list[list[str]]:
        def pct(k: int, n: int) -> str:
            return f"{100 * k / n:.1f}% ({k})" if n else "–"
        return [[s.method, str(s.n), pct(s.asked, s.n), pct(s.distractor, s.n), pct(s.neither, s.n),
                 f"{s.ratio:.2f}" if s.ratio != float("inf") else "∞", f"{s.name_blind}/{s.families}",
                 f"{s.bound}/{s.families}"] for s in self.shares]


def _right(prediction: str, value: str) -> bool:
    return metrics.score(prediction, [value])["em"] == 1.0


def method_shares(method: str, predictions: Sequence[dict], questions: Sequence[dict]) -> Shares:
    """:class:`Shares` of one method's prediction rows (``test_id`` = position in ``questions``)."""
    kinds = {"asked": 0, "distractor": 0, "neither": 0}
    by_family: dict[str, list[tuple[str, bool]]] = {}
    for row in predictions:
        q = questions[int(row["test_id"])]
        pred = row["prediction"]
        kind = ("asked" if any(_right(pred, a) for a in q["answer"]) else
                "distractor" if any(_right(pred, d["value"]) for d in q["distractors"]) else "neither")
        kinds[kind] += 1
        by_family.setdefault(q["family"], []).append((metrics.normalize_answer(pred), kind == "asked"))
    complete = [v for v in by_family.values() if len(v) == 1 + len(questions[0]["distractors"])]
    return Shares(method, len(predictions), kinds["asked"], kinds["distractor"], kinds["neither"], len(complete),
                  sum(len({p for p, _ in v}) == 1 for v in complete), sum(all(ok for _, ok in v) for v in complete))


def shares(run: str, datasets: Sequence[str], data_root: str = "data/sample", split: str = "dev",
           evaluation: str | None = None, methods: Sequence[str] = METHODS) -> BindingTable | Missing:
    """:class:`BindingTable` of every method evaluated on the binding probe (``probe_binding`` among ``datasets``)."""
    from regrad_lib.data import probe_binding

    if DATASET not in datasets:
        return Missing(f"the binding probe ({DATASET}) was not among the evaluated datasets")
    try:
        questions = probe_binding.questions(f"{data_root}/{DATASET}", split)
    except FileNotFoundError as e:
        return Missing(str(e))
    out = []
    for method in methods:
        try:
            rows = method_predictions(run, DATASET, method, evaluation)
        except FileNotFoundError:
            continue
        out.append(method_shares(method, rows, questions))
    if not out:
        return Missing(f"no predictions of {DATASET} (05_evaluate with datasets including {DATASET!r})")
    return BindingTable(out)


# --- why it binds or not: the name's effect on what the update predicts ------------------------------------------

@dataclass(frozen=True)
class NameEffect:
    """From ``binding_matrix.json`` (:mod:`regrad_lib.evaluation.binding_matrix`), under the update and without it:

    - ``asked_margin``: per question, the answer NLL of the asked member's value minus the mean of the two other
      members' values (negative: the asked value is the likeliest), mean ± SE over questions;
    - ``name_effect``: per family member's value, its NLL when its owner is asked minus its mean NLL when another
      member is asked (the update and passages are the same: only the name differs; negative means naming the owner
      makes its value likelier — binding), mean ± SE;
    - ``lowest``: the share of questions whose asked value has the lowest NLL of the three (1/3 by chance)."""
    setting: str
    asked_margin: tuple[float, float]
    name_effect: tuple[float, float]
    lowest: float
    questions: int


@dataclass
class NameEffectTable(MarkdownTable):
    effects: list[NameEffect]

    def __iter__(self):
        return iter(self.effects)

    def header(self) -> list[str]:
        return ["weights", "asked value − other values (NLL)", "owner asked − other asked (NLL of a value)",
                "asked value likeliest", "questions"]

    def rows(self) -> list[list[str]]:
        return [[e.setting, f"{e.asked_margin[0]:+.3f} ± {e.asked_margin[1]:.3f}",
                 f"{e.name_effect[0]:+.3f} ± {e.name_effect[1]:.3f}", f"{100 * e.lowest:.1f}%", str(e.questions)]
                for e in self.effects]


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and SE; NaN for no value (e.g. a family of which one member was asked: no name to swap)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    return mean, ((sum((v - mean) ** 2 for v in values) / (n - 1) / n) ** 0.5 if n > 1 else float("nan"))


def name_effects(rows: Sequence[dict]) -> NameEffectTable:
    """:class:`NameEffect` of the matrix rows, under the update (``nll``) and without it (``nll_no_update``)."""
    out = []
    for key, setting in (("nll", "regrad (the family's summed update)"), ("nll_no_update", "no_update (phi)")):
        by_question: dict = {}
        for r in rows:
            by_question.setdefault(r["test_id"], []).append(r)
        margins, lowest = [], 0
        for members in by_question.values():
            asked = next(r for r in members if r["is_asked"])
            others = [r[key] for r in members if not r["is_asked"]]
            margins.append(asked[key] - sum(others) / len(others))
            lowest += asked[key] <= min(r[key] for r in members)
        cells: dict = {}
        for r in rows:
            cells.setdefault((r["family"], r["value_of"]), {})[r["asked"]] = r[key]
        effects_ = [by[owner] - sum(v for a, v in by.items() if a != owner) / (len(by) - 1)
                    for (_, owner), by in cells.items() if owner in by and len(by) > 1]
        out.append(NameEffect(setting, _mean_se(margins), _mean_se(effects_), lowest / len(by_question),
                              len(by_question)))
    return NameEffectTable(out)


def name_effect(run: str, evaluation: str | None = None) -> NameEffectTable | Missing:
    """:func:`name_effects` of ``results/<run>/probe_binding/binding_matrix.json`` (05_evaluate writes it when the
    binding probe is evaluated)."""
    try:
        return name_effects(result_files.read_binding_matrix(run, evaluation)["rows"])
    except FileNotFoundError as e:
        return Missing(str(e))
