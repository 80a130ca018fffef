"""effects: paired answer-NLL differences and paired EM with McNemar's exact test (hand-computed), verdict, seeds."""

import math

import pytest

from regrad_lib.io import paths
from regrad_lib.io.artifacts import write_jsonl, write_text
from regrad_lib.reporting import analysis, effects

# per test_id: (answer_nll, prediction) of each method; gold answer "x" everywhere
ROWS = {"regrad": {"q1": (1.0, "x"), "q2": (2.0, "x"), "q3": (3.0, "y"), "q4": (0.5, "x")},
        "shift": {"q1": (1.5, "y"), "q2": (1.5, "x"), "q3": (4.0, "y")},           # q4 unmatched
        "no_update": {"q1": (1.0, "y"), "q2": (2.5, "y"), "q3": (3.5, "x"), "q4": (1.5, "y")}}
SUMMARY = "dataset,method,em,f1,precision,recall,nll,n\n" + "".join(
    f"popqa,{m},{em},{em},{em},{em},1.0,4\n" for m, em in (("regrad", 75.0), ("shift", 25.0), ("no_update", 25.0)))


def write_run(run, rows=ROWS, dataset="popqa", summary=SUMMARY, evaluation=None):
    write_text(paths.summary_file(run, evaluation), summary)
    for method, items in rows.items():
        write_jsonl(paths.predictions_file(run, dataset, method, evaluation),
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
    # z = (-1/3) / sqrt(7/36) = -(1/3) * 6 / sqrt(7) = -2 / sqrt(7)
    assert d.z == pytest.approx(-2 / math.sqrt(7), rel=1e-12)
    assert effects.nll_p(d) == pytest.approx(math.erfc(2 / math.sqrt(7) / math.sqrt(2)), rel=1e-12)
    e = effects.paired_nll_differences(run, "popqa", "regrad", "no_update")
    # diffs 0, -0.5, -0.5, -1.0 -> mean -0.5; var = (0.25+0+0+0.25)/3 = 1/6; a tie (0) is not "lower"
    assert (e.n, e.n_lower) == (4, 3)
    assert e.mean == pytest.approx(-0.5) and e.se == pytest.approx(math.sqrt(1 / 6 / 4))
    assert e.z == pytest.approx(-0.5 / math.sqrt(1 / 24), rel=1e-12)       # -sqrt(6) = -2.449
    assert "lower on 3 of 4 (75%)" in str(e)


def test_paired_difference_edge_cases():
    one = effects.paired_difference({"a": 1.0}, {"a": 2.0})
    assert one.n == 1 and one.mean == -1.0 and math.isnan(one.se) and math.isnan(one.z)
    nan = effects.paired_difference({"a": 1.0, "b": math.nan}, {"a": 2.0, "b": 1.0})
    assert nan.n == 1
    with pytest.raises(ValueError, match="share no test_id"):
        effects.paired_difference({"a": 1.0}, {"b": 1.0}, "popqa", "regrad", "shift")


def test_bad_prediction_rows_are_named(run):
    write_jsonl(paths.predictions_file(run, "popqa", "shift"), [{"test_id": "q1", "answer_nll": 1.0}] * 2)
    with pytest.raises(ValueError, match="duplicate test_id 'q1'"):
        effects.paired_nll_differences(run, "popqa")
    write_text(paths.predictions_file(run, "popqa", "shift"), '{"test_id": "q1"}\n')
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
    assert table.rows()[0][5:10] == ["70.0", "10.0", "+60.0", "12 / 0", "0.00049"]    # "x" contains the gold "x"
    text = effects.verdict(table)
    assert text.startswith(KNOWS + "probe (acc 70.0 vs 10.0, McNemar p = 0.00049, Holm 0.00098")
    assert "No significant difference in answer accuracy or the gold answer's likelihood between regrad and shift " \
           "on popqa" in text
    assert isinstance(effects.effect_table("strong", ["nq"]), analysis.Missing)
    assert effects.verdict(effects.effect_table("strong", ["nq"])).startswith("No verdict")


def test_across_seeds_mean_and_spread(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    for k, shift_nll in enumerate((1.5, 2.0, 2.5)):
        rows = {"regrad": {"q1": (1.0, "x"), "q2": (1.0, "x")},
                "shift": {"q1": (shift_nll, "y"), "q2": (shift_nll, "y")},
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
    from regrad_lib.data import probe
    from regrad_lib.io import paths

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


# --- the verdict: direction-aware, EM and NLL together, Holm across datasets ---------------------------------

def effect(dataset, em_a, em_b, only_a, only_b, n, mean, se, a="regrad", b="shift", acc=None):
    """One constructed (dataset, a − b) effect; EM in points, NLL mean and SE in nats; ``acc``: (acc_a, acc_b,
    only_a, only_b) of answer accuracy, by default the same numbers as EM (an answer that is exact contains the
    gold answer; "no acc" is ``acc=False``)."""
    nll = effects.PairedDifference(dataset, a, b, mean, se, 0.5, n // 2, n)
    acc = (em_a, em_b, only_a, only_b) if acc is None else acc
    return effects.Effect(nll, effects.PairedEM(dataset, a, b, em_a, em_b, only_a, only_b, n),
                          effects.PairedEM(dataset, a, b, *acc, n, "acc") if acc is not False else None)


def verdict_of(*items, **kw):
    return effects.verdict(effects.EffectTable(list(items)), **kw)


def test_holm_hand_computed():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01 = 0.03, 2*0.03 = 0.06, max(1*0.04, 0.06) = 0.06
    assert effects.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert effects.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert effects.holm([]) == []


def test_nll_p_is_the_two_sided_normal_tail():
    d = effect("p", 0, 0, 0, 0, 30, -0.2, 0.1).nll        # z = -2
    assert effects.nll_p(d) == pytest.approx(0.0455003, rel=1e-5)
    assert effects.nll_p(effect("p", 0, 0, 0, 0, 1, -1.0, math.nan).nll) == 1.0


KNOWS = "regrad beats shift on knowledge (answer accuracy and the gold answer's likelihood both better) on "


def outcomes_of(text, dataset, m="regrad", r="shift"):
    """Every reading whose sentence of the verdict names ``dataset`` (a dataset must sit in exactly one)."""
    found = []
    for k, phrase in effects._KNOWLEDGE.items():
        start = phrase.format(m=m, r=r)
        found += [k for part in text.split(". ") if part.startswith(start)
                  and (part[len(start):].startswith(f"{dataset} (") or f"; {dataset} (" in part)]
    return found


def test_verdict_gain():
    text = verdict_of(effect("probe", 70, 10, 12, 0, 20, -1.0, 0.1))
    assert text.startswith(KNOWS + "probe (acc 70.0 vs 10.0, McNemar p = 0.00049")
    assert "Format only" not in text and "Mixed" not in text
    assert outcomes_of(text, "probe") == [(1, 1)] and "worse" not in text and "No significant" not in text


def test_verdict_harm_in_both():
    text = verdict_of(effect("probe", 10, 70, 0, 12, 20, +1.0, 0.1))
    assert text.startswith("regrad is worse than shift on knowledge (answer accuracy and the gold answer's likelihood "
                           "both worse) on probe")
    assert "beats" not in text
    assert outcomes_of(text, "probe") == [(-1, -1)] and "raises" not in text and "No significant" not in text


def test_an_em_gain_without_an_accuracy_gain_is_format_not_knowledge():
    # EM 70 vs 10 (12 / 0 discordant, p = 0.00049) but both answers contain the gold alias as often (acc 70 vs 70,
    # no discordant question); the NLL is 10 SE lower: only the likelihood speaks for regrad
    text = verdict_of(effect("probe", 70, 10, 12, 0, 20, -1.0, 0.1, acc=(70, 70, 0, 0)))
    assert text.startswith("regrad raises the gold answer's likelihood over shift, with no significant change of "
                           "answer accuracy, on probe (acc 70.0 vs 70.0, McNemar p = 1")
    assert "Format only: regrad has a significantly higher exact match than shift without the same change in answer " \
           "accuracy on probe" in text
    assert "beats shift on knowledge" not in text
    # the same EM gain with accuracy gained too is knowledge, and then not format
    assert "Format only" not in verdict_of(effect("probe", 70, 10, 12, 0, 20, -1.0, 0.1))


def test_an_accuracy_gain_against_a_likelihood_loss_is_mixed_never_knowledge():
    text = verdict_of(effect("probe", 30, 30, 0, 0, 60, +0.5, 0.1, acc=(50, 30, 12, 0)))
    assert text.startswith("Mixed: regrad answers more questions than shift but lowers the gold answer's likelihood")
    assert "beats shift on knowledge" not in text and "Format only" not in text


def test_verdict_accuracy_only_nll_only_and_none():
    text = verdict_of(effect("popqa", 70, 10, 12, 0, 20, -0.05, 0.1),     # acc (= EM) gain, NLL 0.5 SE
                      effect("probe", 30, 30, 2, 2, 20, -0.5, 0.1),        # NLL gain (5 SE), acc equal
                      effect("nq", 30, 25, 3, 2, 20, 0.01, 0.1))           # nothing
    assert "regrad answers more questions than shift (answer accuracy), with no significant change of the gold " \
           "answer's likelihood, on popqa" in text
    assert "regrad raises the gold answer's likelihood over shift, with no significant change of answer accuracy, " \
           "on probe" in text
    assert "No significant difference in answer accuracy or the gold answer's likelihood between regrad and shift " \
           "on nq" in text
    assert "beats shift on knowledge" not in text
    # each dataset in its own reading only: absence of every other one
    assert [outcomes_of(text, d) for d in ("popqa", "probe", "nq")] == [[(1, 0)], [(0, 1)], [(0, 0)]]
    assert "worse" not in text and "lowers" not in text and "Mixed" not in text


def test_verdict_without_accuracy_never_calls_knowledge():
    """A table saved before answer accuracy existed: EM and NLL are shown, knowledge is never claimed."""
    text = verdict_of(effect("probe", 70, 10, 12, 0, 20, -1.0, 0.1, acc=False))
    assert text.startswith("regrad raises the gold answer's likelihood over shift (answer accuracy not measured) on "
                           "probe (acc not measured; answer NLL")
    assert "beats shift on knowledge" not in text
    assert "Format only: regrad has a significantly higher exact match" in text
    table = effects.EffectTable([effect("probe", 70, 10, 12, 0, 20, -1.0, 0.1, acc=False)])
    assert effects.calls(table)[0].knowledge == 0


def test_verdict_significance_level_and_holm_correction():
    # McNemar p = 2 * P(X <= 3 | 13) = 0.0923: not significant at 0.05 (but would be at 0.20)
    weak = effect("probe", 45, 30, 10, 3, 60, 0.0, 0.1)
    assert weak.em.p == pytest.approx(0.0923, abs=1e-4) and weak.acc.p == pytest.approx(0.0923, abs=1e-4)
    assert verdict_of(weak).startswith("No significant difference")
    assert verdict_of(weak, alpha=0.2).startswith("regrad answers more questions than shift")
    # McNemar p = 2 * P(X <= 1 | 9) = 0.039 alone is significant; twice across two datasets Holm makes it 0.078
    one = effect("probe", 40, 30, 8, 1, 60, 0.0, 0.1)
    assert one.acc.p == pytest.approx(0.0390625)
    assert verdict_of(one).startswith("regrad answers more questions than shift")
    both = verdict_of(one, effect("popqa", 40, 30, 8, 1, 60, 0.0, 0.1))
    assert both.startswith("No significant difference in answer accuracy or the gold answer's likelihood between "
                           "regrad and shift on probe") and "Holm 0.078" in both
    assert outcomes_of(both, "probe") == outcomes_of(both, "popqa") == [(0, 0)] and "answers more" not in both
    # the family is the datasets of the chosen pair only: a no_update row does not widen it
    assert verdict_of(one, effect("probe", 40, 30, 8, 1, 60, 0.0, 0.1, b="no_update")).startswith(
        "regrad answers more")


def test_verdict_chooses_the_pair():
    table = [effect("probe", 88, 72, 14, 4, 60, -2.0, 0.1, a="regrad_icl", b="rag"),
             effect("probe", 50, 50, 0, 0, 60, 0.0, 0.1)]
    assert verdict_of(*table, method="regrad_icl", reference="rag").startswith("regrad_icl beats rag on knowledge")
    assert verdict_of(*table, reference="rag").startswith("No verdict: no regrad − rag pair")


def test_verdicts_one_paragraph_per_evaluated_pair():
    table = effects.EffectTable([effect("probe", 88, 72, 14, 4, 60, -2.0, 0.1, a="regrad_icl", b="rag"),
                                 effect("probe", 88, 88, 0, 0, 60, 0.0, 0.1, a="regrad_icl", b="shift_icl")])
    text = effects.verdicts(table, effects.ICL_PAIRS)
    first, second = text.split("\n\n")
    assert first.startswith("regrad_icl beats rag on knowledge")
    assert second.startswith("No significant difference in answer accuracy or the gold answer's likelihood between "
                             "regrad_icl and shift_icl")
    assert effects.verdicts(analysis.Missing("x"), effects.ICL_PAIRS) == "No verdict: x"


def test_clustered_se_matches_a_hand_computation_with_clusters_of_unequal_size():
    # values 1, 2, 3, 4, 10 in clusters a a b c c: mean 4, residuals -3 -2 -1 0 6, cluster sums -5, -1, 6;
    # variance G/(G-1) * sum of squared sums / n^2 = 3/2 * 62 / 25 = 3.72
    mean, se = effects.clustered_se([1.0, 2.0, 3.0, 4.0, 10.0], ["a", "a", "b", "c", "c"])
    assert mean == pytest.approx(4.0) and se == pytest.approx(math.sqrt(3.72), rel=1e-12)
    # one value per cluster: the plain standard error (sample std / sqrt(n) = sqrt(12.5 / 5))
    assert effects.clustered_se([1.0, 2.0, 3.0, 4.0, 10.0], range(5))[1] == pytest.approx(math.sqrt(2.5), rel=1e-12)
    assert effects.clustered_se([1.0, 2.0, 3.0, 4.0, 10.0], range(5))[1] == \
        pytest.approx(effects.mean_se([1.0, 2.0, 3.0, 4.0, 10.0])[1], rel=1e-12)
    assert math.isnan(effects.clustered_se([1.0, 2.0], ["a", "a"])[1])          # one cluster: no SE
    # paired: differences 1, 2, 4 in clusters x x y: mean 7/3, sums -5/3 and 5/3, variance 2 * (50/9) / 9
    d = effects.clustered_difference([2.0, 3.0, 5.0, None], [1.0, 1.0, 1.0, 1.0], ["x", "x", "y", "z"])
    assert (d.mean, d.n, d.n_lower) == (pytest.approx(7 / 3), 3, 0) and d.se == pytest.approx(10 / 9, rel=1e-12)
    with pytest.raises(ValueError, match="one cluster label per value"):
        effects.clustered_se([1.0, 2.0], ["a"])
