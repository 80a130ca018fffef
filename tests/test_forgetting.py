"""06_analyze's drift study from written files (no model): the table, the paired general-ability changes, a verdict
that puts ReGrad's own drift first and calls a significant loss a loss, and the knowledge-against-drift frontier with
its answer to "at equal drift, does ReGrad inject more than CPT?"."""

from __future__ import annotations

import math

import pytest

from regrad_lib.evaluation import results
from regrad_lib.io import artifacts, paths, result_files
from regrad_lib.reporting import analysis, cpt_frontier, drift_report, plots

N, PASSAGES, GENERAL = 20, 8, 6
ARTICLES = ["a", "a", "b", "c", "d", "e", "f", "g"]      # two passages of one article: a cluster of two


def _predictions(run: str, dataset: str, method: str, right: int, nll: float, evaluation: str | None = None) -> None:
    rows = [{"test_id": i, "question": f"q{i}", "answers": [f"a{i}"], "prediction": f"a{i}" if i < right else "no",
             "generated": "", "passage_ids": [], "answer_nll": nll + 0.01 * i + (0.0 if i < right else 0.5),
             "truncated_passages": 0}
            for i in range(N)]
    file, metrics = results.method_files(run, dataset, method, evaluation)
    artifacts.write_jsonl(file, rows)
    scores = results.score_rows(rows)
    artifacts.write_json(metrics, {**scores, "persistent_unchanged": True} if method == "regrad" else scores)
    result_files.merge_table(paths.summary_file(run, evaluation), result_files.SUMMARY_FIELDS,
                             [{"dataset": dataset, "method": method,
                               **{k: scores[k] for k in result_files.SUMMARY_FIELDS[2:]}}],
                             key=("dataset", "method"))


def _point(text: float, right: int, answer: float = 1.0, delta: float = 0.0) -> dict:
    texts = [text * (1 + 0.01 * i) for i in range(PASSAGES)]      # differences vary: a finite SE
    answers = [answer * (1 + 0.02 * i) for i in range(GENERAL)]
    correct = [1.0 if i < right else 0.0 for i in range(GENERAL)]
    return {"general_text_nll": sum(texts) / PASSAGES, "general_acc": 100 * right / GENERAL,
            "general_em": 100 * right / GENERAL, "general_nll": sum(answers) / GENERAL, "general_n": GENERAL,
            "general_text_nlls": texts, "general_correct": correct, "general_accurate": correct,
            "general_answer_nlls": answers, "delta_from_base": delta}


def _general(run: str, evaluation: str | None, meta_text: float = 3.0, meta_answer: float = 1.0) -> None:
    artifacts.write_json(paths.general_set_file(run, evaluation), {
        "settings": {"same": True}, "selection": {}, "theta_norm": 100.0, "lora_norm": 10.0,
        "passages": [{"id": str(i), "title": t, "text": ""} for i, t in enumerate(ARTICLES)], "questions": [],
        "points": {"base": _point(3.0, GENERAL), "meta": _point(meta_text, GENERAL, meta_answer, delta=5.0)}})


def _stream(run: str, dataset: str, evaluation: str | None, cpt_text: float, cpt_general_right: int,
            cpt_answer: float = 1.0, knowledge: float = 10.0, **setting) -> None:
    rows = [{"chunk": c, "documents": 10 * c, "questions": 5 * c, "steps": 3 * c,
             "knowledge_acc": None if c == 0 else knowledge * c, "knowledge_em": None if c == 0 else knowledge * c,
             "knowledge_nll": None if c == 0 else 3.0 - 0.5 * c, "delta_norm": 2.0 * c, "delta_from_base": 2.0 * c,
             **_point(3.0 + (cpt_text - 3.0) * c / 2, GENERAL - (GENERAL - cpt_general_right) * c // 2,
                      1.0 + (cpt_answer - 1.0) * c / 2)}
            for c in range(3)]
    cpt = {"weights": "lora", "objective": "replay", "learning_rate": 1e-3, "epochs_per_chunk": 2, "chunks": 2,
           "batch_size": 8, "seed": 42, **setting}
    artifacts.write_json(paths.drift_file(run, dataset, evaluation),
                         {"settings": {"cpt": cpt}, "stream": {}, "drift": rows, "theta_norm": 100.0,
                          "trained_norm": 10.0})


def _study(run: str, regrad_right: int, cpt_right: int, cpt_text: float, cpt_general_right: int,
           cpt_answer: float = 1.0) -> None:
    dataset = "probe"
    for method, right in (("closed_book", 1), ("rag", 15), ("regrad", regrad_right), ("cpt", cpt_right)):
        nll = {"closed_book": 4.0, "rag": 2.0}.get(method, 1.0 if right > N // 2 else 3.0)   # more right, lower NLL
        _predictions(run, dataset, method, right, nll)
    _general(run, None)
    _stream(run, dataset, None, cpt_text, cpt_general_right, cpt_answer)


def test_the_drift_table_holds_every_method_and_a_row_per_chunk(tiny_model_dir):
    _study("fg-table", regrad_right=18, cpt_right=2, cpt_text=3.5, cpt_general_right=0)
    table = drift_report.drift_table("fg-table", ["probe"])
    assert [(r.method, r.chunk) for r in table] == [("closed_book", None), ("rag", None), ("regrad", None),
                                                    ("cpt", 0), ("cpt", 1), ("cpt", 2)]
    regrad = table.rows_of("probe", "regrad")[0]
    assert (regrad.knowledge_acc, regrad.delta_rel, regrad.from_base_rel, regrad.from_base_rel_trained) == \
        (90.0, 0.0, 0.05, 0.5)
    assert regrad.persistent.startswith("unchanged")
    cpt = table.rows_of("probe", "cpt")
    assert [r.delta_rel for r in cpt] == [0.0, 0.02, 0.04] and [r.delta_rel_trained for r in cpt] == [0.0, 0.2, 0.4]
    assert "| probe | cpt | 2 | 20 | 20.0 | 20.0 |" in table.to_markdown()
    assert table.articles == ARTICLES
    fig = plots.knowledge_vs_general(table)
    assert len(fig.axes) == 3


def test_the_verdict_puts_regrads_drift_first_and_calls_a_significant_loss_a_loss():
    _study("fg-harm", regrad_right=18, cpt_right=2, cpt_text=3.5, cpt_general_right=0, cpt_answer=2.0)
    table = drift_report.drift_table("fg-harm", ["probe"])
    changes = drift_report.general_changes(table)
    cpt = next(c for c in changes if c.kind == "cpt")
    assert cpt.text.mean == pytest.approx(0.5 * (1 + 0.01 * (PASSAGES - 1) / 2))
    assert cpt.acc_only == (0, GENERAL) and cpt.acc_p == pytest.approx(2 * 0.5 ** GENERAL)
    assert cpt.answer.mean == pytest.approx(1.0 * (1 + 0.02 * (GENERAL - 1) / 2))
    calls = drift_report.holm_calls(changes)
    assert next(c for c in calls if c.change is cpt).direction == "degraded"
    text = drift_report.verdict(drift_report.paired("fg-harm", ["probe"]), table, changes)
    assert text.startswith("ReGrad's persistent weights (the meta-trained LoRA; verified unchanged, bit for bit")
    assert "regrad beats cpt on knowledge" in text and "Holm-corrected across the" in text
    assert "probe: CPT moved its persistent weights" in text and "general ability degraded" in text
    _study("fg-gain", regrad_right=2, cpt_right=18, cpt_text=2.5, cpt_general_right=GENERAL, cpt_answer=0.5)
    table = drift_report.drift_table("fg-gain", ["probe"])
    text = drift_report.verdict(drift_report.paired("fg-gain", ["probe"]), table, drift_report.general_changes(table))
    assert "regrad is worse than cpt on knowledge" in text and "general ability improved" in text


def test_the_text_nll_se_is_clustered_by_article():
    _study("fg-cluster", regrad_right=18, cpt_right=2, cpt_text=3.5, cpt_general_right=0)
    table = drift_report.drift_table("fg-cluster", ["probe"])
    stream = table.rows_of("probe", "cpt")
    clustered = drift_report.general_change(stream[-1], stream[0], "cpt", "x", ARTICLES).text
    plain = drift_report.general_change(stream[-1], stream[0], "cpt", "x", None).text
    assert clustered.mean == plain.mean and clustered.se != plain.se


def test_nothing_to_show_is_said_not_raised():
    missing = drift_report.drift_table("fg-none", ["probe"])
    assert isinstance(missing, analysis.Missing) and "general_set.json not found" in missing.message
    assert isinstance(drift_report.paired("fg-none", ["probe"]), analysis.Missing)
    assert drift_report.verdict(drift_report.paired("fg-none", ["probe"]), missing,
                                drift_report.general_changes(missing)).startswith("No drift measures")
    assert cpt_frontier.verdict("fg-none", cpt_frontier.frontier("fg-none", ["probe"], "cpt")).startswith("No frontier")


def _frontier_run(run: str, arm_text: float, arm_answer: float, arm_right: int) -> None:
    """Evaluation 'cpt' (regrad 18/20 right, its meta weights drifting +0.1 nats of text from base; CPT drifting far)
    and one arm beside it (another CPT setting with its own drift and knowledge)."""
    dataset = "probe"
    for method, right in (("closed_book", 1), ("rag", 15), ("regrad", 18), ("regrad_icl", 19), ("cpt", 4),
                          ("cpt_rag", 12)):
        _predictions(run, dataset, method, right, 1.0 if right > N // 2 else 3.0, "cpt")
    _general(run, "cpt", meta_text=3.1, meta_answer=1.2)
    _stream(run, dataset, "cpt", cpt_text=4.0, cpt_general_right=2, cpt_answer=2.0)
    _general(run, "cpt-lora-raw", meta_text=3.1, meta_answer=1.2)
    for method, right in (("cpt", arm_right), ("cpt_rag", arm_right)):
        _predictions(run, dataset, method, right, 1.0 if right > N // 2 else 3.0, "cpt-lora-raw")
    _stream(run, dataset, "cpt-lora-raw", cpt_text=arm_text, cpt_general_right=GENERAL, cpt_answer=arm_answer,
            objective="raw", knowledge=5.0)


def test_the_frontier_pairs_regrad_with_the_best_cpt_within_its_drift(tiny_model_dir):
    _frontier_run("fg-front", arm_text=3.05, arm_answer=1.0, arm_right=3)
    table = cpt_frontier.frontier("fg-front", ["probe"], "cpt")
    assert cpt_frontier.arms("fg-front", "cpt") == ["cpt-lora-raw"]
    labels = [p.label for p in table]
    assert labels[:5] == ["closed_book", "rag", "regrad", "regrad_icl", "cpt lora-replay lr 0.001 ×2, seed 42, chunk 1"]
    assert "cpt_rag lora-raw lr 0.001 ×2, seed 42" in labels
    regrad = next(p for p in table if p.method == "regrad")
    assert regrad.text.mean == pytest.approx(0.1 * (1 + 0.01 * (PASSAGES - 1) / 2)) and regrad.knowledge_acc == 90.0
    found = {(m.regrad.method, m.cpt.evaluation, m.within) for m in cpt_frontier.matches(table)}
    assert found == {("regrad", "cpt-lora-raw", True), ("regrad_icl", "cpt-lora-raw", True)}
    text = cpt_frontier.verdict("fg-front", table)
    assert "probe, regrad against cpt at equal drift — yes: ReGrad injects more" in text
    assert "acc 90.0 vs 15.0" in text
    fig = plots.cpt_frontier(table)
    assert len(fig.axes) == 4
    # every CPT drifts more than ReGrad: equal drift is not observed, the least-drifting one is the comparison
    _frontier_run("fg-far", arm_text=3.6, arm_answer=1.5, arm_right=19)
    text = cpt_frontier.verdict("fg-far", cpt_frontier.frontier("fg-far", ["probe"], "cpt"))
    assert "none of the 2 whole CPT streams stays within ReGrad's drift" in text
    assert math.isfinite(next(p for p in cpt_frontier.frontier("fg-far", ["probe"], "cpt")
                              if p.method == "cpt").text.se)
