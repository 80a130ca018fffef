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
- Answer accuracy ``acc`` (PopQA's own measure, robust to answer format): 1 when a gold alias, normalised as for
  EM, occurs in the normalised prediction as whole words (``"paris"`` in ``"it is paris france"``, not in
  ``"parisian"``); a gold alias that normalises to nothing counts only against an equally empty prediction. EM
  implies acc; a gain in EM without one in acc is a gain in format, not in knowledge.
- :func:`aggregate` turns per-question scores into means x100 plus ``n``.

Answer kinds (``ANSWER_KINDS``, declared per dataset; the instruction that asks for each is in :mod:`prompts`):

- ``short``: a short phrase, scored as above.
- ``yes_no``: one of the dataset's labels (``yes``/``no``, or ``yes``/``no``/``maybe`` as PubMedQA allows);
  :func:`extract` maps the model's answer to a label by its first word, else the first label word in it, else
  nothing (scored wrong).
- ``multiple_choice``: the options are lettered A, B, … in the prompt and the gold answer is a letter;
  :func:`extract` takes a leading letter (``B``, ``(B)``, ``B.``) or one after "answer/choice/option (is)",
  else the (longest) option whose text the answer starts with, else a lone capital letter in its first 10
  characters (the public code's fallback), else nothing.

For both label kinds :func:`score` gives accuracy: em = f1 = precision = recall = 1 when the extracted label is
the gold one (a label is one word: token F1 could only repeat EM), and acc is that same accuracy.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Hashable, Iterable, Mapping, Sequence

METRICS = ("em", "acc", "f1", "precision", "recall")
ANSWER_KINDS = ("short", "yes_no", "multiple_choice")
YES_NO = ("yes", "no")
YES_NO_MAYBE = ("yes", "no", "maybe")
LETTERS = "ABCDEFGHIJ"        # option letters of multiple_choice (at most 10 options)
_LEADING_LETTER = re.compile(r"\(?([A-Ja-j])\)?(?=$|[\s.,:;)\]])")
_LONE_CAPITAL = re.compile(r"\b([A-J])\b")
_SAYS_LETTER = re.compile(r"\b(?:answer|choice|option)(?:\s+is)?\s*[:\-]?\s*\(?([A-Ja-j])\b", re.IGNORECASE)
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


def contains(prediction: str, gold: str) -> bool:
    """Whether the normalised ``gold`` occurs in the normalised ``prediction`` as whole words (both already
    normalised: :func:`normalize_answer`); an empty gold only in an empty prediction."""
    if not gold:
        return not prediction
    return f" {gold} " in f" {prediction} "


def score(prediction: str, answers: list[str]) -> dict[str, float]:
    """``{em, acc, f1, precision, recall}`` (0-1) of ``prediction`` against the gold ``answers`` (aliases)."""
    if isinstance(answers, str) or not answers:
        raise ValueError(f"answers must be a non-empty list of gold strings, got {answers!r}")
    pred = normalize_answer(prediction)
    golds = [normalize_answer(a) for a in answers]
    em = float(any(pred == g for g in golds))
    acc = float(any(contains(pred, g) for g in golds))
    f1, precision, recall = max((_f1(pred, g) for g in golds), key=lambda t: t[0])
    return {"em": em, "acc": acc, "f1": f1, "precision": precision, "recall": recall}


def check_kind(kind: str) -> str:
    """``kind`` if it is an answer kind, else a ValueError naming the kinds."""
    if kind not in ANSWER_KINDS:
        raise ValueError(f"answer kind {kind!r}: choose one of {list(ANSWER_KINDS)}")
    return kind


def labels(kind: str, choices: Sequence[str] = ()) -> tuple[str, ...]:
    """The answers a question of ``kind`` accepts: the yes/no labels (``choices``, default yes/no), the option
    letters of a multiple-choice question's ``choices``, or () for ``short`` (any phrase)."""
    if check_kind(kind) == "yes_no":
        return tuple(choices) or YES_NO
    if kind == "multiple_choice":
        return tuple(LETTERS[:len(choices)])
    return ()


def extract(kind: str, answer: str, choices: Sequence[str] = ()) -> str:
    """The answer of ``kind`` in the model's extracted answer text: the text itself (``short``), else a label of
    :func:`labels` or ``""`` when none can be found (module docstring)."""
    if check_kind(kind) == "short":
        return answer
    allowed = labels(kind, choices)
    text = answer.strip()
    if kind == "yes_no":
        words = normalize_answer(text).split()
        return words[0] if words and words[0] in allowed else next((w for w in words if w in allowed), "")
    lead = _LEADING_LETTER.match(text) or _SAYS_LETTER.search(text)
    if lead and lead.group(1).upper() in allowed:
        return lead.group(1).upper()
    said = _plain(text)
    options = [(len(_plain(o)), letter) for letter, o in zip(allowed, choices)
               if _plain(o) and (said == _plain(o) or said.startswith(_plain(o) + " "))]
    if options:                                  # the longest option the answer starts with
        return max(options)[1]
    return next((c for c in _LONE_CAPITAL.findall(text[:10]) if c in allowed), "")


def _plain(text: str) -> str:
    """Lower case, no punctuation, single spaces (articles kept: options differ by them)."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def gold_label(kind: str, answer: str, choices: Sequence[str] = ()) -> str:
    """A gold answer of a label kind in its canonical form (lower-case yes/no, an upper-case letter); ValueError
    when it is not one of the question's labels."""
    allowed = labels(kind, choices)
    canonical = answer.strip().lower() if kind == "yes_no" else answer.strip().upper()
    if canonical not in allowed:
        raise ValueError(f"gold answer {answer!r} is not one of the {kind} labels {list(allowed)}")
    return canonical


def score_kind(prediction: str, answers: list[str], kind: str = "short",
               choices: Sequence[str] = ()) -> dict[str, float]:
    """:func:`score` for an answer of ``kind``: accuracy of the extracted label for yes_no and multiple_choice."""
    if check_kind(kind) == "short":
        return score(prediction, answers)
    right = float(extract(kind, prediction, choices) in {gold_label(kind, a, choices) for a in answers})
    return {m: right for m in METRICS}


def majority_baseline(train_answers: Iterable[str], test_answers: Iterable[str]) -> dict:
    """The majority-class baseline of a label dataset: the most frequent gold label of the *training* questions
    (ties: the first seen) and its accuracy (×100) on the test questions, with the test label counts."""
    train, test = Counter(a.strip().lower() for a in train_answers), [a.strip().lower() for a in test_answers]
    if not train or not test:
        raise ValueError("majority_baseline needs training and test answers")
    label = train.most_common(1)[0][0]
    return {"label": label, "accuracy": 100.0 * sum(a == label for a in test) / len(test), "n": len(test),
            "test_counts": dict(Counter(test).most_common())}


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
