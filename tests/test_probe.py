"""The knowledge-injection probe: deterministic, bundled as generated, built so that closed book cannot know."""

import json
import re

import pytest

from regrad_lib.data import corpus, datasets, probe
from regrad_lib.io import paths

BUNDLED = paths.sample_dir() / "probe"
_STOP = {"what", "which", "is", "the", "of", "does", "in", "a", "on", "do", "have", "from"}


def test_the_bundled_files_are_exactly_what_the_generator_writes(tmp_path):
    written = probe.write(tmp_path / "probe")
    assert sorted(written) == sorted(p.name for p in BUNDLED.iterdir())
    for name, path in written.items():
        assert path.read_bytes() == (BUNDLED / name).read_bytes(), name


def test_generation_is_deterministic_and_seeded():
    a, b = probe.generate(n_train=20, n_dev=12), probe.generate(n_train=20, n_dev=12)
    assert a["dev"] == b["dev"] and [p.passage for p in a["passages"]] == [p.passage for p in b["passages"]]
    other = probe.generate(n_train=20, n_dev=12, seed=1)
    assert other["dev"] != a["dev"]


def test_design_invariants():
    data = probe.generate()
    people = {p.passage_id: p for p in data["passages"]}
    train_people = {r["entity"] for r in data["train"]}
    dev_people = {r["entity"] for r in data["dev"]}
    assert not train_people & dev_people                                      # disjoint people
    assert {r["relation"] for r in data["train"]}.isdisjoint(probe.HELD_OUT)  # held out of training questions
    assert set(probe.HELD_OUT) <= {r["relation"] for r in data["dev"]}
    first = [r["relation"] for r in data["dev"][:len(probe.RELATIONS)]]
    assert first == [r.name for r in probe.RELATIONS]                         # balanced: round-robin
    firsts = [p.name.split()[0] for p in people.values()]
    lasts = [p.name.split()[1] for p in people.values()]
    assert len(set(firsts)) == len(firsts) and len(set(lasts)) == len(lasts) and not set(firsts) & set(lasts)
    for record in data["train"] + data["dev"]:
        person = people[record["passage_id"]]
        relation = probe.BY_NAME[record["relation"]]
        assert record["answer"] == [person.facts[relation.name]] and record["answer"][0] in relation.values
        assert person.passage.count(person.name) == probe.FACTS_PER_PASSAGE
        # the question shares no content word with the passage but the person's name
        words = lambda text: set(re.findall(r"[a-z]+", text.lower())) - _STOP   # noqa: E731
        name = words(person.name)
        assert words(record["question"]) & words(person.passage) == name


def test_names_are_unknown_to_the_corpus():
    text = paths.sample_corpus().read_text(encoding="utf-8").lower()
    known = set(re.findall(r"[a-z]+", text))
    for p in probe.generate()["passages"]:
        assert not {w.lower() for w in p.name.split()} & known, p.name


def test_loader_and_combined_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    dev = datasets.load("probe", "data/sample/probe", "dev")
    bundled = json.loads((BUNDLED / "dev.json").read_text())
    assert [r.question for r in dev] == [r["question"] for r in bundled] and dev[0].answers == bundled[0]["answer"]
    combined = probe.combined_corpus("data/sample/psgs_w100.tsv")
    assert combined == tmp_path / "data" / "corpora" / "psgs_w100+probe.tsv"
    ids = [p.id for p in corpus.read(combined)]
    n_base = corpus.count(paths.sample_corpus())
    assert len(ids) == n_base + corpus.count(BUNDLED / "passages.tsv") and len(set(ids)) == len(ids)
    assert ids[n_base] == "probe-00000"
    stamp = combined.stat().st_mtime_ns
    assert probe.combined_corpus("data/sample/psgs_w100.tsv").stat().st_mtime_ns == stamp    # reused as is
    with pytest.raises(FileNotFoundError, match="passages.tsv"):
        probe.combined_corpus("data/sample/psgs_w100.tsv", tmp_path / "none.tsv")
