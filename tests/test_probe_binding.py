"""The binding probe: bundled as generated, families retrieved together by BM25, shares counted by hand."""

import json
import math
import re

import pytest

from regrad_lib import retrieval
from regrad_lib.data import corpus, datasets, probe, probe_binding
from regrad_lib.io import paths
from regrad_lib.io.artifacts import write_jsonl
from regrad_lib.reporting import analysis, binding_report

BUNDLED = paths.sample_dir() / "probe_binding"


def test_the_bundled_files_are_exactly_what_the_generator_writes(tmp_path):
    written = probe_binding.write(tmp_path / "probe_binding")
    assert sorted(written) == sorted(p.name for p in BUNDLED.iterdir())
    for name, path in written.items():
        assert path.read_bytes() == (BUNDLED / name).read_bytes(), name


def test_generation_is_deterministic_and_seeded():
    a, b = probe_binding.generate(4, 3), probe_binding.generate(4, 3)
    assert a["dev"] == b["dev"] and [p.passage for p in a["passages"]] == [p.passage for p in b["passages"]]
    assert probe_binding.generate(4, 3, seed=1)["dev"] != a["dev"]


def test_families_hold_the_asked_person_and_distractors_with_other_values():
    data = probe_binding.generate()
    people = {p.passage_id: p for p in data["passages"]}
    assert len(data["dev"]) == 20 * probe_binding.FAMILY and len(data["train"]) == 60 * probe_binding.FAMILY
    assert not {r["entity"] for r in data["train"]} & {r["entity"] for r in data["dev"]}
    firsts = [p.name.split()[0] for p in people.values()]
    assert len(set(firsts)) == len(firsts)
    for split in ("train", "dev"):
        rows = data[split]
        for i, r in enumerate(rows):
            person, relation = people[r["passage_id"]], probe.BY_NAME[r["relation"]]
            assert r["question"] == relation.question.format(n=person.name) and r["answer"] == [
                person.facts[relation.name]]
            others = [people[d["passage_id"]] for d in r["distractors"]]
            assert len(others) == probe_binding.FAMILY - 1
            values = [r["answer"][0], *(d["value"] for d in r["distractors"])]
            assert len(set(values)) == probe_binding.FAMILY                     # different values, same relation
            for o, d in zip(others, r["distractors"]):
                assert o.facts[relation.name] == d["value"] and o.name == d["entity"] != person.name
                assert o.name.split()[1] == person.name.split()[1]              # one surname per family
                assert any(probe.fact_sentence(s, o.name, d["value"]) in o.passage for s in relation.sentences)
            # the name-swap control: every member is asked; question i-1 (shift's) is another family's
            assert r["family"] != rows[i - 1]["family"]
        by_family = {}
        for r in rows:
            by_family.setdefault(r["family"], []).append(r["entity"])
        assert all(len(set(v)) == probe_binding.FAMILY for v in by_family.values())


def test_names_are_unknown_to_the_corpus_and_the_probe():
    known = set(re.findall(r"[a-z]+", paths.sample_corpus().read_text(encoding="utf-8").lower()))
    known |= set(re.findall(r"[a-z]+", probe.passages_file().read_text(encoding="utf-8").lower()))
    for p in probe_binding.generate()["passages"]:
        assert not {w.lower() for w in p.name.split()} & known, p.name


def test_bm25_retrieves_each_family_as_the_top3(tmp_path, monkeypatch):
    """No passage is pinned: the asked member ranks first by first name and surname, the others by the surname."""
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    combined = probe_binding.combined_corpus("data/sample/psgs_w100.tsv")
    assert combined == tmp_path / "data" / "corpora" / "psgs_w100+probe+binding.tsv"
    ids = [p.id for p in corpus.read(combined)]
    assert len(ids) == len(set(ids)) == corpus.count(paths.sample_corpus()) + corpus.count(
        probe.passages_file()) + corpus.count(probe_binding.passages_file())
    dev = datasets.load("probe_binding", "data/sample/probe_binding", "dev")
    records = json.loads((BUNDLED / "dev.json").read_text())
    assert [r.question for r in dev] == [r["question"] for r in records]
    bm25 = retrieval.build(combined, "binding-test")
    hits = bm25.search([r["question"] for r in records], k=3)
    for r, h in zip(records, hits):
        assert h[0].passage_id == r["passage_id"]
        assert {x.passage_id for x in h[1:]} == {d["passage_id"] for d in r["distractors"]}, r["question"]


QUESTIONS = [  # two families of 3, member-major order
    {"answer": ["Paris"], "family": "A", "entity": "a1", "distractors": [{"value": "Oslo"}, {"value": "Lima"}]},
    {"answer": ["pilot"], "family": "B", "entity": "b1", "distractors": [{"value": "nurse"}, {"value": "baker"}]},
    {"answer": ["Oslo"], "family": "A", "entity": "a2", "distractors": [{"value": "Paris"}, {"value": "Lima"}]},
    {"answer": ["nurse"], "family": "B", "entity": "b2", "distractors": [{"value": "pilot"}, {"value": "baker"}]},
    {"answer": ["Lima"], "family": "A", "entity": "a3", "distractors": [{"value": "Paris"}, {"value": "Oslo"}]},
    {"answer": ["baker"], "family": "B", "entity": "b3", "distractors": [{"value": "pilot"}, {"value": "nurse"}]},
]


def test_shares_counted_by_hand(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    # family A answered "Paris" for every member (name-blind: 1 asked, 2 distractor); family B bound (3 asked)
    blind = ["Paris", "pilot", "paris.", "nurse", "The Paris", "baker"]
    # family A: asked, neither, distractor; family B: missing one member (incomplete family)
    mixed = {0: "Paris", 2: "Rome", 4: "Oslo", 1: "pilot", 3: "baker"}
    write_jsonl(paths.predictions_file("r", binding_report.DATASET, "regrad"),
                [{"test_id": i, "prediction": p} for i, p in enumerate(blind)])
    write_jsonl(paths.predictions_file("r", binding_report.DATASET, "shift"),
                [{"test_id": i, "prediction": p} for i, p in mixed.items()])
    root = tmp_path / "data"
    (root / binding_report.DATASET).mkdir(parents=True)
    (root / binding_report.DATASET / "dev.json").write_text(json.dumps(QUESTIONS))
    table = binding_report.shares("r", ["probe", binding_report.DATASET], data_root=str(root))
    regrad, shift = table.shares
    assert (regrad.method, regrad.n, regrad.asked, regrad.distractor, regrad.neither) == ("regrad", 6, 4, 2, 0)
    assert (regrad.families, regrad.name_blind, regrad.bound) == (2, 1, 1) and regrad.ratio == 2.0
    assert (shift.n, shift.asked, shift.distractor, shift.neither) == (5, 2, 2, 1)
    assert (shift.families, shift.name_blind, shift.bound) == (1, 0, 0)
    assert table.rows()[0] == ["regrad", "6", "66.7% (4)", "33.3% (2)", "0.0% (0)", "2.00", "1/2", "1/2"]
    assert isinstance(binding_report.shares("r", ["probe"], data_root=str(root)), analysis.Missing)
    assert isinstance(binding_report.shares("none", [binding_report.DATASET], data_root=str(root)), analysis.Missing)
    (root / binding_report.DATASET / "dev.json").write_text(json.dumps([{"answer": ["x"]}]))
    with pytest.raises(ValueError, match="record 0: lacks"):
        binding_report.shares("r", [binding_report.DATASET], data_root=str(root))


def test_the_position_free_order_is_the_same_for_every_member_of_a_family():
    from regrad_lib.data import probe_binding as pb

    def record(tid, asked):        # BM25's rank order: the asked member's passage first
        ids = ["p7", "p3", "p5"]
        ids = [ids[asked]] + [p for k, p in enumerate(ids) if k != asked]
        return {"test_id": tid, "question": f"q{tid}", "answers": ["v"], "passage_ids": ids,
                "passages": [f"text {p}" for p in ids], "titles": [f"title {p}" for p in ids],
                "scores": [3.0, 2.0, 1.0]}

    ranked = [record(0, 0), record(1, 1), record(2, 2)]
    assert len({tuple(r["passage_ids"]) for r in ranked}) == 3          # rank order says who is asked
    free = pb.position_free(ranked)
    assert {tuple(r["passage_ids"]) for r in free} == {("p3", "p5", "p7")}
    for r in free:      # every per-passage field moved with its id
        assert r["passages"] == [f"text {p}" for p in r["passage_ids"]]
        assert r["titles"] == [f"title {p}" for p in r["passage_ids"]]
        assert sorted(r["scores"]) == [1.0, 2.0, 3.0] and r["question"] in ("q0", "q1", "q2")
    assert free[0]["scores"] == [2.0, 1.0, 3.0]                           # p3, p5, p7 of record 0's ranks
    assert ranked[0]["passage_ids"] == ["p7", "p3", "p5"]                 # the input is left as it was
    bad = dict(ranked[0], titles=["only one"])
    with pytest.raises(ValueError, match="unequal length"):
        pb.position_free([bad])


def test_the_names_effect_on_the_updates_predictions_is_computed_as_by_hand():
    from regrad_lib.reporting import binding_report

    nll = {"A": {"A": 1.0, "B": 2.0, "C": 3.0}, "B": {"A": 2.0, "B": 1.5, "C": 3.0},
           "C": {"A": 2.0, "B": 2.0, "C": 2.5}}
    rows = [{"test_id": i, "family": "f", "asked": asked, "value_of": owner, "value": owner.lower(),
             "is_asked": owner == asked, "nll": v, "nll_no_update": 2.0}
            for i, (asked, by) in enumerate(nll.items()) for owner, v in by.items()]
    updated, plain = binding_report.name_effects(rows)
    # asked value − mean of the others: −1.5, −1.0, +0.5 -> mean −2/3, SE sqrt(2.1667 / 2 / 3) = 0.601
    assert updated.asked_margin[0] == pytest.approx(-2 / 3)
    assert updated.asked_margin[1] == pytest.approx(0.601, abs=1e-3)
    # a value when its owner is asked − when another is: a −1, b −0.5, c −0.5 -> −2/3 ± sqrt(0.1667 / 2 / 3)
    assert updated.name_effect[0] == pytest.approx(-2 / 3) and updated.name_effect[1] == pytest.approx(0.1667, abs=1e-3)
    assert updated.lowest == pytest.approx(2 / 3) and updated.questions == 3
    assert plain.name_effect == (0.0, 0.0) and plain.lowest == 1.0         # ties: the asked value counts as lowest


def test_a_family_with_one_member_asked_has_no_name_effect():
    from regrad_lib.reporting import binding_report

    rows = [{"test_id": 0, "family": "f", "asked": "A", "value_of": o, "value": o, "is_asked": o == "A",
             "nll": v, "nll_no_update": v} for o, v in (("A", 1.0), ("B", 2.0), ("C", 3.0))]
    updated, _ = binding_report.name_effects(rows)
    assert updated.asked_margin[0] == pytest.approx(-1.5) and math.isnan(updated.name_effect[0])
    assert "nan" in binding_report.NameEffectTable([updated]).to_markdown()
