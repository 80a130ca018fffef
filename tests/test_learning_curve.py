"""The learning curve's report (reporting/learning_curve): points read back as runs, paired gaps and their trend,
checked against hand computations."""

import dataclasses
import math

import pytest

from regrad_lib.io import artifacts, paths
from regrad_lib.reporting import learning_curve


def test_the_weighted_line_matches_a_hand_computation():
    # equal SEs: ordinary least squares. x̄ = 2, ȳ = 12.5/3; Sxx = 2, Sxy = (-1)(2 - ȳ) + (1)(6.5 - ȳ) = 4.5
    c, s, s_se, _ = learning_curve.fit([(1, 2, 1), (2, 4, 1), (3, 6.5, 1)])
    assert s == pytest.approx(2.25) and c == pytest.approx(12.5 / 3 - 4.5)
    assert s_se == pytest.approx(math.sqrt(1 / 2))            # se² / Sxx with se = 1
    # a point with twice the SE weighs a quarter: slope through (0, 0) w 1, (1, 1) w 1, (2, 4) w 1/4
    # Sw = 2.25, Sx = 1.5, Sy = 2, Sxx = 2, Sxy = 3 -> s = (2.25·3 − 1.5·2) / (2.25·2 − 2.25) = 3.75 / 2.25
    _, s, _, _ = learning_curve.fit([(0, 0, 1), (1, 1, 1), (2, 4, 2)])
    assert s == pytest.approx(3.75 / 2.25)
    assert learning_curve.fit([(0, 0, 1), (1, 1, 1)]) is None          # two points: no trend claimed
    assert learning_curve.fit([(0, 0, 1), (1, 1, 0), (2, 2, 1)]) is None


def _point(run, step, tasks, methods, answers=("x", "y", "z", "w")):
    name = f"{run}-{step:03d}"
    artifacts.write_json(paths.train_summary_file(name),
                         {"kept_step_of": run, "steps": step, "tasks": tasks, "selection": "last"})
    for method, predictions in methods.items():
        artifacts.write_jsonl(paths.predictions_file(name, "probe", method),
                              [{"test_id": i, "question": f"q{i}", "answers": [a], "prediction": p,
                                "answer_nll": nll} for i, (a, (p, nll)) in enumerate(zip(answers, predictions))])
    return name


def test_points_scores_and_gaps_are_read_back_and_paired_with_the_base_point(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    rag = [("it is x", 2.0), ("no", 2.0), ("no", 2.0), ("no", 2.0)]                    # acc 1/4, EM 0
    base = _point("c", 30, 120, {"rag": rag, "regrad": [("x", 1.0), ("y", 1.0), ("no", 3.0), ("no", 1.0)]})
    _point("c", 60, 240, {"regrad": [("x", 1.0), ("y", 1.0), ("z", 1.0), ("no", 1.0)]})
    _point("c", 120, 480, {"regrad": [("x", 0.5), ("y", 0.5), ("z", 0.5), ("w", 0.5)]})
    curve = learning_curve.collect(["c"], [("probe", "dev")], ("probe", "dev"), base_point=base)
    score = {(s.step, s.method): s for s in curve.scores}
    assert score[(30, "rag")].acc == 25.0 and score[(30, "rag")].em == 0.0          # contained, not exact
    assert score[(60, "rag")].acc == 25.0                                           # rag read from the base point
    assert score[(60, "regrad")].acc == 75.0 and score[(60, "regrad")].nll == 1.0
    gap = {g.step: g for g in curve.gaps}
    # step 30: regrad − rag per question: 0, +100, 0, 0 -> +25 ± 25 (sd 50, n 4); only 1 / 0
    assert gap[30].acc == pytest.approx(25.0) and gap[30].acc_se == pytest.approx(25.0)
    assert (gap[30].only_a, gap[30].only_b) == (1, 0) and gap[30].p == 1.0
    # NLL: 1-2, 1-2, 3-2, 1-2 = -1, -1, +1, -1: mean -0.5, sd 1, SE 0.5
    assert gap[30].nll == pytest.approx(-0.5) and gap[30].nll_se == pytest.approx(0.5)
    assert gap[120].acc == pytest.approx(75.0)
    [t] = curve.trends
    assert (t.a, t.b) == ("regrad", "rag") and t.slope > 0
    # rag answers 25 % at the last point: regrad − rag lies within −25 … +75, whatever a line predicts
    assert t.possible == (-25.0, 75.0)
    assert t.at[100000][0] > 75.0 and "beyond the possible -25.0 … +75.0" in learning_curve._predicted(t, 100000)
    assert "beyond" not in learning_curve._predicted(dataclasses.replace(t, possible=(-1e9, 1e9)), 100000)
    text = learning_curve.markdown(curve)
    assert "probe (dev, n = 4)" in text and "regrad − rag" in text and "points per tenfold tasks" in text
