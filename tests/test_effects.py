"""effects: paired answer-NLL differences and paired EM with McNemar's exact test (hand-computed), verdict, seeds."""

import math

import pytest

from regrad_lib import analysis, effects
from regrad_lib.artifacts import write_jsonl, write_text

# per test_id: (answer_nll, prediction) of each method; gold answer "x" everywhere
ROWS = {"regrad": {"q1": (1.0, "x"), "q2": (2.0, "x"), "q3": (3.0, "y"), "q4": (0.5, "x")},
        "shift": {"q1": (1.5, "y"), "q2": (1.5, "x"), "q3": (4.0, "y")},           # q4 unmatched
        "no_update": {"q1": (1.0, "y"), "q2": (2.5, "y"), "q3": (3.5, "x"), "q4": (1.5, "y")}}
SUMMARY = "dataset,method,em,f1,precision,recall,nll,n\n" + "".join(
    f"popqa,{m},{em},{em},{em},{em},1.0,4\n" for m, em in (("regrad", 75.0), ("shift", 25.0), ("no_update", 25.0)))


def write_run(run, rows=ROWS, dataset="popqa", summary=SUMMARY, evaluation=None):
    write_text(analysis.summary_file(run, evaluation), summary)
    for method, items in rows.items():
        write_jsonl(analysis.predictions_file(run, dataset, method, evaluation),
                    [{"test_id": k, "question": f"Q {k}?", "answers": ["x"], "prediction": p, "answer_nll": v}
                     for k, (v, p) in items.items()])


@pytest.fixture()
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    write_run("r")
    return "r"


def test_paired_differences_hand_computed(run):
    d = effects.paired_nll_differences(run, "popqa", "regrad", "shift")
    # matched q1..q3: diffs -0.5, +0.5, -1.0 -> mean -1/3; sample var = ((-1/6)^2+(5/6)^2+(-2/3)^2)/2 = 7/12
    assert d.n == 3 and d.n_lower == 2
    assert d.mean == pytest.approx(-1 / 3)
    assert d.se == pytest.approx(math.sqrt(7 / 12 / 3))
    assert d.z == pytest.approx(d.mean / d.se)
    e = effects.paired_nll_differences(run, "popqa", "regrad", "no_update")
    # diffs 0, -0.5, -0.5, -1.0 -> mean -0.5; var = (0.25+0+0+0.25)/3 = 1/6; a tie (0) is not "lower"
    assert (e.n, e.n_lower) == (4, 3)
    assert e.mean == pytest.approx(-0.5) and e.se == pytest.approx(math.sqrt(1 / 6 / 4))
    assert "lower on 3 of 4 (75%)" in str(e)


def test_paired_difference_edge_cases():
    one = effects.paired_difference({"a": 1.0}, {"a": 2.0})
    assert one.n == 1 and one.mean == -1.0 and math.isnan(one.se) and math.isnan(one.z)
    nan = effects.paired_difference({"a": 1.0, "b": math.nan}, {"a": 2.0, "b": 1.0})
    assert nan.n == 1
    with pytest.raises(ValueError, match="share no test_id"):
        effects.paired_difference({"a": 1.0}, {"b": 1.0}, "popqa", "regrad", "shift")


def test_bad_prediction_rows_are_named(run):
    write_jsonl(analysis.predictions_file(run, "popqa", "shift"), [{"test_id": "q1", "answer_nll": 1.0}] * 2)
    with pytest.raises(ValueError, match="duplicate test_id 'q1'"):
        effects.paired_nll_differences(run, "popqa")
    write_text(analysis.predictions_file(run, "popqa", "shift"), '{"test_id": "q1"}\n')
    with pytest.raises(ValueError, match="shift.predictions.jsonl row 1: lacks"):
        effects.paired_nll_differences(run, "popqa")


@pytest.mark.parametrize("only_a,only_b,p", [
    (0, 0, 1.0),
    (5, 0, 2 / 32),                  # all 5 discordant pairs favour a: 2 * (1/2)^5
    (0, 5, 2 / 32),
    (8, 2, 2 * (1 + 10 + 45) / 1024),  # 2 * P(X <= 2), X ~ Bin(10, 1/2) = 0.109375
    (3, 3, 1.0),                     # doubled tail 2 * 42/64 > 1, capped
    (12, 1, 2 * 14 / 8192),
])
def test_mcnemar_exact_against_hand_computed_binomial_tails(only_a, only_b, p):
    assert effects.mcnemar_exact(only_a, only_b) == pytest.approx(p, rel=1e-12)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match=">= 0"):
        effects.mcnemar_exact(-1, 2)


def test_paired_em_counts_discordant_questions(run):
    em = effects.paired_em(run, "popqa", "regrad", "shift")
    # common q1..q3: regrad right on q1, q2; shift right on q2 -> only regrad q1, only shift none
    assert (em.n, em.only_a, em.only_b) == (3, 1, 0)
    assert em.em_a == pytest.approx(200 / 3) and em.em_b == pytest.approx(100 / 3)
    assert em.difference == pytest.approx(100 / 3) and em.p == 1.0
    nu = effects.paired_em(run, "popqa", "regrad", "no_update")
    assert (nu.n, nu.only_a, nu.only_b) == (4, 3, 1) and nu.p == pytest.approx(2 * 5 / 16)


def test_effect_table_and_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    # 20 questions: regrad right on 14 where shift is right on 2 (12 discordant, all for regrad); NLL lower by ~1
    rows = {"regrad": {f"q{i}": (1.0 + 0.01 * i, "x" if i < 14 else "z") for i in range(20)},
            "shift": {f"q{i}": (2.0 + 0.02 * i, "x" if i < 2 else "z") for i in range(20)},
            "no_update": {f"q{i}": (1.0 + 0.01 * i + (0.001 if i % 2 else -0.001), "x" if i < 14 else "z")
                          for i in range(20)}}
    write_run("strong", rows, "probe")
    write_run("strong", ROWS, "popqa")
    table = effects.effect_table("strong", ["probe", "popqa", "nq"])
    assert [(e.nll.dataset, e.nll.method_b) for e in table] == [("probe", "shift"), ("probe", "no_update"),
                                                                ("popqa", "shift"), ("popqa", "no_update")]
    assert table.rows()[0][:3] == ["probe", "regrad − shift", "-1.095"]
    assert table.rows()[0][-3:] == ["12 / 0", "0.00049", "20"]
    text = effects.verdict(table)
    assert text.startswith("The retrieved gradients carry the passages' knowledge into the answers on probe (EM 70.0 "
                           "vs 10.0, McNemar p = 0.00049")
    assert "No clear effect over shift on popqa" in text
    assert isinstance(effects.effect_table("strong", ["nq"]), analysis.Missing)
    assert effects.verdict(effects.effect_table("strong", ["nq"])).startswith("No verdict")


def test_across_seeds_mean_and_spread(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    for k, shift_nll in enumerate((1.5, 2.0, 2.5)):
        rows = {"regrad": {"q1": (1.0, "x"), "q2": (1.0, "x")}, "shift": {"q1": (shift_nll, "y"), "q2": (shift_nll, "y")},
                "no_update": {"q1": (1.0, "y"), "q2": (1.0, "y")}}
        summary = SUMMARY.replace("popqa,regrad,75.0", f"popqa,regrad,{50.0 + 10 * k}")
        write_run(f"s{k}", rows, summary=summary)
    table = effects.across_seeds(["s0", "s1", "s2"], ["popqa"])
    spreads = {s.name: s for _, s in table.spreads}
    assert spreads["regrad EM"].values == (50.0, 60.0, 70.0)
    assert spreads["regrad EM"].mean == pytest.approx(60.0) and spreads["regrad EM"].sd == pytest.approx(10.0)
    assert spreads["regrad − shift answer NLL"].mean == pytest.approx(-1.0)
    assert spreads["regrad − shift answer NLL"].sd == pytest.approx(0.5)
    assert table.header()[2] == "mean ± SD over 3 seeds"
    assert isinstance(effects.across_seeds(["s0"], ["popqa"]), analysis.Missing)
    assert isinstance(effects.across_seeds(["s0", "nope"], ["popqa"]), analysis.Missing)


def test_em_by_group(run):
    table = effects.em_by_group(run, "popqa", ["regrad", "shift", "rag"], {"q1": "city", "q2": "job", "q3": "job"})
    assert table.methods == ["regrad", "shift"] and table.groups == ["city", "job"]
    assert table.cells[("job", "regrad")] == (50.0, 2) and table.cells[("city", "shift")] == (0.0, 1)
    assert table.rows()[1] == ["job", "2", "50.0", "50.0"]
    assert isinstance(effects.em_by_group(run, "popqa", ["rag"], {"q1": "city"}), analysis.Missing)


def test_probe_relations_reads_the_probe_and_marks_the_held_out_relation(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    from regrad_lib import paths, probe

    dev = paths.sample_dir() / "probe" / "dev.json"
    relations = [r["relation"] for r in __import__("json").loads(dev.read_text())]
    rows = {m: {str(i): (1.0, "x") for i in range(len(relations))} for m in ("regrad", "shift")}
    write_run("p", rows, "probe")
    table = effects.probe_relations("p", ["probe"])
    assert set(table.groups) == {r + (" (held out)" if r in probe.HELD_OUT else "") for r in relations}
    assert "sport (held out)" in table.groups
    assert isinstance(effects.probe_relations("p", ["popqa"]), analysis.Missing)
    assert isinstance(effects.probe_relations("p", ["probe"], data_root=str(tmp_path)), analysis.Missing)


def test_a_named_evaluation_is_read_instead_of_the_main_results(run):
    """06_analyze's evaluation parameter: every reader takes results/<run>/evaluations/<name>/, and only it."""
    other = {m: {k: (v + 1.0 if m == "regrad" else v, "x") for k, (v, _) in items.items()} for m, items in ROWS.items()}
    write_run(run, other, summary=SUMMARY.replace("75.0", "100.0"), evaluation="alt")
    main, alt = effects.paired_nll_differences(run, "popqa"), effects.paired_nll_differences(run, "popqa",
                                                                                             evaluation="alt")
    assert alt.mean == pytest.approx(main.mean + 1.0) and alt.n == main.n
    assert effects.paired_em(run, "popqa", evaluation="alt").em_a == 100.0
    assert effects.paired_em(run, "popqa").em_a == pytest.approx(200 / 3)      # q1..q3 paired: q3 wrong
    table = effects.effect_table(run, ["popqa"], evaluation="alt")
    assert table.effects[0].nll == alt
    assert {s.method: s.em for s in analysis.read_summary(run, ["popqa"], "alt")}["regrad"] == 100.0
    assert effects.em_by_group(run, "popqa", ["shift"], {"q1": "a"}, evaluation="alt").cells[("a", "shift")][0] == 100.0
    with pytest.raises(FileNotFoundError, match="evaluations/none"):
        analysis.read_summary(run, ["popqa"], "none")
    with pytest.raises(ValueError, match="evaluation"):
        analysis.AnalyzeConfig(run=run, datasets=["popqa"], evaluation="../up")
