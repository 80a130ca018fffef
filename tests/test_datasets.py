"""Dataset loaders: every fixture format, every malformed fixture, slicing, errors, the bundled sample."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from regrad_lib.data import datasets, qa_records
from regrad_lib.data.qa_records import DatasetFormatError, QARecord
from regrad_lib.io import paths

FORMATS = Path(__file__).parent / "fixtures" / "formats"
SAMPLE = "data/sample"


def _dir(name: str) -> Path:
    return FORMATS / name


# --- original formats ---------------------------------------------------------------------------------------

def test_2wiki_fixture_answers_from_id_aliases():
    recs = datasets.load("2wikimultihopqa", _dir("2wikimultihopqa"), "dev")
    assert [r.answers for r in recs] == [["20 March 851"], ["Phoolwari"], ["Port of Spain"], ["no"]]
    assert [r.test_id for r in recs] == [0, 1, 2, 3]
    assert recs[0].source_id == "83bf3b5a0bd911eba7f7acde48001122"
    assert recs[0].question == "When did Lothair Ii's mother die?"
    assert recs[0].gold_titles == ("Lothair II", "Ermengarde of Tours")


def test_2wiki_aliases_extend_the_answer(tmp_path):
    shutil.copy(_dir("2wikimultihopqa") / "dev.json", tmp_path / "dev.json")
    (tmp_path / "id_aliases.json").write_text(
        '{"Q_id": "Q39178", "aliases": ["Port of Spain", "Port-of-Spain", "POS"], "demonyms": ["x"]}\n')
    recs = datasets.load("2wikimultihopqa", tmp_path, "dev")
    assert recs[2].answers == ["Port of Spain", "Port-of-Spain", "POS"]
    assert recs[1].answers == ["Phoolwari"]  # answer_id unknown to the aliases file: the plain answer


def test_2wiki_accepts_json_lines(tmp_path):
    records = json.loads((_dir("2wikimultihopqa") / "dev.json").read_text())
    (tmp_path / "dev.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    recs = datasets.load("2wikimultihopqa", tmp_path, "dev")
    assert [r.answers for r in recs] == [["20 March 851"], ["Phoolwari"], ["Port of Spain"], ["no"]]


def test_hotpot_fixture_dev_and_train():
    dev = datasets.load("hotpotqa", _dir("hotpotqa"), "dev")
    train = datasets.load("hotpotqa", _dir("hotpotqa"), "train")
    assert len(dev) == 20 and len(train) == 20
    assert dev[0].answers == ["yes"] and dev[0].source_id == "5a8b57f25542995d1e6f1371"
    assert dev[0].gold_titles == ("Scott Derrickson", "Ed Wood")
    assert train[0].question == "If Gallu is a demon Lilu is what?" and train[0].answers == ["a spirit"]
    raw = json.loads((_dir("hotpotqa") / "hotpot_dev_distractor_v1.json").read_text())
    assert [r.answers for r in dev] == [[x["answer"]] for x in raw]


def test_popqa_fixture_answers_parsed_as_json():
    recs = datasets.load("popqa", _dir("popqa"), "dev")
    assert len(recs) == 40  # the fixture has 40 rows: all of them fall in dev (rows 0-299)
    assert recs[0].answers == ["politician", "political leader", "political figure", "polit.", "pol"]
    assert recs[0].question == "What is George Rankin's occupation?" and recs[0].source_id == "0"
    assert recs[1].answers == ["journalist", "journo", "journalists"]
    assert all(len(set(r.answers)) == len(r.answers) for r in recs)
    with pytest.raises(DatasetFormatError, match=r"popQA.tsv has 40 rows: split 'train' \(rows 500-end\) holds no "
                                                 "questions"):
        datasets.load("popqa", _dir("popqa"), "train")         # an empty split is refused, not augmented


def test_popqa_never_evaluates_fields(tmp_path):
    lines = (_dir("popqa") / "popQA.tsv").read_text().split("\n")
    fields = lines[1].split("\t")
    fields[-1] = "__import__('os').getcwd()"
    (tmp_path / "popQA.tsv").write_text("\n".join([lines[0], "\t".join(fields)]) + "\n")
    with pytest.raises(DatasetFormatError, match=r"line 2: field 'possible_answers' is not a JSON list"):
        datasets.load("popqa", tmp_path, "dev")


def test_cwq_fixture_answers_and_aliases(tmp_path):
    recs = datasets.load("complexwebquestions", _dir("complexwebquestions"), "dev")
    assert len(recs) == 20
    assert recs[0].answers == ["2014 World Series"]
    assert recs[0].source_id == "WebQTest-832_c334509bb5e02cacae1ba2e80c176499"
    rec = json.loads((_dir("complexwebquestions") / "ComplexWebQuestions_dev.json").read_text())[0]
    rec["answers"] = [{"answer": "A", "aliases": ["A1", "B"], "answer_id": "m.1"},
                      {"answer": "B", "aliases": ["B1"], "answer_id": "m.2"}]
    (tmp_path / "ComplexWebQuestions_dev.json").write_text(json.dumps([rec]))
    assert datasets.load("complexwebquestions", tmp_path, "dev")[0].answers == ["A", "A1", "B", "B1"]


# --- malformed fixtures ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, bad, target, where, field", [
    ("2wikimultihopqa", "bad_dev.json", "dev.json", "record 1", "'question'"),
    ("hotpotqa", "bad_hotpot_dev_distractor_v1.json", "hotpot_dev_distractor_v1.json", "record 9", "'question'"),
    ("complexwebquestions", "bad_ComplexWebQuestions_dev.json", "ComplexWebQuestions_dev.json", "record 1",
     "'answers'"),
    ("popqa", "bad_popQA.tsv", "popQA.tsv", "line 4", "fields"),
])
def test_malformed_fixture_rejected(tmp_path, name, bad, target, where, field):
    shutil.copy(_dir(name) / bad, tmp_path / target)
    with pytest.raises(DatasetFormatError) as err:
        datasets.load(name, tmp_path, "dev")
    msg = str(err.value)
    assert str(tmp_path / target) in msg and where in msg and field in msg


def test_popqa_bad_row_names_counts(tmp_path):
    shutil.copy(_dir("popqa") / "bad_popQA.tsv", tmp_path / "popQA.tsv")
    with pytest.raises(DatasetFormatError, match=r"line 4: expected 17 tab-separated fields .* got 18"):
        datasets.load("popqa", tmp_path, "dev")


def test_popqa_bad_header(tmp_path):
    text = (_dir("popqa") / "popQA.tsv").read_text()
    (tmp_path / "popQA.tsv").write_text(text.replace("possible_answers", "answers", 1))
    with pytest.raises(DatasetFormatError, match=r"popQA.tsv: line 1: header"):
        datasets.load("popqa", tmp_path, "dev")


def test_truncated_json_says_so():
    with pytest.raises(DatasetFormatError, match="truncated"):
        datasets.load_generic(_dir("hotpotqa") / "bad_hotpot_dev_distractor_v1.json")


@pytest.mark.parametrize("record, field", [
    ({"question": "q?", "answer": ""}, "'answer'"),
    ({"question": "q?", "answer": []}, "'answer'"),
    ({"question": "q?", "answer": ["ok", ""]}, "'answer[1]'"),
    ({"question": "q?", "answer": 3}, "'answer'"),
    ({"question": "", "answer": "a"}, "'question'"),
    ({"answer": "a"}, "'question'"),
    ({"question": "q?"}, "'answer'"),
])
def test_generic_answers_must_be_non_empty_strings(tmp_path, record, field):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps([{"question": "fine?", "answer": "yes"}, record]))
    with pytest.raises(DatasetFormatError) as err:
        datasets.load_generic(path)
    assert str(path) in str(err.value) and "record 1" in str(err.value) and field in str(err.value)


def test_hotpot_empty_answer_rejected(tmp_path):
    raw = json.loads((_dir("hotpotqa") / "hotpot_train_v1.1.json").read_text())
    raw[3]["answer"] = "  "
    (tmp_path / "hotpot_train_v1.1.json").write_text(json.dumps(raw))
    with pytest.raises(DatasetFormatError, match=r"record 3: field 'answer' must be a non-empty string"):
        datasets.load("hotpotqa", tmp_path, "train")


# --- generic form, slicing, errors ----------------------------------------------------------------------------

def test_generic_json_and_jsonl(tmp_path):
    rows = [{"question": "a?", "answer": "x"}, {"question": "b?", "answer": ["y", "Y", "y"], "id": "q7"}]
    (tmp_path / "g.json").write_text(json.dumps(rows))
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("g.json", "g.jsonl"):
        recs = datasets.load_generic(tmp_path / name)
        assert recs == [QARecord(0, "a?", ["x"], "0"), QARecord(1, "b?", ["y", "Y"], "q7")]


@pytest.mark.parametrize("name", [n for n in datasets.NAMES if n != "pubmedqa"])   # yes/no: test_answer_kinds.py
def test_named_loaders_accept_generic_split_file(tmp_path, name):
    (tmp_path / "dev.json").write_text(json.dumps([{"question": "a?", "answer": "x"}]))
    assert datasets.load(name, tmp_path, "dev") == [QARecord(0, "a?", ["x"], "0")]


def test_slicing_keeps_positions():
    full = datasets.load("hotpotqa", _dir("hotpotqa"), "dev")
    part = datasets.load("hotpotqa", _dir("hotpotqa"), "dev", start=5, end=8)
    assert part == full[5:8] and [r.test_id for r in part] == [5, 6, 7]
    assert datasets.load("hotpotqa", _dir("hotpotqa"), "dev", start=18) == full[18:]
    assert [r.test_id for r in datasets.load_generic(SAMPLE + "/2wikimultihopqa/dev.json", 89)] == [89, 90]


def test_popqa_slice_keeps_row_positions():
    train = datasets.load("popqa", SAMPLE + "/popqa", "train", start=2, end=4)
    assert [r.test_id for r in train] == [502, 503]


def test_unknown_name_suggests():
    # a typo of a known name whose folder does not exist is still taken for a typo
    with pytest.raises(ValueError, match=r"Unknown dataset 'hotpot'\. Did you mean: hotpotqa\? Known: "):
        datasets.load("hotpot", SAMPLE + "/hotpot", "dev")
    with pytest.raises(FileNotFoundError, match=r"No file for dataset 'squad', split 'dev': tried .*squad/dev\.json, "
                       r".*squad/dev\.jsonl\. Known datasets: 2wikimultihopqa, hotpotqa, popqa, complexwebquestions"):
        datasets.load("squad", SAMPLE + "/squad", "dev")


def test_any_name_reads_the_generic_form(tmp_path):
    (tmp_path / "dev.jsonl").write_text('{"question": "Who?", "answer": "Ada"}\n'
                                        '{"question": "Where?", "answer": ["Rome", "Roma"]}\n')
    rows = datasets.load("myqa", tmp_path, "dev")
    assert [(r.test_id, r.question, r.answers) for r in rows] == [(0, "Who?", ["Ada"]), (1, "Where?", ["Rome", "Roma"])]
    (tmp_path / "train.json").write_text(json.dumps([{"question": "Q", "answer": []}]))
    with pytest.raises(qa_records.DatasetFormatError, match=r"train\.json: record 0: field 'answer' is an empty list"):
        datasets.load("myqa", tmp_path, "train")
    # a near-miss of a known name with its own generic file is a dataset of that name, not a typo
    assert len(datasets.load("hotpot", tmp_path, "dev")) == 2


def test_registered_loader_for_a_custom_format(tmp_path, monkeypatch):
    (tmp_path / "qa.tsv").write_text("Who wrote it?\tAda|Ada Lovelace\nWhen?\t\n")

    def tsv(folder, split):
        for line in (folder / "qa.tsv").read_text().splitlines():
            question, answers = line.split("\t")
            yield {"question": question, "answer": [a for a in answers.split("|") if a]}

    monkeypatch.setattr(datasets, "_custom", {})
    datasets.register("tsvqa", tsv)
    with pytest.raises(qa_records.DatasetFormatError,
                       match=r"dev \(loader 'tsvqa'\): record 1: field 'answer' is an empty"):
        datasets.load("tsvqa", tmp_path, "dev")
    (tmp_path / "qa.tsv").write_text("Who wrote it?\tAda|Ada Lovelace\n")
    [row] = datasets.load("tsvqa", tmp_path, "dev")
    assert row.answers == ["Ada", "Ada Lovelace"]
    with pytest.raises(ValueError, match="one of the named datasets"):
        datasets.register("popqa", tsv)
    # 02_augment's `loaders` parameter imports a module that registers its loader
    (tmp_path / "my_loaders.py").write_text("from regrad_lib.data import datasets\n"
                                            "datasets.register('fromplugin', lambda folder, split: [])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "fromplugin" in datasets.import_loaders(["my_loaders"])
    with pytest.raises(qa_records.DatasetFormatError,
                       match="dataset 'fromplugin', split 'dev' in .* holds no questions"):
        datasets.load("fromplugin", tmp_path, "dev")          # it loads nothing: refused, not an empty file


def test_missing_file_names_path_split_and_help(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        datasets.load("hotpotqa", tmp_path, "train")
    msg = str(err.value)
    assert str(tmp_path / "hotpot_train_v1.1.json") in msg and "'train'" in msg and "hotpotqa" in msg
    assert "Real data" in msg


def test_popqa_unknown_split():
    with pytest.raises(ValueError, match=r"popqa split 'test'.*'dev', 'train'"):
        datasets.load("popqa", SAMPLE + "/popqa", "test")


# --- bundled sample -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, split, n", [
    ("popqa", "dev", 300), ("popqa", "train", 500), ("hotpotqa", "dev", 102), ("hotpotqa", "train", 20),
    ("2wikimultihopqa", "dev", 91), ("complexwebquestions", "dev", 300),
])
def test_sample_loads(name, split, n):
    recs = datasets.load(name, f"{SAMPLE}/{name}", split)
    assert len(recs) == n
    assert all(r.question.strip() and r.answers and all(a.strip() for a in r.answers) for r in recs)


def test_sample_relative_and_absolute_dirs_agree():
    rel = datasets.load("complexwebquestions", SAMPLE + "/complexwebquestions", "dev", end=3)
    assert rel == datasets.load("complexwebquestions", paths.sample_dir() / "complexwebquestions", "dev", end=3)


def test_sample_popqa_splits_mix_both_relations():
    with (paths.sample_dir() / "popqa" / "popQA.tsv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 1000
    prop = {r["id"]: r["prop"] for r in rows}
    for split, want in (("dev", (150, 150)), ("train", (207, 293))):
        recs = datasets.load("popqa", SAMPLE + "/popqa", split)
        props = [prop[r.source_id] for r in recs]
        assert (props.count("occupation"), props.count("place of birth")) == want
    gold = json.loads((paths.sample_dir() / "popqa" / "gold_passages.json").read_text())
    assert [str(g["qid"]) for g in gold] == [r["id"] for r in rows]
    assert sorted(int(r["id"]) for r in rows) == list(range(1000))


def test_sample_hotpot_gold_titles():
    recs = datasets.load("hotpotqa", SAMPLE + "/hotpotqa", "dev")
    assert all(r.gold_titles for r in recs)
    gold = json.loads((paths.sample_dir() / "hotpotqa" / "gold_passages_dev.json").read_text())
    assert [g["qid"] for g in gold] == [r.source_id for r in recs]


# --- damaged inputs: bytes that are not UTF-8, byte-order marks, a folder for a file ----------------------------------

_FILES = [("2wikimultihopqa", "dev.json"), ("hotpotqa", "hotpot_dev_distractor_v1.json"), ("popqa", "popQA.tsv"),
          ("complexwebquestions", "ComplexWebQuestions_dev.json"), ("2wikimultihopqa", "id_aliases.json")]


def _copy_with(tmp_path, name, filename, change):
    shutil.copytree(_dir(name), tmp_path, dirs_exist_ok=True)
    raw = (tmp_path / filename).read_bytes()
    (tmp_path / filename).write_bytes(change(raw))
    return tmp_path


@pytest.mark.parametrize("name,filename", _FILES)
def test_non_utf8_bytes_name_the_file_and_line(tmp_path, name, filename):
    def spoil(raw):   # a Latin-1 byte at the start of the second line
        first, rest = raw.split(b"\n", 1)
        return first + b"\n\xe9" + rest
    folder = _copy_with(tmp_path, name, filename, spoil)
    with pytest.raises(DatasetFormatError, match=rf"{filename}: line 2: not UTF-8 text \(byte 0xe9 at offset \d+"):
        datasets.load(name, folder, "dev")


@pytest.mark.parametrize("name,filename", _FILES)
def test_a_byte_order_mark_is_accepted(tmp_path, name, filename):
    expected = datasets.load(name, _dir(name), "dev")
    folder = _copy_with(tmp_path, name, filename, lambda raw: b"\xef\xbb\xbf" + raw)
    assert datasets.load(name, folder, "dev") == expected


def test_a_folder_named_id_aliases_is_refused(tmp_path):
    shutil.copy(_dir("2wikimultihopqa") / "dev.json", tmp_path / "dev.json")
    (tmp_path / "id_aliases.json").mkdir()
    with pytest.raises(DatasetFormatError, match=r"id_aliases.json is not a file \(a folder\?\)"):
        datasets.load("2wikimultihopqa", tmp_path, "dev")


@pytest.mark.parametrize("suffix, text, where", [
    (".json", '[{"question": "Q0?", "answer": "a"}, {"question": "First?", "question": "Second?", "answer": "b"}]',
     r"dev.json: record 1"),
    (".jsonl", '{"question": "Q0?", "answer": "a"}\n{"question": "First?", "question": "Second?", "answer": "b"}\n',
     r"dev.jsonl: line 2 \(record 1\)"),
])
def test_a_key_given_twice_in_a_record_is_refused(tmp_path, suffix, text, where):
    """`{"question": "First?", "question": "Second?"}` was read as "Second?"."""
    (tmp_path / f"dev{suffix}").write_text(text, encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=rf"{where}: key 'question' appears twice in one JSON object "
                                                 r"\('First\?', then 'Second\?'\)"):
        datasets.load("myqa", tmp_path, "dev")
