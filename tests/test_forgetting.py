"""06_analyze's drift study from written files (no model): the table, the paired general-ability changes and a
verdict that calls a significant loss a loss."""

from __future__ import annotations

import math

import pytest

from regrad_lib.evaluation import results
from regrad_lib.io import artifacts, paths, result_files
from regrad_lib.reporting import analysis, drift_report, plots

N, PASSAGES, GENERAL = 20, 8, 6


def _predictions(run: str, dataset: str, method: str, right: int, nll: float) -> None:
    rows = [{"test_id": i, "question": f"q{i}", "answers": [f"a{i}"], "prediction": f"a{i}" if i < right else "no",
             "generated": "", "passage_ids": [], "answer_nll": nll + 0.01 * i, "truncated_passages": 0}
            for i in range(N)]
    file, metrics = results.method_files(run, dataset, method)
    artifacts.write_jsonl(file, rows)
    scores = results.score_rows(rows)
    artifacts.write_json(metrics, {**scores, "persistent_unchanged": True} if method == "regrad" else scores)
    result_files.merge_table(paths.results_dir(run) / "summary.csv", result_files.SUMMARY_FIELDS,
                      [{"dataset": dataset, "method": method,
                        **{k: scores[k] for k in result_files.SUMMARY_FIELDS[2:]}}],
                      key=("dataset", "method"))


def _point(text: float, right: int, delta: float = 0.0) -> dict:
    texts = [text * (1 + 0.01 * i) for i in range(PASSAGES)]      # differences vary: a finite SE
    correct = [1.0 if i < right else 0.0 for i in range(GENERAL)]
    return {"general_text_nll": sum(texts) / PASSAGES, "general_em": 100 * right / GENERAL, "general_nll": 1.0,
            "general_n": GENERAL, "general_text_nlls": texts, "general_correct": correct,
            "general_answer_nlls": [1.0] * GENERAL, "delta_from_base": delta}


def _study(run: str, regrad_right: int, cpt_right: int, cpt_text: float, cpt_general_right: int,
           meta_text: float = 3.3, meta_general_right: int = GENERAL - 1) -> None:
    """The base and the meta-trained points differ (meta-training moved general ability: held-out text NLL 3.0 →
    ``meta_text``, one general question lost), so a reading that swaps them shows."""
    dataset = "probe"
    for method, right in (("closed_book", 1), ("rag", 15), ("regrad", regrad_right), ("cpt", cpt_right)):
        nll = {"closed_book": 4.0, "rag": 2.0}.get(method, 1.0 if right > N // 2 else 3.0)   # more right, lower NLL
        _predictions(run, dataset, method, right, nll)
    theta = 100.0
    artifacts.write_json(paths.drift_dir(run) / "general_set.json", {
        "settings": {}, "selection": {}, "theta_norm": theta, "passages": [], "questions": [],
        "points": {"base": _point(3.0, GENERAL), "meta": _point(meta_text, meta_general_right, delta=5.0)}})
    rows = [{"chunk": c, "documents": 10 * c, "questions": 5 * c, "knowledge_em": None if c == 0 else 10.0 * c,
             "delta_norm": 2.0 * c, "delta_from_base": 2.0 * c,
             **_point(3.0 + (cpt_text - 3.0) * c / 2, GENERAL - (GENERAL - cpt_general_right) * c // 2)}
            for c in range(3)]
    artifacts.write_json(paths.cpt_dir(run, dataset) / "drift.json",
                         {"settings": {"cpt": {"weights": "lora"}}, "stream": {}, "drift": rows, "theta_norm": theta})


def test_the_drift_table_holds_every_method_and_a_row_per_chunk(tiny_model_dir):
    _study("fg-table", regrad_right=18, cpt_right=2, cpt_text=3.5, cpt_general_right=0)
    table = drift_report.drift_table("fg-table", ["probe"])
    assert [(r.method, r.chunk) for r in table] == [("closed_book", None), ("rag", None), ("regrad", None),
                                                    ("cpt", 0), ("cpt", 1), ("cpt", 2)]
    regrad = table.rows_of("probe", "regrad")[0]
    assert (regrad.knowledge_em, regrad.delta_rel, regrad.from_base_rel) == (90.0, 0.0, 0.05)
    assert regrad.persistent.startswith("unchanged")
    assert [r.delta_rel for r in table.rows_of("probe", "cpt")] == [0.0, 0.02, 0.04]
    assert "| probe | cpt | 2 | 20 | 20.0 |" in table.to_markdown()
    fig = plots.knowledge_vs_general(table)
    assert len(fig.axes) == 3


def test_the_verdict_calls_a_significant_loss_a_loss_and_a_gain_a_gain():
    _study("fg-harm", regrad_right=18, cpt_right=2, cpt_text=3.5, cpt_general_right=0)
    table = drift_report.drift_table("fg-harm", ["probe"])
    changes = drift_report.general_changes(table)
    cpt = next(c for c in changes if c.kind == "cpt")
    assert cpt.text.mean == pytest.approx(0.5 * (1 + 0.01 * (PASSAGES - 1) / 2))
    assert (cpt.only_a, cpt.only_b) == (0, GENERAL)
    assert cpt.p == pytest.approx(2 * 0.5 ** GENERAL)
    # meta-trained − base, by hand: text (3.3 − 3.0)(1 + 0.01 i) averaged over i < 8; general questions: base
    # answers all 6, meta 5 (the one only the base answers is q5)
    meta = next(c for c in changes if c.kind == "meta")
    assert meta.text.mean == pytest.approx(0.3 * (1 + 0.01 * (PASSAGES - 1) / 2))
    assert (meta.em_a, meta.em_b, meta.only_a, meta.only_b) == (pytest.approx(500 / 6), 100.0, 0, 1)
    versus = next(c for c in changes if c.kind == "versus")                  # cpt after chunk 2 − meta
    assert versus.text.mean == pytest.approx(0.2 * (1 + 0.01 * (PASSAGES - 1) / 2))
    assert (versus.only_a, versus.only_b) == (0, GENERAL - 1)
    text = drift_report.verdict(drift_report.paired("fg-harm", ["probe"]), table, changes)
    assert "probe: regrad beats cpt" in text and "regrad beats rag" in text
    assert "verified unchanged, bit for bit" in text
    assert "is worse than" not in text and "not told apart" not in text
    said = _sentences(text)
    # SE of 0.5 (1 + 0.01 i): 0.005 × sd(0..7) / √8 = 0.005 × √6 / √8 = 0.0043
    assert "general ability degraded (probe: cpt after chunk 2 − before: held-out text NLL +0.5" in said["cpt"]
    assert said["cpt"].endswith("± 0.0043 nats; general EM 0.0 vs 100.0 (0 / 6 answered by one only, McNemar p = "
                                "0.031))")
    assert "; general ability degraded (probe: meta-trained (ReGrad's) − base: held-out text NLL +0.31" in said["meta"]
    assert "general EM 83.3 vs 100.0 (0 / 1 answered by one only" in said["meta"]
    assert said["versus"].startswith("After the stream, CPT's weights against ReGrad's: general ability lower (")
    assert "improved" not in text and "higher" not in text
    _study("fg-gain", regrad_right=2, cpt_right=18, cpt_text=2.5, cpt_general_right=GENERAL, meta_text=2.8,
           meta_general_right=GENERAL)
    table = drift_report.drift_table("fg-gain", ["probe"])
    text = drift_report.verdict(drift_report.paired("fg-gain", ["probe"]), table, drift_report.general_changes(table))
    assert "probe: regrad is worse than cpt (a significant loss)" in text
    assert "regrad is worse than rag (a significant loss)" in text
    assert "beats" not in text
    said = _sentences(text)
    assert "general ability improved (probe: cpt after chunk 2 − before: held-out text NLL -0.5" in said["cpt"]
    assert "; general ability improved (probe: meta-trained (ReGrad's) − base: held-out text NLL -0.207" in said["meta"]
    assert said["versus"].startswith("After the stream, CPT's weights against ReGrad's: general ability higher (")
    assert "degraded" not in text and "lower (" not in text


def _sentences(text: str) -> dict[str, str]:
    """The verdict's sentences on CPT's drift, on ReGrad's meta-training, on CPT against ReGrad."""
    parts = text.split(". ")
    return {"cpt": next(p for p in parts if "CPT moved its persistent weights" in p),
            "meta": next(p for p in parts if "Meta-training moved them" in p),
            "versus": next(p for p in parts if p.startswith("After the stream"))}


def test_nothing_to_show_is_said_not_raised():
    missing = drift_report.drift_table("fg-none", ["probe"])
    assert isinstance(missing, analysis.Missing) and "general_set.json not found" in missing.message
    assert isinstance(drift_report.paired("fg-none", ["probe"]), analysis.Missing)
    assert drift_report.verdict(drift_report.paired("fg-none", ["probe"]), missing,
                              drift_report.general_changes(missing)).startswith("No paired comparison")
    assert math.isnan(drift_report.general_change(
        drift_report.DriftRow("d", "cpt", 1, 1, None, 1.0, None, None, 0.0, 0.0, "", {"general_text_nlls": [1.0],
                                                                                    "general_correct": []}),
        drift_report.DriftRow("d", "cpt", 0, 0, None, 1.0, None, None, 0.0, 0.0, "", {"general_text_nlls": [1.0],
                                                                                    "general_correct": []}),
        "cpt", "one passage").text.se)
