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
    assert all("no question changed" in line.why or "Δ +0," in line.why for line in report.lines), report.text()


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
    assert "outside" in report.text() and "cpt" in report.text()


def _rows(em_ref, em_new, margins, nll_shift=0.0):
    ref = {str(i): {"em": e, "answer_nll": 1.0, "min_margin": m} for i, (e, m) in enumerate(zip(em_ref, margins))}
    new = {str(i): {"em": e, "answer_nll": 1.0 + nll_shift, "min_margin": m}
           for i, (e, m) in enumerate(zip(em_new, margins))}
    return ref, new


def test_text_scores_changed_one_way_are_flagged_unless_near_ties():
    one_way = ([0.0] * 6 + [100.0] * 4, [100.0] * 10)                  # six questions gained, none lost: p = 0.031
    verdict, why = reference_compare.judge_text_score(*_rows(*one_way, [5.0] * 10, nll_shift=0.1), "em")
    assert verdict == "OUT" and "6 up / 0 down" in why and "0 of 6 at near ties" in why
    verdict, why = reference_compare.judge_text_score(*_rows(*one_way, [0.05] * 10, nll_shift=0.1), "em")
    assert verdict == "ok" and "6 of 6 at near ties" in why              # margins below the NLL change: ties
    balanced = ([0.0] * 3 + [100.0] * 3, [100.0] * 3 + [0.0] * 3)
    assert reference_compare.judge_text_score(*_rows(*balanced, [5.0] * 6), "em")[0] == "ok"
    five = ([0.0] * 5, [100.0] * 5)                                        # p = 0.0625: not beyond chance
    assert reference_compare.judge_text_score(*_rows(*five, [5.0] * 5), "em")[0] == "ok"


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
