"""Does an answer carry *this person's* fact? The binding probe's answer shares, for 06_analyze.

Each question of the binding probe (:mod:`regrad_lib.data.probe_binding`) has the asked person and two distractor people
of the same family in its top-k, with the same relation and other values. Per method, every answer is sorted into
one of three kinds by the EM rule (:func:`metrics.score`): the asked person's value, a distractor's value, neither.
The name-swap control reads families: the three members' questions share the same passages and differ only in the
name asked, so a family answered with one value for all members is *name-blind*, and one answered with each member's
own value is *bound*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from regrad_lib.answering.specs import METHODS
from regrad_lib.data import metrics
from regrad_lib.reporting.analysis import Missing, _Markdown, read_predictions

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
class BindingTable(_Markdown):
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
            rows = read_predictions(run, DATASET, method, evaluation)
        except FileNotFoundError:
            continue
        out.append(method_shares(method, rows, questions))
    if not out:
        return Missing(f"no predictions of {DATASET} (05_evaluate with datasets including {DATASET!r})")
    return BindingTable(out)
