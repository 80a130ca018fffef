"""How CPT's settings are chosen (regrad_lib/cpt/selection.py, experiments/cpt_grid.py): the rule picks by
hand-checked numbers, the grid is the committed one, and the validation stream holds no question of a person
meta-training used."""

from __future__ import annotations

import math

import pytest

from experiments import cpt_grid
from regrad_lib.cpt import drift, selection
from regrad_lib.io import artifacts, paths


def _point(label, rate, epochs, acc, nll, text, answer):
    return selection.GridPoint(label, rate, epochs, acc, nll, text, answer)


def test_the_ceiling_is_regrads_own_drift_from_the_base_model_floored_at_zero():
    ceiling = selection.Ceiling.of_regrad({"general_text_nll": 3.00, "general_nll": 2.00},
                                          {"general_text_nll": 3.05, "general_nll": 1.90})
    assert ceiling.text == pytest.approx(0.05) and ceiling.answer == 0.0      # meta improved answers: no credit


def test_the_rule_picks_the_most_knowledge_under_the_ceiling_by_hand_checked_numbers():
    ceiling = selection.Ceiling(text=0.05, answer=0.0)
    grid = [_point("A", 1e-4, 1, 10.0, 3.0, 0.01, -0.10),     # under: acc 10
            _point("B", 3e-4, 2, 30.0, 2.5, 0.04, 0.00),      # under (the ceiling itself is allowed): acc 30, NLL 2.5
            _point("C", 1e-3, 2, 50.0, 2.0, 0.20, 0.30),      # the most knowledge, but over the ceiling (text, answer)
            _point("D", 3e-4, 4, 30.0, 2.4, 0.05, -0.05),     # under: acc 30, NLL 2.4 (beats B on NLL)
            _point("E", 1e-4, 4, 30.0, 2.4, 0.03, -0.20),     # under: ties D on acc and NLL, lower rate: chosen
            _point("F", 3e-3, 1, 40.0, 2.2, 0.02, 0.01)]      # over by the answer NLL alone (0.01 > 0)
    choice = selection.choose(grid, ceiling)
    assert choice.point.label == "E" and choice.admitted
    assert choice.admitted_labels == ("A", "B", "D", "E")
    assert "E (learning rate 0.0001, 4 epoch(s) per chunk)" in choice.describe(ceiling)
    # without E, D wins B on the lower answer NLL at equal accuracy
    assert selection.choose([p for p in grid if p.label != "E"], ceiling).point.label == "D"
    # nothing under a zero ceiling: the least excess (A: 0.01 nats over, F: 0.02, E: 0.03, ...)
    none = selection.choose(grid, selection.Ceiling(0.0, 0.0))
    assert none.point.label == "A" and not none.admitted and none.admitted_labels == ()
    assert selection.Ceiling(0.0, 0.0).excess(grid[2]) == pytest.approx(0.30)
    assert "no setting was under the ceiling" in none.describe(selection.Ceiling(0.0, 0.0))
    nan_nll = _point("G", 1e-4, 1, 30.0, math.nan, 0.0, 0.0)         # an unknown NLL never wins a tie
    assert selection.choose([nan_nll, grid[4]], ceiling).point.label == "E"
    with pytest.raises(ValueError, match="no measured point"):
        selection.choose([], ceiling)


def test_the_committed_grid_is_at_least_four_rates_by_three_epochs_per_arm_it_chooses():
    found = cpt_grid.points()
    assert len({p["label"] for p in found}) == len(found)
    main = [p["cpt"] for p in found if p["arm"] == "lora-replay"]
    assert len({c["learning_rate"] for c in main}) >= 4 and len({c["epochs_per_chunk"] for c in main}) >= 3
    assert all(c["weights"] == "lora" and c["objective"] == "replay" and c["chunks"] == 4 for c in main)
    assert set(cpt_grid.SHARED.values()) <= {p["arm"] for p in found}


def test_the_validation_stream_leaves_out_every_person_meta_training_used(tiny_model_dir, monkeypatch):
    source = artifacts.read_json(paths.resolve("data/sample/probe/train.json"))[:12]
    artifacts.write_json(paths.augmented_file("probe", "train_all"), [
        {"test_id": i, "question": q["question"], "answers": q["answer"], "passages": [f"text {i}", "x", "y"],
         "passage_ids": [q["passage_id"], "x", "y"], "titles": [q["entity"], "", ""], "scores": [3.0, 2.0, 1.0]}
        for i, q in enumerate(source)])
    monkeypatch.setattr(drift, "meta_trained", lambda run: {("probe", 3), ("popqa", 0)})   # person 001's 2nd question
    items = cpt_grid.validation_items("any", people=3)
    assert [t.test_id for t in items] == [0, 1, 4, 5, 6, 7]          # persons 000, 002, 003: both questions each
