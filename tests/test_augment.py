"""augment: record format, output names, provenance sidecar, resume after an interruption, recall."""

from __future__ import annotations

import json

import pytest

from regrad_lib import retrieval
from regrad_lib.io import paths
from regrad_lib.retrieval import augment

QUESTIONS = [{"question": f"Where is monument {i}?", "answer": [f"city {i}", f"town {i}"]} for i in range(10)]


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path / "work"))
    corpus = tmp_path / "c.tsv"
    corpus.write_text("id\ttext\ttitle\n" + "".join(
        f"{100 + i}\tThe monument{i} stands in city {i}.\tMonument {i}\n" for i in range(10)))
    data = tmp_path / "2wikimultihopqa"
    data.mkdir()
    (data / "dev.json").write_text(json.dumps([{"question": f"Where is monument{i} in the city?", "answer": q["answer"]}
                                               for i, q in enumerate(QUESTIONS)]))
    return retrieval.build(corpus, "tiny"), data


class Dying:
    """A retriever that stops (like Ctrl-C) after ``after`` search calls."""

    def __init__(self, inner, after):
        self.inner, self.after = inner, after

    def search(self, queries, k):
        if self.after == 0:
            raise KeyboardInterrupt
        self.after -= 1
        return self.inner.search(queries, k)

    def describe(self):
        return self.inner.describe()

    def count(self):
        return self.inner.count()


def test_records_and_sidecar(setup):
    r, data = setup
    out = augment.augment("2wikimultihopqa", "dev", retriever=r, data_dir=data, topk=2)
    assert out == paths.augmented_file("2wikimultihopqa", "dev")
    rows = json.loads(out.read_text())
    assert len(rows) == 10
    assert list(rows[3]) == list(augment.RECORD_KEYS)
    assert rows[3]["test_id"] == 3 and rows[3]["answers"] == ["city 3", "town 3"]
    assert rows[3]["passage_ids"][0] == "103" and len(rows[3]["passage_ids"]) == 2
    assert rows[3]["titles"][0] == "Monument 3" and rows[3]["passages"][0] == "The monument3 stands in city 3."
    assert rows[3]["scores"][0] > rows[3]["scores"][1]
    meta = json.loads(augment.meta_file(out).read_text())
    assert meta["config"]["index"] == "tiny" and meta["config"]["backend"] == "tantivy"
    assert meta["config"]["topk"] == 2 and meta["count"] == 10 and "git_revision" in meta
    assert not augment.partial_file(out).exists()


def test_output_names(setup):
    assert augment.output_name("dev") == "dev"
    assert augment.output_name("dev", 30) == "dev"
    assert augment.output_name("train") == "train_all"
    assert augment.output_name("train", 500) == "train_500"
    r, data = setup
    (data / "train.json").write_text((data / "dev.json").read_text())
    out = augment.augment("2wikimultihopqa", "train", retriever=r, data_dir=data, start=2, end=6)
    assert out.name == "train_4.json"
    assert [row["test_id"] for row in json.loads(out.read_text())] == [2, 3, 4, 5]


def test_resume_gives_the_same_file(setup, tmp_path):
    r, data = setup
    whole = augment.augment("2wikimultihopqa", "dev", retriever=r, data_dir=data, batch_size=3)
    expected = whole.read_bytes()
    whole.unlink()
    with pytest.raises(KeyboardInterrupt):
        augment.augment("2wikimultihopqa", "dev", retriever=Dying(r, after=2), data_dir=data, batch_size=3)
    partial = augment.partial_file(whole)
    assert not whole.exists() and len(partial.read_text().splitlines()) == 1 + 6
    with partial.open("a") as f:
        f.write('{"test_id": 6, "quest')                 # a torn last line is dropped
    calls = []
    tracking = Dying(r, after=100)
    tracking.search = lambda q, k: calls.append(len(q)) or r.search(q, k)
    out = augment.augment("2wikimultihopqa", "dev", retriever=tracking, data_dir=data, batch_size=3)
    assert calls == [3, 1]                                # only the 4 missing questions were searched
    assert out.read_bytes() == expected


def test_existing_output(setup, caplog):
    r, data = setup
    out = augment.augment("2wikimultihopqa", "dev", retriever=r, data_dir=data, end=5)
    before = out.stat().st_mtime_ns
    assert augment.augment("2wikimultihopqa", "dev", retriever=r, data_dir=data, end=5) == out
    assert out.stat().st_mtime_ns == before               # same request: kept
    with pytest.raises(FileExistsError, match="another request.*overwrite=True"):
        augment.augment("2wikimultihopqa", "dev", retriever=r, data_dir=data, topk=1)
    augment.augment("2wikimultihopqa", "dev", retriever=r, data_dir=data, topk=1, overwrite=True)
    assert len(augment.read("2wikimultihopqa", "dev")[0]["passages"]) == 1


def test_bad_arguments(setup):
    r, data = setup
    with pytest.raises(ValueError, match="topk=0"):
        augment.augment("2wikimultihopqa", "dev", retriever=r, data_dir=data, topk=0)
    with pytest.raises(FileNotFoundError, match="written by 02_augment"):
        augment.read("hotpotqa", "dev")
    with pytest.raises(TypeError, match="list of dataset names"):
        augment.augment_all("hotpotqa", "dev", retriever=r)


def test_recall():
    records = [{"test_id": 0, "titles": ["A", "B"], "passage_ids": ["1", "2"], "gold_titles": ["A", "C"]},
               {"test_id": 1, "titles": ["C", "D"], "passage_ids": ["3", "4"], "gold_titles": ["C", "D"]},
               {"test_id": 2, "titles": ["E", "F"], "passage_ids": ["5", "6"], "gold_titles": ["X"]},
               {"test_id": 3, "titles": ["E", "F"], "passage_ids": ["5", "6"]}]
    rec = augment.title_recall(records, "d")
    assert (rec.questions, rec.k, rec.any_hit, rec.all_hit) == (3, 2, 2 / 3, 1 / 3)
    assert augment.title_recall([{"test_id": 0, "titles": ["A"]}]) is None


def test_passage_recall_and_table(setup, tmp_path):
    r, data = setup
    gold = [{"qid": i, "gold_ids": [100 + i]} for i in range(10)]
    gold[0]["gold_ids"] = [999]
    (data / "gold_passages.json").write_text(json.dumps(gold))
    out = augment.augment("2wikimultihopqa", "dev", retriever=r, data_dir=data)
    rows = augment.recall_table({"2wikimultihopqa": out}, data_root=str(tmp_path))
    assert rows == [{"dataset": "2wikimultihopqa", "kind": "passage", "k": 3, "questions": 10,
                     "any_hit": 0.9, "all_hit": 0.9}]
    assert augment.recall_figure(rows).axes


def test_an_index_without_passages_is_refused(setup):
    r, data = setup

    class Empty(Dying):
        def count(self):
            return 0

    with pytest.raises(ValueError, match=r"the index 'tiny' holds no passages"):
        augment.augment("2wikimultihopqa", "dev", retriever=Empty(r, 10), data_dir=data)
    assert not paths.augmented_file("2wikimultihopqa", "dev").exists()


def test_negative_limits_are_refused_naming_them(setup, tmp_path, caplog):
    """02 `-p limit -1` augmented questions [0:-1] (9 of 10 here); `-p train_limit -2` wrote train_8.json."""
    r, data = setup
    root = str(tmp_path)
    with pytest.raises(ValueError, match=r"parameter limit = -1 must be >= 1"):
        augment.augment_all(["2wikimultihopqa"], "dev", retriever=r, data_root=root, limit=-1)
    with pytest.raises(ValueError, match=r"parameter limits\['2wikimultihopqa'\] = 0 must be >= 1"):
        augment.augment_all(["2wikimultihopqa"], "dev", retriever=r, data_root=root, limits={"2wikimultihopqa": 0})
    with pytest.raises(ValueError, match=r"parameter end \(the limit of questions\) = -2 must be >= 1"):
        augment.augment("2wikimultihopqa", "train", retriever=r, data_dir=data, end=-2)
    with pytest.raises(ValueError, match=r"parameter start = -3 must be >= 0"):
        augment.augment("2wikimultihopqa", "dev", retriever=r, data_dir=data, start=-3)
    assert not paths.augmented_file("2wikimultihopqa", "dev").parent.exists()
    augment.augment_all(["2wikimultihopqa"], "dev", retriever=r, data_root=root, limit=2, limits={"probe": 60})
    assert "limits (limit_per_dataset) name ['probe'], not augmented here" in caplog.text


def test_a_topk_beyond_the_index_is_refused_before_any_file(setup):
    """02 `-p topk 10**12`: the kernel died in tantivy's allocator and left a .partial file."""
    r, data = setup
    with pytest.raises(ValueError, match=r"topk=1000000000000 is more than the 10 passages of the index 'tiny'"):
        augment.augment("2wikimultihopqa", "dev", retriever=r, data_dir=data, topk=10**12)
    output = paths.augmented_file("2wikimultihopqa", "dev")
    assert not output.exists() and not augment.partial_file(output).exists()


def test_a_full_disk_names_the_partial_file(setup, monkeypatch):
    """A full disk at the start of 02 raised from writing the .partial header, naming no file."""
    import errno
    import pathlib

    r, data = setup

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pathlib.Path, "write_text", full)
    with pytest.raises(OSError, match=r"No space left on device \(writing .*2wikimultihopqa/dev.json.partial\)"):
        augment.augment("2wikimultihopqa", "dev", retriever=r, data_dir=data)
    monkeypatch.undo()
    assert augment.augment("2wikimultihopqa", "dev", retriever=r, data_dir=data).is_file()
