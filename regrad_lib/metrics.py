"""Answer scoring as method.md "Evaluation": SQuAD/HotpotQA normalisation, EM, F1, precision, recall.

- :func:`score` scores one prediction against its gold aliases (each value 0-1).
  EM is the max over aliases. F1, precision and recall come from ONE alias, the one with the highest F1
  (the first such alias on ties), as HotpotQA's evaluation does: precision and recall then describe the
  same match that F1 reports, instead of maxima taken from different aliases.
- yes/no/noanswer rule (HotpotQA): when the normalised prediction or gold is one of ``yes``, ``no``,
  ``noanswer`` and the two differ, F1 = precision = recall = 0 for that alias.
- As the public evaluate.py (and unlike SQuAD's script): a text that is exactly ``"a"`` after lower-casing and
  punctuation removal keeps it (answer "A" stays "a"); two answers that both normalise to nothing score
  F1 = 0 (no shared token) while EM = 1 (equal strings). An empty prediction earns no F1.
- :func:`aggregate` turns per-question scores into means x100 plus ``n``.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Hashable, Iterable, Mapping

METRICS = ("em", "f1", "precision", "recall")
_SPECIAL = ("yes", "no", "noanswer")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the (a bare "a" stays), squeeze whitespace."""
    text = s.lower().translate(_PUNCTUATION)
    return " ".join((text if text == "a" else _ARTICLES.sub(" ", text)).split())


def _f1(prediction: str, gold: str) -> tuple[float, float, float]:
    """(f1, precision, recall) of normalised strings, with the yes/no/noanswer rule."""
    if (prediction in _SPECIAL or gold in _SPECIAL) and prediction != gold:
        return 0.0, 0.0, 0.0
    pred_tokens, gold_tokens = prediction.split(), gold.split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0, 0.0, 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall), precision, recall


def score(prediction: str, answers: list[str]) -> dict[str, float]:
    """``{em, f1, precision, recall}`` (0-1) of ``prediction`` against the gold ``answers`` (aliases)."""
    if isinstance(answers, str) or not answers:
        raise ValueError(f"answers must be a non-empty list of gold strings, got {answers!r}")
    pred = normalize_answer(prediction)
    golds = [normalize_answer(a) for a in answers]
    em = float(any(pred == g for g in golds))
    f1, precision, recall = max((_f1(pred, g) for g in golds), key=lambda t: t[0])
    return {"em": em, "f1": f1, "precision": precision, "recall": recall}


def aggregate(scores: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric x100, plus ``n`` (the number of scores)."""
    rows = list(scores)
    if not rows:
        raise ValueError("aggregate() got no scores: nothing was evaluated")
    out: dict[str, float] = {m: 100.0 * sum(float(r[m]) for r in rows) / len(rows) for m in METRICS}
    out["n"] = len(rows)
    return out


def score_predictions(predictions: Mapping[Hashable, str], golds: Mapping[Hashable, list[str]]) -> dict[str, float]:
    """Aggregate scores of ``predictions[key]`` against ``golds[key]`` over every key of ``golds``."""
    missing = [k for k in golds if k not in predictions]
    if missing:
        raise KeyError(f"{len(missing)} of {len(golds)} gold keys have no prediction, e.g. {missing[:5]!r}: "
                       "predict every question, or pass only the golds that were predicted")
    return aggregate(score(predictions[k], golds[k]) for k in golds)


def by_group(rows: Iterable[Mapping], key: str = "dataset", overall: str | None = "overall") -> dict[str, dict]:
    """Aggregate per value of ``rows[i][key]`` (rows carry ``em``/``f1``/``precision``/``recall``).

    With ``overall`` set, also adds that entry: the pooled mean over every row (each question weighs the same),
    and ``macro_<overall>``: the unweighted mean of the group means (each group weighs the same).
    """
    groups: dict[str, list[Mapping]] = {}
    for r in rows:
        if key not in r:
            raise KeyError(f"row {dict(r)!r} has no {key!r}: every row needs the grouping key")
        groups.setdefault(str(r[key]), []).append(r)
    out = {g: aggregate(rs) for g, rs in groups.items()}
    if overall is not None and groups:
        if overall in out:
            raise ValueError(f"a group is named {overall!r}: pass another overall= name")
        per_group = list(out.values())
        pooled = aggregate(r for rs in groups.values() for r in rs)
        macro = {m: sum(a[m] for a in per_group) / len(per_group) for m in METRICS}
        macro["n"] = pooled["n"]
        out[overall] = pooled
        out[f"macro_{overall}"] = macro
    return out
