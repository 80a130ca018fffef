"""Answer metrics: normalisation, EM/F1/precision/recall over aliases, yes/no rule, aggregation."""

from __future__ import annotations

import pytest

from regrad_lib.data import metrics
from regrad_lib.data.metrics import (
    aggregate,
    by_group,
    normalize_answer,
    score,
    score_predictions,
)


@pytest.mark.parametrize("raw, want", [
    ("The Eiffel Tower", "eiffel tower"),          # case + article
    ("an apple a day", "apple day"),               # articles a/an
    ("theory of the atom", "theory of atom"),      # 'the' only as a word
    ("U.S.A.!", "usa"),                            # punctuation dropped, not replaced
    ("  New\t York \n City ", "new york city"),    # whitespace squeezed
    ("Port-of-Spain", "portofspain"),
    ("", ""),
])
def test_normalize_answer(raw, want):
    assert normalize_answer(raw) == want


def test_exact_match_after_normalisation():
    assert score("the Eiffel tower.", ["Eiffel Tower"]) == {"em": 1.0, "acc": 1.0, "f1": 1.0, "precision": 1.0,
                                                            "recall": 1.0}


def test_precision_recall_hand_computed():
    # prediction tokens: barack obama was president (4); gold: president barack hussein obama ii (5)
    # common: barack, obama, president = 3 -> precision 3/4, recall 3/5, f1 = 2*.75*.6/1.35 = 2/3
    s = score("Barack Obama was president", ["President Barack Hussein Obama II"])
    assert s["em"] == 0.0
    assert s["precision"] == pytest.approx(0.75) and s["recall"] == pytest.approx(0.6)
    assert s["f1"] == pytest.approx(2 / 3)


def test_repeated_tokens_count_once_per_match():
    s = score("paris paris", ["paris"])
    assert s["precision"] == 0.5 and s["recall"] == 1.0


def test_best_alias_drives_f1_precision_recall_together():
    # alias 1: p=1/2, r=1 (f1 2/3); alias 2: p=1, r=2/5 (f1 4/7): all three come from alias 1,
    # not precision from alias 2 and recall from alias 1
    s = score("new york", ["york", "new york state city extra"])
    assert s["f1"] == pytest.approx(2 / 3) and s["precision"] == 0.5 and s["recall"] == 1.0
    assert score("NYC", ["New York City", "nyc"])["em"] == 1.0


def test_several_aliases_em_is_max():
    assert score("Port of Spain", ["Port-of-Spain", "Port of Spain"])["em"] == 1.0
    assert score("Lyon", ["Paris", "Marseille"]) == {"em": 0.0, "acc": 0.0, "f1": 0.0, "precision": 0.0, "recall": 0.0}


@pytest.mark.parametrize("pred, gold, f1", [
    ("yes", ["no"], 0.0), ("no", ["yes"], 0.0), ("Yes.", ["yes"], 1.0),
    ("yes it is", ["yes"], 0.0),           # gold is special, prediction differs: no partial credit
    ("yes", ["yes it is"], 0.0),           # prediction is special, gold differs
    ("noanswer", ["no answer"], 0.0),
    ("no", ["No", "never"], 1.0),
])
def test_yes_no_noanswer_rule(pred, gold, f1):
    s = score(pred, gold)
    assert s["f1"] == f1 and s["precision"] == f1 and s["recall"] == f1


def test_public_evaluate_rules_for_a_bare_a_and_empty_answers():
    """As the public evaluate.py: a bare "a" keeps its article; two empty normalisations: EM 1, F1 0."""
    assert normalize_answer("A") == "a" and normalize_answer("A.") == "a" and normalize_answer(" a ") == ""
    assert normalize_answer("Vitamin A") == "vitamin"      # an article inside longer text still goes
    assert score("A", ["a"]) == {"em": 1.0, "acc": 1.0, "f1": 1.0, "precision": 1.0, "recall": 1.0}
    assert score("The", ["an"]) == {"em": 1.0, "acc": 1.0, "f1": 0.0, "precision": 0.0, "recall": 0.0}
    assert score("", ["Paris"])["f1"] == 0.0


@pytest.mark.parametrize("prediction, golds, acc", [
    ("He was born in Paris, France.", ["Paris"], 1.0),       # contained after normalisation, whole words
    ("Parisian", ["Paris"], 0.0),                             # a word that merely starts with the answer
    ("new york city", ["York"], 1.0),                         # a whole word inside
    ("the new-york", ["New York"], 0.0),                      # punctuation removed joins "newyork": not the words
    ("A violin and a cello", ["the cello"], 1.0),             # articles dropped on both sides
    ("cellist", ["cello", "violin"], 0.0),
    ("", ["Paris"], 0.0),
    ("", ["the"], 1.0),                                       # an empty gold only matches an empty answer
    ("Paris", ["the"], 0.0),
])
def test_answer_accuracy_is_a_whole_word_containment_of_any_alias(prediction, golds, acc):
    s = score(prediction, golds)
    assert s["acc"] == acc
    assert s["acc"] >= s["em"]            # an exact answer always contains itself


def test_answer_accuracy_is_the_label_accuracy_for_label_kinds():
    assert metrics.score_kind("Yes, probably", ["no"], "yes_no")["acc"] == 0.0        # "no" is not the first label
    assert metrics.score_kind("B", ["B"], "multiple_choice", ["x", "y"])["acc"] == 1.0
    agg = metrics.aggregate([score("in Paris", ["Paris"]), score("Paris", ["Paris"]), score("Rome", ["Paris"])])
    assert agg["em"] == pytest.approx(100 / 3) and agg["acc"] == pytest.approx(200 / 3)


def test_answers_must_be_a_list():
    with pytest.raises(ValueError, match="non-empty list"):
        score("x", [])
    with pytest.raises(ValueError, match="non-empty list"):
        score("x", "x")  # type: ignore[arg-type]


def test_aggregate_is_mean_times_100():
    agg = aggregate([score("x y", ["x y"]), score("x", ["x y"]), score("z", ["y"])])
    assert agg["n"] == 3
    assert agg["em"] == pytest.approx(100 / 3)
    assert agg["precision"] == pytest.approx(200 / 3)
    assert agg["recall"] == pytest.approx(50)
    assert agg["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="no scores"):
        aggregate([])


def test_score_predictions_and_missing_key():
    golds = {"q1": ["Paris"], "q2": ["Lyon", "Lyons"]}
    assert score_predictions({"q1": "paris", "q2": "lyons", "extra": "x"}, golds)["em"] == 100.0
    with pytest.raises(KeyError, match="'q2'"):
        score_predictions({"q1": "paris"}, golds)


def test_by_group_per_dataset_and_overall():
    rows = [dict(score("a", ["a"]), dataset="hotpotqa"),
            dict(score("a", ["a"]), dataset="popqa"), dict(score("b", ["c"]), dataset="popqa"),
            dict(score("b", ["c"]), dataset="popqa"), dict(score("b", ["b"]), dataset="popqa")]
    table = by_group(rows, "dataset")
    assert table["hotpotqa"]["em"] == 100.0 and table["popqa"]["em"] == 50.0 and table["popqa"]["n"] == 4
    assert table["overall"]["em"] == pytest.approx(60.0) and table["overall"]["n"] == 5
    assert table["macro_overall"]["em"] == pytest.approx(75.0)
    with pytest.raises(KeyError, match="'dataset'"):
        by_group([score("a", ["a"])], "dataset")
