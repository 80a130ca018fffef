"""Corpus readers: the bundled DPR TSV, csv quoting, JSONL, bad-row tolerance and its error."""

from __future__ import annotations

import gzip
import json
import logging

import pytest

from regrad_lib.data import corpus
from regrad_lib.data.corpus import CorpusFormatError, Passage
from regrad_lib.io import paths

HEADER = "id\ttext\ttitle\n"


def _tsv(tmp_path, rows: list[str], name: str = "c.tsv"):
    path = tmp_path / name
    path.write_text(HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_sample_corpus_reads_all_passages():
    path = paths.sample_corpus()
    passages = list(corpus.read("data/sample/psgs_w100.tsv"))
    assert len(passages) == 9563 == corpus.count(path)
    assert len({p.id for p in passages}) == 9563
    assert passages[0].id == "128529" and passages[0].title == "Erie Canal"
    assert all(p.text and "\t" not in p.text for p in passages)
    assert any('"inland lakes,"' in p.text for p in passages)  # doubled quotes undone


def test_tsv_quoting_and_field_order(tmp_path):
    path = _tsv(tmp_path, ['1\t"He said ""hi"" there"\tA "quoted" title', "2\tplain text\tPlain",
                           '3\t"tab\tinside"\tT'])
    assert list(corpus.read(path)) == [Passage("1", 'A "quoted" title', 'He said "hi" there'),
                                       Passage("2", "Plain", "plain text"), Passage("3", "T", "tab\tinside")]
    assert corpus.count(path) == 3


def test_tsv_without_trailing_newline_and_gzip(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text(HEADER + "1\tx\tX\n2\ty\tY")
    assert [p.id for p in corpus.read(path)] == ["1", "2"] and corpus.count(path) == 2
    gz = tmp_path / "c.tsv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert list(corpus.read(gz)) == list(corpus.read(path)) and corpus.count(gz) == 2


def test_bad_rows_skipped_counted_and_logged(tmp_path, caplog):
    rows = [f"{i}\ttext {i}\tT{i}" for i in range(1, 101)]
    rows[9] = "10\tonly two fields"
    rows[19] = "\tno id\tT"
    path = _tsv(tmp_path, rows)
    with caplog.at_level(logging.WARNING, logger="regrad_lib.data.corpus"):
        got = list(corpus.read(path))
    assert len(got) == 98 and "10" not in {p.id for p in got}
    assert "line 11" in caplog.text and "line 21" in caplog.text and "2 of 100 rows" in caplog.text
    assert corpus.count(path) == 100


def test_too_many_bad_rows_raise_after_the_stream(tmp_path):
    rows = [f"{i}\ttext\tT" if i % 2 else f"{i}\tbroken" for i in range(1, 41)]
    path = _tsv(tmp_path, rows)
    stream = corpus.read(path)
    assert next(stream).id == "1"  # good passages are yielded before the verdict
    with pytest.raises(CorpusFormatError) as err:
        list(stream)
    msg = str(err.value)
    assert "c.tsv" in msg and "20 of 40 rows" in msg and "lines 3, 5, 7" in msg


def test_bad_row_tolerance_rule():
    assert not corpus.too_many_bad(10, 100, 0.001)  # a handful is always fine
    assert corpus.too_many_bad(11, 100, 0.001)
    assert not corpus.too_many_bad(1000, 2_000_000, 0.001)
    assert corpus.too_many_bad(2001, 2_000_000, 0.001)
    assert corpus.too_many_bad(3, 3, 0.001)  # nothing good at all
    assert not corpus.too_many_bad(0, 0, 0.001)


def test_fraction_can_be_raised(tmp_path):
    rows = [f"{i}\ttext\tT" if i % 2 else f"{i}\tbroken" for i in range(1, 41)]
    assert len(list(corpus.read(_tsv(tmp_path, rows), max_bad_fraction=0.6))) == 20


def test_wrong_header(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("id\ttitle\ttext\n1\tT\tx\n")
    with pytest.raises(CorpusFormatError, match=r"c.tsv: line 1: header .*\['id', 'text', 'title'\]"):
        list(corpus.read(path))


def test_jsonl_corpus(tmp_path, caplog):
    lines = [json.dumps({"_id": "d1", "title": "T1", "text": "one"}), json.dumps({"id": 2, "text": "two"}),
             "{not json", json.dumps({"id": "", "text": "x"})]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="regrad_lib.data.corpus"):
        got = list(corpus.read(path))
    assert got == [Passage("d1", "T1", "one"), Passage("2", "", "two")]
    assert "line 3" in caplog.text and "line 4" in caplog.text
    assert corpus.count(path) == 4


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "c.csv").write_text("x")
    with pytest.raises(ValueError, match=r"expected a \.tsv .* or \.jsonl"):
        corpus.read(tmp_path / "c.csv")
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        corpus.read(tmp_path / "nope.tsv")


# --- corpus content and damaged files -----------------------------------------------------------------

def test_duplicate_ids_are_refused_naming_ids_and_lines(tmp_path):
    path = _tsv(tmp_path, ["1\tone\tA", "2\ttwo\tB", "1\tanother text\tC", "3\tthree\tD", "2\tagain\tE"])
    with pytest.raises(CorpusFormatError, match=r"c.tsv: 2 passage id\(s\) used more than once \('1' at lines 2, "
                                                r"4; '2' at lines 3, 6\).*keyed by passage id"):
        list(corpus.read(path))
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "text": "x"}) for i in (7, 8, 7)) + "\n")
    with pytest.raises(CorpusFormatError, match=r"'7' at lines 1, 3"):
        list(corpus.read(jsonl))


@pytest.mark.parametrize("content", ["", HEADER])
def test_empty_or_header_only_corpus_is_refused(tmp_path, content):
    path = tmp_path / "c.tsv"
    path.write_text(content)
    with pytest.raises(CorpusFormatError, match=r"c.tsv: no passages \(0 data rows\)"):
        list(corpus.read(path))


def test_a_non_utf8_byte_makes_a_bad_row_not_a_failed_build(tmp_path, caplog):
    path = tmp_path / "c.tsv"
    path.write_bytes(HEADER.encode() + b"1\tgood\tA\n2\tbad \xff byte\tB\n3\tgood too\tC\n")
    with caplog.at_level(logging.WARNING, logger="regrad_lib.data.corpus"):
        assert [p.id for p in corpus.read(path)] == ["1", "3"]
    assert "line 3 skipped: not UTF-8 (byte 0xff)" in caplog.text
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_bytes(b'{"id": 1, "text": "caf\xe9"}\n{"id": 2, "text": "fine"}\n')
    assert [p.id for p in corpus.read(jsonl)] == ["2"]


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "1\tx\tX\n").encode())
    assert list(corpus.read(path)) == [Passage("1", "X", "x")]


def test_truncated_and_fake_gzip_name_the_file(tmp_path):
    rows = HEADER + "".join(f"{i}\tpassage number {i} with some words\tT{i}\n" for i in range(3000))
    whole = gzip.compress(rows.encode())
    truncated = tmp_path / "cut.tsv.gz"
    truncated.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(CorpusFormatError, match=r"cut.tsv.gz: after line \d+: the gzip stream ends early.*truncated"):
        list(corpus.read(truncated))
    with pytest.raises(CorpusFormatError, match=r"cut.tsv.gz: after line \d+: .*truncated"):
        corpus.count(truncated)
    fake = tmp_path / "plain.tsv.gz"
    fake.write_text(rows)
    with pytest.raises(CorpusFormatError, match=r"plain.tsv.gz: after line 0: not a gzip file.*drop the .gz suffix"):
        list(corpus.read(fake))
    with pytest.raises(CorpusFormatError, match="not a gzip file"):
        corpus.count(fake)


def test_a_row_with_empty_text_is_a_bad_row_not_a_passage(tmp_path, caplog):
    """A corpus row with empty text was indexed (a passage that no question can retrieve for a reason)."""
    path = _tsv(tmp_path, ["1\tRome is a city.\tRome", "2\t   \tEmpty", "3\tOslo is a city.\tOslo"])
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"id": "1", "text": "Rome is a city."}\n{"id": "2", "text": ""}\n', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="regrad_lib.data.corpus"):
        assert [p.id for p in corpus.read(path)] == ["1", "3"]
        assert [p.id for p in corpus.read(jsonl)] == ["1"]
    assert "c.tsv: line 3 skipped: empty text" in caplog.text and "c.jsonl: line 2 skipped: empty 'text'" in caplog.text
