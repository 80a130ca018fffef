"""frontier: regrad on several schemes' banks of one run, schemes.csv, the frontier table and figure."""

import json

import pytest
from test_evaluate import make_run

from regrad_lib.evaluation import evaluate, frontier
from regrad_lib.io import paths
from regrad_lib.reporting import analysis, bank_plots, effects, frontier_report

SCHEMES = ["fp32", "int8", "int4"]
RUN, DATASET = "frontiertest", "frontierqa"      # its own: test_evaluate's run would carry this module's results


@pytest.fixture(scope="module")
def run(tiny_model_dir):
    """A tiny run with fp32/int8/int4 banks (test_evaluate's recipe, under this module's names)."""
    return make_run(RUN, DATASET)


def test_evaluate_schemes_writes_resumes_and_reads_back(tiny_model_dir):
    run = f"{RUN}-fresh"                 # its own: the module's run holds other tests' scheme results in any order
    learner, items, _ = make_run(run, DATASET)
    assert isinstance(frontier_report.read_frontier(run, [DATASET]), analysis.Missing)
    rows = frontier.evaluate_all(run, [DATASET], SCHEMES, limit=5, learner=learner)
    assert [(r["scheme"], r["n"]) for r in rows] == [(s, 5) for s in SCHEMES]
    assert rows[0]["bytes_per_passage"] > rows[1]["bytes_per_passage"] > rows[2]["bytes_per_passage"]
    predictions = paths.scheme_predictions_file(run, DATASET, "int4")
    metrics = paths.scheme_metrics_file(run, DATASET, "int4")
    assert len(predictions.read_text().splitlines()) == 5
    assert json.loads(metrics.read_text())["scheme"] == "int4"
    # same settings: kept (no learner needed); other settings: recomputed
    again = frontier.evaluate_all(run, [DATASET], SCHEMES, limit=5, learner=lambda: pytest.fail("reloaded"))
    assert again == rows
    assert frontier.evaluate_all(run, [DATASET], [], learner=lambda: pytest.fail("loaded")) == []
    # the run's own regrad - no_update effect, for the ratio column
    evaluate.evaluate(run, DATASET, ["regrad", "no_update"], limit=5, learner=learner, scheme="fp32", overwrite=True)
    table = frontier_report.read_frontier(run, [DATASET])
    points = {p.scheme: p for p in table}
    assert [p.scheme for p in table] == SCHEMES                     # largest first
    assert points["fp32"].delta.mean == 0 and points["fp32"].mean_abs_delta == 0
    assert points["int4"].mean_abs_delta > points["int8"].mean_abs_delta > 0
    effect = effects.paired_nll_differences(run, DATASET, "regrad", "no_update")
    assert points["int4"].delta.n == 5 and points["int4"].effect == effect
    assert points["int4"].ratio == pytest.approx(points["int4"].mean_abs_delta / abs(effect.mean))
    assert points["int8"].em == rows[1]["em"]
    assert table.to_markdown().splitlines()[0].startswith("| dataset | scheme | bytes/passage |")
    fig = bank_plots.frontier(table)
    assert len(fig.axes) == 4 and fig.axes[0].get_xscale() == "log"
    assert [t.get_text() for t in fig.axes[0].texts] == SCHEMES[::-1]  # one label per scheme, smallest first
    assert list(fig.axes[2].lines[0].get_xdata()) == sorted(p.bytes_per_passage for p in table)
    assert len(fig.axes[1].lines) == 1 + 1                             # int8, int4 curve + the dashed target


def test_frontier_without_a_reference_bank(run):
    learner, _, _ = run
    frontier.evaluate_schemes(RUN, DATASET, ["int8"], limit=3, learner=learner, overwrite=True)
    table = frontier_report.read_frontier(RUN, [DATASET], reference="bf16")
    assert all(p.delta is None for p in table) and "–" in table.rows()[0]
    assert isinstance(frontier_report.read_frontier(RUN, ["nq"]), analysis.Missing)


def test_a_named_evaluation_keeps_its_scheme_results_apart(run):
    """05_evaluate with evaluation=<name> writes regrad-per-scheme under results/<run>/evaluations/<name>/ and
    06 reads them from there; the main results are left as they were."""
    learner, _, _ = run
    main_table = paths.schemes_file(RUN)
    before = main_table.read_text() if main_table.exists() else None
    rows = frontier.evaluate_all(RUN, [DATASET], ["int8"], limit=2, learner=learner, evaluation="side")
    assert paths.schemes_file(RUN, "side").is_file()
    assert "evaluations/side" in str(paths.scheme_predictions_file(RUN, DATASET, "int8", "side"))
    assert (main_table.read_text() if main_table.exists() else None) == before
    table = frontier_report.read_frontier(RUN, [DATASET], evaluation="side")
    assert [(p.scheme, p.n) for p in table] == [("int8", 2)] and rows[0]["n"] == 2
