"""The probe's transfer split: bundled as generated, deterministic, nothing shared with what is meta-trained."""

import re

import pytest

from regrad_lib.data import corpus, datasets, probe, probe_transfer
from regrad_lib.io import paths

BUNDLED = paths.sample_dir() / "probe_transfer"
_STOP = {"what", "which", "is", "the", "of", "does", "did", "in", "a", "on", "do", "from", "to", "with", "who",
         "under", "where", "up", "was", "how", "by", "at", "an"}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


@pytest.fixture(scope="module")
def data():
    return probe_transfer.generate()


def test_the_bundled_files_are_exactly_what_the_generator_writes(tmp_path):
    written = probe_transfer.write(tmp_path / "t")
    assert sorted(written) == sorted(p.name for p in BUNDLED.iterdir())
    for name, path in written.items():
        assert path.read_bytes() == (BUNDLED / name).read_bytes(), name


def test_deterministic_and_seeded(data):
    again = probe_transfer.generate()
    assert again["dev"] == data["dev"]
    assert [p.passage for p in again["passages"]] == [p.passage for p in data["passages"]]
    assert probe_transfer.generate(n_dev=12, n_validation=6, seed=1)["dev"] != data["dev"][:12]


def test_nothing_is_shared_with_the_meta_trained_probe(data):
    """No relation, question template, passage sentence or closed answer value of the probe's relations (the
    only ones whose questions are meta-trained) — checked against the generator's own lists."""
    trained = [r for r in probe.RELATIONS if r.name not in probe.HELD_OUT]
    assert not {r.name for r in probe_transfer.RELATIONS} & {r.name for r in probe.RELATIONS}
    new_templates = {q for r in probe_transfer.RELATIONS for q in r.questions}
    assert not new_templates & {r.question for r in probe.RELATIONS}
    assert not {s for r in probe_transfer.RELATIONS for s in r.sentences} & {s for r in probe.RELATIONS
                                                                               for s in r.sentences}
    assert not {v for r in probe_transfer.RELATIONS for v in r.values} & {v for r in probe.RELATIONS for v in r.values}
    # the question skeletons (the name cut out) differ from every meta-trained one, and the records use only them
    skeleton = lambda q: re.sub(r"\{n\}", "", q)   # noqa: E731
    assert not {skeleton(q) for q in new_templates} & {skeleton(r.question) for r in trained}
    for record in data["dev"] + data["validation"]:
        assert record["question"] in {q.format(n=record["entity"]) for q in probe_transfer.BY_NAME[
            record["relation"]].questions}
    # people: disjoint from the probe's and between dev and validation
    probe_people = {p.name for p in probe.generate()["passages"]}
    dev, val = {r["entity"] for r in data["dev"]}, {r["entity"] for r in data["validation"]}
    assert not (dev | val) & probe_people and not dev & val


def test_questions_share_only_the_name_with_their_passage(data):
    people = {p.passage_id: p for p in data["passages"]}
    for record in data["dev"] + data["validation"]:
        person = people[record["passage_id"]]
        assert record["answer"] == [person.facts[record["relation"]]] and record["answer"][0] in person.passage
        assert (_words(record["question"]) - _STOP) & _words(person.passage) == _words(person.name), record
        if record["answer_type"] == "invented":       # a word neither the corpus nor any other answer has
            assert not _words(record["answer"][0]) & _words(paths.sample_corpus().read_text(encoding="utf-8"))


def test_balanced_over_relations_styles_and_answer_types(data):
    for split in ("dev", "validation"):
        cells = {}
        for r in data[split]:
            cells[(r["relation"], r["style"])] = cells.get((r["relation"], r["style"]), 0) + 1
        assert len(cells) == len(probe_transfer.RELATIONS) * len(probe_transfer.STYLES)
        assert len(set(cells.values())) == 1
        assert {r["answer_type"] for r in data[split]} == {"closed", "invented"}


def test_passage_token_lengths(data):
    """Narrative passages of realistic length (100–150 tokens with their title, as 04_encode formats them), cards
    short; the asked fact starts early enough to survive the bank's 128-token cut."""
    transformers = pytest.importorskip("transformers")
    folder = paths.repo_root() / "models" / "SmolLM2-135M-Instruct"
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("the demo model's tokenizer is not prepared (make model)")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    n_tokens = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])   # noqa: E731
    people = {p.passage_id: p for p in data["passages"]}
    for p in data["passages"]:
        n = n_tokens(f"{p.name}\n{p.passage}")
        assert (100 <= n <= 150) if p.style == "narrative" else (20 <= n <= 50), (p.style, n, p.passage)
    for record in data["dev"] + data["validation"]:
        p = people[record["passage_id"]]
        text = f"{p.name}\n{p.passage}"
        assert n_tokens(text[:text.index(record["answer"][0])]) < 110, record


def test_loader_reads_the_split_and_the_corpus_holds_its_passages(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    dev = datasets.load("probe_transfer", "data/sample/probe_transfer", "dev")
    assert [r.question for r in dev] == [r["question"] for r in probe_transfer.generate()["dev"]]
    plain = [p.id for p in corpus.read(probe.combined_corpus("data/sample/psgs_w100.tsv"))]
    both = probe.combined_corpus("data/sample/psgs_w100.tsv", transfer=True)
    assert both.name == "psgs_w100+probe+transfer.tsv"
    ids = [p.id for p in corpus.read(both)]
    # the plain corpus (meta-training's retrieval) holds no transfer passage; the transfer index holds both
    assert not any(i.startswith("transfer-") for i in plain) and "probe-00000" in plain
    assert ids[:len(plain)] == plain and len(ids) == len(plain) + corpus.count(probe.transfer_passages_file())
    groups = probe_transfer.groups([{"answer_type": "closed"}, {"answer_type": "invented"}])
    assert groups == {"0": "out of template, closed answers", "1": "out of template, invented answers"}


def test_01_index_corpus_with_the_transfer_split(tmp_path, monkeypatch):
    from regrad_lib.data import indexed_corpus

    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    sample = "data/sample/psgs_w100.tsv"
    assert indexed_corpus.prepare(sample, True, transfer=True).name == "psgs_w100+probe+transfer.tsv"
    assert indexed_corpus.prepare(sample, True, True, True).name == "psgs_w100+probe+binding+transfer.tsv"
    assert indexed_corpus.prepare("data/sample/psgs_w100.tsv", True).name == "psgs_w100+probe.tsv"
    with pytest.raises(ValueError, match="probe = True too"):
        indexed_corpus.prepare("data/sample/psgs_w100.tsv", False, transfer=True)
