"""Same machine, same seed: identical results; the reference folder, README's rendered tables, and the comparison
of a fresh run with the reference (regrad_lib.reporting.reference*), on tiny chains (train → encode → evaluate).

Each chain runs in a child process with a fresh work folder of its own (about 10 s on a small CPU).
"""

import copy
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from regrad_lib.io import paths
from regrad_lib.reporting import (
    effects,
    reference,
    reference_compare,
    reference_render,
    reference_tables,
)

RUN = "chain"


def _chain(work, run: str = RUN, seed: int = 42) -> None:
    env = {**os.environ, "REGRAD_WORK": str(work), "PYTHONPATH": str(paths.repo_root())}
    code = f"from regrad_lib import testing; testing.run_tiny_chain({run!r}, seed={seed})"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def chains(tmp_path_factory, tiny_model_dir):
    """Two fresh work folders, each with the same chain (seed 42); the first also with seed 43."""
    folders = [tmp_path_factory.mktemp(name) for name in ("first", "second")]
    for folder in folders:
        (folder / "models").mkdir()
        (folder / "models" / tiny_model_dir.name).symlink_to(tiny_model_dir)
        _chain(folder)
    _chain(folders[0], f"{RUN}-s43", seed=43)
    return folders


@pytest.fixture()
def in_work(monkeypatch):
    def use(folder):
        monkeypatch.setenv("REGRAD_WORK", str(folder))
    return use


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_machine_same_seed_gives_identical_results(chains):
    """Two runs of the whole chain in fresh work folders: every result file byte for byte (summary, sweeps,
    predictions with their answer NLLs and margins, metrics) and the trained weights bit for bit."""
    first, second = (_files(folder / "results" / RUN) for folder in chains)
    assert first == second
    assert {"summary.csv", "sweeps.csv", "probe/regrad.predictions.jsonl"} <= set(first)
    assert any(name.startswith("probe/sweeps/") for name in first)
    a, b = (load_file(str(folder / "outputs" / RUN / "meta_state.safetensors")) for folder in chains)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_the_reference_round_trips_and_a_rerun_matches_it(chains, in_work, tmp_path):
    in_work(chains[0])
    saved = reference.collect(RUN)
    folder = reference.save(saved, tmp_path / "ref", command="test")
    loaded = reference_tables.load(folder)
    assert loaded.seeds == ["42"] and loaded.meta["runs"] == {"42": RUN} and loaded.meta["command"] == "test"
    for name in reference_tables.TABLES:
        assert [dict((k, str(v)) for k, v in r.items()) for r in getattr(loaded, name)] == \
            [dict((k, str(v)) for k, v in r.items()) for r in getattr(saved, name)], name
    assert {(r["dataset"], r["method"]) for r in loaded.summary} == {
        (d, m) for d in ("popqa", "probe") for m in ("closed_book", "rag", "regrad", "shift", "no_update")}
    assert {r["gamma"] for r in loaded.table("questions", dataset="probe", method="regrad")} == {"", 0.0, 0.5, 1.0}
    assert {r["group"] for r in loaded.table("questions", dataset="probe")} >= {"birthplace", "sport (held out)"}
    in_work(chains[1])
    report = reference_compare.compare(loaded, reference.collect(RUN))
    assert report.ok and not report.new, report.text()
    assert len(report.lines) > 90 and {line.verdict for line in report.lines} == {"ok"}
    assert all(line.why == "no question changed" or line.why.startswith(("Δ +0 paired", "Δ +0, tolerance"))
               for line in report.lines), report.text()


def _results(chains, in_work):
    in_work(chains[0])
    return reference.collect(RUN)


def test_compare_flags_what_moved_beyond_its_uncertainty(chains, in_work):
    ref = _results(chains, in_work)
    new = copy.deepcopy(ref)
    row = new.table("summary", dataset="probe", method="regrad")[0]
    values = [r["answer_nll"] for r in ref.table("questions", dataset="probe", method="regrad", gamma="")]
    row["nll"] += 3 * effects.mean_se(values)[1]              # 3 SE: beyond the 2 allowed
    new.table("summary", dataset="popqa", method="rag")[0]["n"] += 1              # counts are deterministic
    new.summary = [r for r in new.summary if not (r["dataset"] == "popqa" and r["method"] == "shift")]
    new.summary.append({**row, "method": "cpt"})                                   # a method the reference lacks
    effect = new.table("effects", dataset="popqa", a="regrad", b="shift")[0]
    effect["mean"] += 1.5 * effect["se"]                                           # within 2 paired SE
    report = reference_compare.compare(ref, new)
    verdicts = {(line.where, line.figure): line.verdict for line in report.lines}
    assert verdicts[("seed 42 summary probe regrad", "nll")] == "OUT"
    assert verdicts[("seed 42 summary popqa rag", "n")] == "OUT"
    assert verdicts[("seed 42 summary popqa shift", "*")] == "missing"
    assert verdicts[("seed 42 effect popqa regrad − shift", "Δ answer NLL")] == "ok"
    assert report.new == ["seed 42 summary probe cpt"] and not report.ok
    assert "2 changed, 1 missing from the fresh run" in report.text() and "cpt" in report.text()


def _questions(scores, nll, margins, column="em"):
    """Constructed per-question rows: ``{test_id: {column, answer_nll, min_margin}}``."""
    return {str(i): {column: e, "answer_nll": v, "min_margin": m}
            for i, (e, v, m) in enumerate(zip(scores, nll, margins))}


def _judge(ref, new, column="em"):
    return reference_compare.judge_rows(ref, new, column)


def test_a_halved_score_is_a_change_though_mcnemar_alone_would_pass_it():
    """PopQA regrad EM 26.7 → 13.3 at n = 30 (+0.4 NLL): four questions lost, none a near tie (margin 1 > 0.4):
    McNemar p = 2/16 = 0.125, but the score halved: a change; the NLL moved +0.4 on every question: a change."""
    ref = _questions([100.0] * 8 + [0.0] * 22, [2.0] * 30, [1.0] * 30)
    new = _questions([100.0] * 4 + [0.0] * 26, [2.4] * 30, [1.0] * 30)
    verdict, why = _judge(ref, new)
    assert verdict == "OUT" and why.startswith("0 up / 4 down unexplained, McNemar p = 0.12;")
    assert "26.67 → 13.33, a net change of 4 questions" in why
    verdict, why = _judge(ref, new, "answer_nll")
    assert verdict == "OUT" and why.startswith("Δ +0.4 paired over 30 questions")


def test_twelve_questions_down_is_a_change_whatever_other_questions_nll_did():
    """Probe EM 71.7 → 51.7 at n = 60: twelve questions lost (McNemar p = 2/4096), margins 0.5 against NLL changes
    of 0.2; one other question's NLL moved by 3 nats (the old figure-wide escape took that as every flip's)."""
    nll_ref, nll_new = [1.0] * 60, [1.2] * 12 + [1.0] * 48
    nll_new[59] = 4.0
    ref = _questions([100.0] * 43 + [0.0] * 17, nll_ref, [0.5] * 60)
    new = _questions([0.0] * 12 + [100.0] * 31 + [0.0] * 17, nll_new, [0.5] * 60)
    verdict, why = _judge(ref, new)
    assert verdict == "OUT" and why.startswith("0 up / 12 down unexplained, McNemar p = 0.00049; 0 of 12")


def test_one_near_tie_among_many_flips_explains_that_flip_only():
    """Ten questions lost: question 0 a near tie (margin 0.05, its NLL moved 0.5), the nine others not (margin
    0.3, NLL moved 0.01): nine unexplained, one-sided, McNemar p = 2/512."""
    nll_new = [1.5] + [1.01] * 9 + [1.0] * 50
    ref = _questions([100.0] * 30 + [0.0] * 30, [1.0] * 60, [0.05] + [0.3] * 59)
    new = _questions([0.0] * 10 + [100.0] * 20 + [0.0] * 30, nll_new, [0.05] + [0.3] * 59)
    verdict, why = _judge(ref, new)
    assert verdict == "OUT" and why.startswith("0 up / 9 down unexplained, McNemar p = 0.0039; 1 of 10 changed")
    # every flip at its own near tie (margins under the NLL change of that question): explained, the same result
    assert _judge(ref, _questions([0.0] * 10 + [100.0] * 20 + [0.0] * 30, [1.5] * 10 + [1.0] * 50,
                                  [0.05] * 60))[0] == "ok"


def test_an_identical_rerun_and_noise_sized_changes_are_the_same_result():
    ref = _questions([100.0] * 8 + [0.0] * 22, [2.0 + 0.1 * i for i in range(30)], [1.0] * 30)
    assert _judge(ref, {k: dict(v) for k, v in ref.items()}) == ("ok", "no question changed")
    verdict, why = _judge(ref, {k: dict(v) for k, v in ref.items()}, "answer_nll")
    assert verdict == "ok" and why.startswith("Δ +0 paired over 30 questions")
    one = {k: dict(v) for k, v in ref.items()}
    one["9"]["em"] = 100.0                                          # one unexplained flip: p = 1, one question
    assert _judge(ref, one)[0] == "ok"
    balanced = {k: dict(v) for k, v in ref.items()}
    for k in ("0", "1", "2"):
        balanced[k]["em"] = 0.0
    for k in ("10", "11", "12"):
        balanced[k]["em"] = 100.0
    assert _judge(ref, balanced) == ("ok", "3 up / 3 down unexplained, McNemar p = 1; 0 of 6 changed questions at "
                                           "their own near tie; 26.67 → 26.67")
    noise = {k: {**v, "answer_nll": v["answer_nll"] + (1e-4 if int(k) % 2 else -1e-4)} for k, v in ref.items()}
    assert _judge(ref, noise, "answer_nll")[0] == "ok"                # below the 0.01-nat floor


def test_every_zero_one_column_is_judged_as_a_score():
    """Answer accuracy (``acc``, 0/1 per question where the rows hold it) and any new 0/1 column: flips."""
    ref = _questions([1] * 8 + [0] * 22, [2.0] * 30, [1.0] * 30, column="acc")
    new = _questions([1] * 4 + [0] * 26, [2.0] * 30, [1.0] * 30, column="acc")
    assert reference_compare.is_score("acc", [*ref.values(), *new.values()])
    assert not reference_compare.is_score("answer_nll", [*ref.values(), *new.values()])
    verdict, why = _judge(ref, new, "acc")
    assert verdict == "OUT" and "a net change of 4 questions" in why
    assert _judge(ref, {k: dict(v) for k, v in ref.items()}, "acc") == ("ok", "no question changed")


def test_the_summary_compare_flags_the_constructed_changes_and_passes_a_rerun():
    """The same rules through :func:`reference_compare.compare`: a halved PopQA EM with its rows, a figure that
    moved apart from its rows, and a figure without rows that moved; an identical copy passes."""
    def results(em_right, nll):
        questions = [{"seed": "42", "dataset": "popqa", "method": "regrad", "gamma": "", "topk": "", "mixed": "",
                      "test_id": str(i), "group": "", "em": 100.0 if i < em_right else 0.0, "answer_nll": nll,
                      "min_margin": 1.0, "prediction": "x"} for i in range(30)]
        summary = [{"seed": "42", "dataset": "popqa", "method": "regrad", "em": rounded(100 * em_right / 30),
                    "nll": nll, "n": 30},
                   {"seed": "42", "dataset": "hotpotqa", "method": "regrad", "em": 20.0, "nll": 3.0, "n": 30}]
        return reference_tables.Results(summary=summary, questions=questions)

    rounded = reference_tables.rounded
    ref = results(8, 2.0)
    assert reference_compare.compare(ref, copy.deepcopy(ref)).ok
    report = reference_compare.compare(ref, results(4, 2.4))
    verdicts = {(line.where, line.figure): line.verdict for line in report.lines}
    assert verdicts[("seed 42 summary popqa regrad", "em")] == "OUT"
    assert verdicts[("seed 42 summary popqa regrad", "nll")] == "OUT"
    assert verdicts[("seed 42 summary hotpotqa regrad", "em")] == "ok" and not report.ok
    moved = results(8, 2.0)
    moved.summary[0]["em"] = 30.0                                   # the figure, not its questions
    moved.summary[1]["em"] = 23.3333                                # no rows: only equality passes
    lines = {(x.where, x.figure): x for x in reference_compare.compare(ref, moved).lines}
    assert lines[("seed 42 summary popqa regrad", "em")].why.startswith("the figure moved by +3.33 but the mean")
    assert lines[("seed 42 summary hotpotqa regrad", "em")].verdict == "OUT"
    assert lines[("seed 42 summary hotpotqa regrad", "nll")].verdict == "ok"


def test_new_columns_and_seeds_flow_through(chains, in_work):
    """A score column or a per-question field the tool does not know is compared like the others; a second seed
    gives the seeds block and the across-seed figures."""
    ref = _results(chains, in_work)
    for r in ref.summary:
        r["binding_share"] = 50.0
    for r in ref.questions:
        r["binding_share"] = 100.0 * (int(r["test_id"]) % 2)
    new = copy.deepcopy(ref)
    report = reference_compare.compare(ref, new)
    assert any(line.figure == "binding_share" and line.verdict == "ok" for line in report.lines)
    new.table("summary", dataset="probe", method="regrad")[0]["binding_share"] = 95.0
    report = reference_compare.compare(ref, new)
    assert [line.where for line in report.lines if line.verdict == "OUT"] == ["seed 42 summary probe regrad"]
    in_work(chains[0])
    seeds = reference.collect(RUN, [f"{RUN}-s43"])
    assert seeds.seeds == ["42", "43"] and seeds.meta["runs"] == {"42": RUN, "43": f"{RUN}-s43"}
    block = reference_render.seeds_block(seeds)
    assert block.startswith("Seeds 42, 43, mean ± SD over seeds:") and "| probe |" in block
    report = reference_compare.compare(seeds, copy.deepcopy(seeds))
    assert report.ok and any(line.where.startswith("seeds 42,43 ") for line in report.lines)
    assert not reference_compare.compare(seeds, ref).ok                    # seed 43 missing from the fresh run
    with pytest.raises(ValueError, match="own"):
        reference.collect(RUN, [RUN])


def test_an_experiment_reports_rows_are_saved_and_compared_by_the_same_rules(chains, in_work, tmp_path):
    """save-report keeps the per-question rows of the runs a report reads; compare --report collects them again
    from the results they name: a rerun is the same result, a regrad that now answers every probe question is not."""
    in_work(chains[0])
    file = tmp_path / "exp.questions.csv"
    assert reference.main(["save-report", "exp", "--source", RUN, "--datasets", "probe", "--reference", str(file)]) == 0
    saved = reference.load_report(file)
    assert {(r["run"], r["evaluation"], r["dataset"]) for r in saved} == {(RUN, "", "probe")}
    assert {r["method"] for r in saved} == {"closed_book", "rag", "regrad", "shift", "no_update"}
    assert {r["gamma"] for r in saved if r["method"] == "regrad"} == {"", 0.0, 0.5, 1.0}       # the sweep points
    assert {"em", "f1", "answer_nll", "min_margin", "prediction"} <= set(saved[0])
    in_work(chains[1])                                               # the same chain, another work folder
    assert reference.main(["compare", "--report", "exp", "--reference", str(file)]) == 0
    fresh = reference.fresh_rows(saved)
    report = reference_compare.compare_rows(saved, fresh)
    assert report.ok and not report.new and {line.verdict for line in report.lines} == {"ok"}
    assert all(line.why == "no question changed" or line.why.startswith("Δ +0 paired") for line in report.lines)
    assert {line.figure for line in report.lines} >= {"em", "f1", "answer_nll"} and "min_margin" not in \
        {line.figure for line in report.lines}
    for r in fresh:
        if r["method"] == "regrad" and r["gamma"] == "":
            r["em"] = 100.0
    report = reference_compare.compare_rows(saved, fresh)
    assert [(x.where, x.figure) for x in report.lines if x.verdict == "OUT"] == [(f"{RUN} probe regrad", "em")]
    gone = reference_compare.compare_rows(saved, [r for r in fresh if r["method"] != "shift"])
    assert [x.where for x in gone.lines if x.verdict == "missing"] == [f"{RUN} probe shift"]


def test_render_rewrites_only_the_marked_blocks(chains, in_work, tmp_path):
    results = _results(chains, in_work)
    text = ("# Title\n\ntyped text 1.23\n\n<!-- reference:probe -->\nold\n<!-- /reference:probe -->\n\n"
            "between\n<!-- reference:datasets -->\n<!-- /reference:datasets -->\n<!-- reference:seeds -->\nx\n"
            "<!-- /reference:seeds -->\n<!-- reference:source -->\n<!-- /reference:source -->\nend\n")
    rendered = reference_render.render_blocks(text, results, "reference/x")
    assert rendered.startswith("# Title\n\ntyped text 1.23\n\n<!-- reference:probe -->\nProbe, 8 questions (seed 42; "
                               "acc: a gold answer contained in the answer):\n\n| method | acc | EM | answer NLL |")
    assert "\n<!-- /reference:probe -->\n\nbetween\n" in rendered and rendered.endswith("end\n")
    assert "| **regrad** |" in rendered and "γ sweep (regrad, top-3):" in rendered and "sport (held out)" in rendered
    assert "06_analyze's verdicts" in rendered and "The reference holds one seed;" in rendered
    assert "regrad − rag: answer NLL" in rendered        # the chain evaluates rag: regrad − rag is reported too
    assert "Rendered from `reference/x/`" in rendered
    assert reference_render.render_blocks(rendered, results, "reference/x") == rendered          # idempotent
    assert reference_render.stale_blocks(text, rendered) == ["probe", "datasets", "seeds", "source"]
    assert reference_render.stale_blocks(rendered, rendered) == []
    with pytest.raises(ValueError, match="unknown reference block 'nope'"):
        reference_render.render_blocks("<!-- reference:nope -->\n<!-- /reference:nope -->", results, "x")
    # the command line: save, render a copy of a README, check it, compare a run with the reference
    ref = tmp_path / "ref"
    readme = tmp_path / "README.md"
    readme.write_text(text, encoding="utf-8")
    assert reference.main(["save", "--run", RUN, "--reference", str(ref)]) == 0
    assert reference.main(["check", "--reference", str(ref), "--readme", str(readme)]) == 1
    assert reference.main(["render", "--reference", str(ref), "--readme", str(readme)]) == 0
    assert reference.main(["check", "--reference", str(ref), "--readme", str(readme)]) == 0
    assert reference.main(["compare", "--run", RUN, "--reference", str(ref)]) == 0
    with pytest.raises(FileNotFoundError, match="05_evaluate"):
        reference.main(["compare", "--run", "never-evaluated", "--reference", str(ref)])
    assert json.loads((ref / reference_tables.META).read_text())["runs"] == {"42": RUN}


def test_readme_tables_are_rendered_from_the_committed_reference():
    """README.md's marked blocks are exactly what `python -m regrad_lib.reporting.reference render` writes from the
    committed reference/demo/ (no figure of these tables is typed by hand)."""
    readme = (paths.repo_root() / "README.md").read_text(encoding="utf-8")
    names = [m.group("name") for m in reference_render.BLOCK.finditer(readme)]
    assert {"probe", "datasets", "seeds", "source"} <= set(names)
    rendered = reference_render.render_blocks(readme, reference_tables.load(reference_tables.DEFAULT_FOLDER),
                                              reference_tables.DEFAULT_FOLDER)
    assert reference_render.stale_blocks(readme, rendered) == [], \
        "README.md is out of sync with reference/demo: run python -m regrad_lib.reporting.reference render"


# --- BENCHMARKS' sweep tables, rendered from reference/experiments/sweeps.csv ----------------------------------------

SWEEPS_CSV = """dataset,method,gamma,topk,mixed,scheme,em,f1,precision,recall,nll,n
probe,regrad,1.0,1,0.0,int4,76.6667,80.0,80.0,80.0,0.5617,60
probe,regrad,1.0,2,0.0,int4,66.6667,70.0,70.0,70.0,0.5611,60
probe,regrad,1.0,3,0.0,int4,68.3333,70.0,70.0,70.0,0.5672,60
probe,regrad,1.0,5,0.0,int4,61.6667,65.0,65.0,65.0,0.9843,60
probe,regrad,1.0,3,0.34,int4,48.3333,50.0,50.0,50.0,0.888,60
probe,regrad,1.0,3,0.67,int4,45.0,47.0,47.0,47.0,0.9114,60
probe,regrad,1.0,3,1.0,int4,8.3333,9.0,9.0,9.0,2.8302,60
popqa,regrad,1.0,1,0.0,int4,26.6667,30.0,30.0,30.0,1.6961,30
popqa,regrad,1.0,2,0.0,int4,36.6667,40.0,40.0,40.0,1.898,30
popqa,regrad,1.0,3,0.0,int4,33.3333,35.0,35.0,35.0,2.0513,30
popqa,regrad,1.0,5,0.0,int4,23.3333,25.0,25.0,25.0,2.5644,30
popqa,regrad,1.0,3,0.34,int4,36.6667,38.0,38.0,38.0,1.9931,30
popqa,regrad,1.0,3,0.67,int4,30.0,31.0,31.0,31.0,1.8921,30
popqa,regrad,1.0,3,1.0,int4,6.6667,7.0,7.0,7.0,3.2268,30
"""
# written out by hand from the rows above: EM .1f / NLL .3f; the demo preset trains with top-3; the binomial SE at
# one half is 100·√(0.25/60) = 6.45 and 100·√(0.25/30) = 9.13 points; ⌊3·0.34⌋ = 1, ⌊3·0.67⌋ = 2, ⌊3·1⌋ = 3
SWEEPS_BLOCK = ("**Top-k** (γ = 1, dev; EM ×100 / mean answer NLL in nats; EM's binomial SE at most 6.5 points on "
                "probe, 9.1 points on popqa):\n") + """
| dataset | k = 1 | k = 2 | k = 3 (trained) | k = 5 |
|---|---|---|---|---|
| probe (60) | 76.7 / 0.562 | 66.7 / 0.561 | 68.3 / 0.567 | 61.7 / 0.984 |
| popqa (30) | 26.7 / 1.696 | 36.7 / 1.898 | 33.3 / 2.051 | 23.3 / 2.564 |

**Mixed documents** (k = 3, γ = 1, dev; p: share of each question's top 3 replaced by the next question's best):

| dataset | p = 0 | 0.34 (one passage) | 0.67 (two) | 1 (all three) |
|---|---|---|---|---|
| probe (60) | 68.3 / 0.567 | 48.3 / 0.888 | 45.0 / 0.911 | 8.3 / 2.830 |
| popqa (30) | 33.3 / 2.051 | 36.7 / 1.993 | 30.0 / 1.892 | 6.7 / 3.227 |"""


def test_the_sweeps_block_is_rendered_from_sweeps_csv(tmp_path, monkeypatch):
    file = tmp_path / "sweeps.csv"
    file.write_text(SWEEPS_CSV, encoding="utf-8")
    monkeypatch.setattr(reference_render, "SWEEPS", str(file))
    assert reference_render.sweeps_block() == SWEEPS_BLOCK
    stale = "Intro\n<!-- reference:sweeps -->\n" + SWEEPS_BLOCK.replace("68.3 / 0.567", "68.4 / 0.567") + \
        "\n<!-- /reference:sweeps -->\nAfter\n"
    rendered = reference_render.render_blocks(stale, reference_tables.Results(), "reference/demo")
    assert reference_render.stale_blocks(stale, rendered) == ["sweeps"]          # a figure that disagrees
    assert rendered == "Intro\n<!-- reference:sweeps -->\n" + SWEEPS_BLOCK + "\n<!-- /reference:sweeps -->\nAfter\n"
    assert reference_render.stale_blocks(rendered, reference_render.render_blocks(rendered, reference_tables.Results(),
                                                                                  "reference/demo")) == []
    monkeypatch.setattr(reference_render, "SWEEPS", str(tmp_path / "none.csv"))
    with pytest.raises(FileNotFoundError, match="make experiments-sweeps"):
        reference_render.sweeps_block()


def test_benchmarks_sweep_tables_are_rendered_from_the_committed_sweeps_csv():
    """BENCHMARKS.md's top-k and mixed-documents tables are exactly what render writes from the committed
    reference/experiments/sweeps.csv (`make experiments-sweeps` writes the file and renders the block)."""
    text = (paths.repo_root() / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "sweeps" in [m.group("name") for m in reference_render.BLOCK.finditer(text)]
    if not (paths.repo_root() / reference_render.SWEEPS).is_file():
        pytest.skip(f"{reference_render.SWEEPS} is not committed yet: `make experiments-sweeps` (after `make demo`) "
                    "writes it and renders BENCHMARKS.md's sweeps block from it")
    rendered = reference_render.render_blocks(text, reference_tables.load(reference_tables.DEFAULT_FOLDER),
                                              reference_tables.DEFAULT_FOLDER)
    assert reference_render.stale_blocks(text, rendered) == [], \
        "BENCHMARKS.md is out of sync with reference/experiments/sweeps.csv: run python -m " \
        "regrad_lib.reporting.reference render --readme BENCHMARKS.md"


def test_the_makefiles_frontier_runs_are_the_frontier_scripts_variants():
    import re

    make = (paths.repo_root() / "Makefile").read_text(encoding="utf-8")
    runs = re.search(r"^TF_RUNS := (.*)$", make, re.M).group(1).split()
    source = (paths.repo_root() / "experiments" / "transfer_frontier.py").read_text(encoding="utf-8")
    block = source[source.index("VARIANTS = {"):source.index("\n}\n", source.index("VARIANTS = {"))]
    assert runs == re.findall(r'^    "([^"]+)":', block, re.M)
