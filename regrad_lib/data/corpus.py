"""Streaming, constant-memory readers for passage corpora.

Formats, picked by file suffix (``.gz`` on top of either is read through gzip):

- ``.tsv``: DPR ``psgs_w100.tsv``: a header row ``id\\ttext\\ttitle``, then one passage per row, tab-separated,
  csv quoting (a field holding ``"`` is quoted, inner quotes doubled).
- ``.jsonl``: one JSON object per line with ``_id`` (BEIR) or ``id``, ``text`` and optionally ``title``.

Bad rows (wrong field count, empty id or text, bad JSON, blank lines, bytes that are not UTF-8) are skipped, counted
and logged with their line numbers (the first few). When the stream ends, the bad rows are checked against a
tolerance: too many raise :class:`CorpusFormatError` (rule in :func:`too_many_bad`), and so do a corpus without
a single passage and a passage id used twice (the bank is keyed by id). A wrong TSV header raises at once, a
truncated or fake ``.gz`` where it is found; a UTF-8 byte-order mark is accepted.
"""

from __future__ import annotations

import array
import csv
import gzip
import hashlib
import io
import json
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from regrad_lib.io import paths

__all__ = ["CorpusFormatError", "Passage", "TSV_HEADER", "count", "file_kind", "read", "same_signature", "signature",
           "too_many_bad"]

log = logging.getLogger(__name__)

TSV_HEADER = ("id", "text", "title")
MIN_BAD_TOLERATED = 10  # this many bad rows are always tolerated, whatever the corpus size
_SHOWN_BAD = 5  # bad rows logged (and named in the error) one by one
_READ_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)

csv.field_size_limit(2**31 - 1)


@dataclass(frozen=True)
class Passage:
    """One retrievable passage; ``id`` is the corpus's own id, as a string."""

    id: str
    title: str
    text: str


class CorpusFormatError(ValueError):
    """A corpus file with a wrong header or too many bad rows; the message names the file and the lines."""


def too_many_bad(bad: int, rows: int, max_bad_fraction: float) -> bool:
    """True when ``bad`` of ``rows`` data rows exceed both ``MIN_BAD_TOLERATED`` and ``max_bad_fraction * rows``.

    A few broken rows in a 21M-passage dump are tolerated; a file that is mostly broken (wrong format, wrong
    delimiter) is not. A file with rows but no good passage at all is always too many.
    """
    if rows and bad == rows:
        return True
    return bad > max(MIN_BAD_TOLERATED, max_bad_fraction * rows)


def read(path: str | os.PathLike, max_bad_fraction: float = 0.001) -> Iterator[Passage]:
    """Stream the passages of ``path`` (``.tsv`` DPR or ``.jsonl``, optionally ``.gz``), skipping bad rows.

    A missing file or unknown suffix raises at once; a bad header on the first ``next``; too many bad rows
    when the stream ends (after the good passages were yielded).
    """
    path = paths.resolve(path)
    kind = file_kind(path)
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction={max_bad_fraction} must be within [0, 1]")
    return _stream(path, kind, max_bad_fraction)


def _stream(path: Path, kind: str, max_bad_fraction: float) -> Iterator[Passage]:
    bad: list[int] = []
    rows = 0
    ids = array.array("q")    # hash of every id: 8 bytes a passage, duplicates found by sorting at the end
    for line, passage, reason in _rows(path, kind):
        rows += 1
        if passage is None:
            bad.append(line)
            if len(bad) <= _SHOWN_BAD:
                log.warning("%s: line %d skipped: %s", paths.relative(path), line, reason)
            continue
        ids.append(hash(passage.id))
        yield passage
    if bad:
        log.warning("%s: %d of %d rows skipped as bad (first at lines %s)", paths.relative(path), len(bad), rows,
                    ", ".join(map(str, bad[:_SHOWN_BAD])))
    if too_many_bad(len(bad), rows, max_bad_fraction):
        raise CorpusFormatError(
            f"{paths.relative(path)}: {len(bad)} of {rows} rows are bad (first at lines "
            f"{', '.join(map(str, bad[:_SHOWN_BAD]))}), more than allowed (max({MIN_BAD_TOLERATED}, "
            f"max_bad_fraction={max_bad_fraction} x rows)). Check that the file is a {_FORMAT_HELP[kind]}, "
            "or raise max_bad_fraction")
    if not ids:
        raise CorpusFormatError(f"{paths.relative(path)}: no passages ({rows} data rows): the corpus is empty or has "
                                f"only its header; give a {_FORMAT_HELP[kind]}")
    _check_unique(path, kind, ids)


def _rows(path: Path, kind: str) -> Iterator[_Row]:
    """(line, passage or None, reason) of every data row; a damaged gzip stream names the file and line."""
    line = 0
    try:
        with _open(path) as f:
            for line, passage, reason in (_tsv_rows(path, f) if kind == "tsv" else _jsonl_rows(f)):
                yield line, passage, reason
    except _READ_ERRORS as e:
        raise CorpusFormatError(f"{paths.relative(path)}: after line {line}: {_gzip_problem(e)}") from e


def _gzip_problem(e: Exception) -> str:
    if isinstance(e, EOFError):
        return f"the gzip stream ends early ({e}): the file is truncated; download or copy it again"
    if isinstance(e, gzip.BadGzipFile):
        return f"not a gzip file ({e}): drop the .gz suffix if it is plain text, or compress it with gzip"
    return f"the gzip data is damaged ({e}); download or copy the file again"


def _check_unique(path: Path, kind: str, hashes: array.array) -> None:
    """Refuse ids used by more than one passage, naming the first few and their lines (a second pass, only then)."""
    import numpy as np

    ordered = np.sort(np.frombuffer(hashes, dtype=np.int64))
    suspects = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    if not suspects:
        return
    lines: dict[str, list[int]] = {}
    for line, passage, _ in _rows(path, kind):
        if passage is not None and hash(passage.id) in suspects:
            lines.setdefault(passage.id, []).append(line)
    twice = {pid: where for pid, where in lines.items() if len(where) > 1}
    if twice:   # else a hash collision of distinct ids
        shown = "; ".join(f"{pid!r} at lines {', '.join(map(str, where[:4]))}"
                          for pid, where in list(twice.items())[:_SHOWN_BAD])
        raise CorpusFormatError(f"{paths.relative(path)}: {len(twice)} passage id(s) used more than once ({shown}"
                                f"{'; ...' if len(twice) > _SHOWN_BAD else ''}). The Gradient Bank is keyed by passage "
                                "id: give each passage its own id")


def count(path: str | os.PathLike) -> int:
    """Number of data rows (lines, minus the TSV header), counted without parsing."""
    path = paths.resolve(path)
    kind = file_kind(path)
    lines, last = 0, b"\n"
    try:
        with _open_binary(path) as f:
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except _READ_ERRORS as e:
        raise CorpusFormatError(f"{paths.relative(path)}: after line {lines}: {_gzip_problem(e)}") from e
    if last != b"\n":
        lines += 1  # a last line without newline
    return max(0, lines - 1) if kind == "tsv" else lines


# --- internals ------------------------------------------------------------------------------------------------

_FORMAT_HELP = {
    "tsv": "DPR passage TSV (header 'id<TAB>text<TAB>title', 3 tab-separated fields per row)",
    "jsonl": "JSON-lines corpus (one {\"_id\" or \"id\", \"title\", \"text\"} object per line)",
}

_Row = tuple[int, "Passage | None", str]


def file_kind(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if name.endswith(".tsv"):
        kind = "tsv"
    elif name.endswith(".jsonl"):
        kind = "jsonl"
    else:
        raise ValueError(f"{path}: unknown corpus format; expected a .tsv (DPR psgs_w100 layout) or .jsonl "
                         "file, optionally .gz")
    if not path.is_file():
        raise FileNotFoundError(f"Corpus {path} not found: the bundled one is data/sample/psgs_w100.tsv; the full "
                                "DPR psgs_w100.tsv goes under data/ (README.md, section 'Real data')")
    return kind


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def _open(path: Path) -> IO[str]:
    # utf-8-sig drops a byte-order mark; undecodable bytes become lone surrogates, and their row a bad row
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8-sig", errors="surrogateescape", newline="")


def _not_utf8(*fields: str) -> str | None:
    """The reason a row with bytes that are not UTF-8 is bad, else None (encoding is ~10x faster than a regex)."""
    for text in fields:
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:   # a lone surrogate: an undecodable byte kept by surrogateescape
                return f"not UTF-8 (byte 0x{ord(e.object[e.start]) - 0xDC00:02x})"
    return None


def _tsv_rows(path: Path, f: IO[str]) -> Iterator[_Row]:
    reader = csv.reader(f, delimiter="\t")
    header = next(reader, None)
    if header is None:
        return
    if tuple(h.strip() for h in header) != TSV_HEADER:
        raise CorpusFormatError(f"{paths.relative(path)}: line 1: header is {header!r}; expected "
                                f"{list(TSV_HEADER)} (DPR psgs_w100.tsv layout: id, text, title)")
    for row in reader:
        line = reader.line_num  # the last physical line of this row
        undecoded = _not_utf8(*row)
        if undecoded:
            yield line, None, undecoded
        elif len(row) != 3:
            yield line, None, f"expected 3 tab-separated fields (id, text, title), got {len(row)}"
        elif not row[0].strip():
            yield line, None, "empty id"
        elif not row[1].strip():
            yield line, None, "empty text"
        else:
            yield line, Passage(row[0].strip(), row[2], row[1]), ""


def _jsonl_rows(f: IO[str]) -> Iterator[_Row]:
    for line, raw in enumerate(f, 1):
        if not raw.strip():
            yield line, None, "blank line"
            continue
        undecoded = _not_utf8(raw)
        if undecoded:
            yield line, None, undecoded
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            yield line, None, f"not valid JSON ({e.msg}, column {e.colno})"
            continue
        if not isinstance(obj, dict):
            yield line, None, f"expected a JSON object, got {type(obj).__name__}"
            continue
        pid = obj.get("_id", obj.get("id"))
        text, title = obj.get("text"), obj.get("title", "")
        if pid is None or not str(pid).strip():
            yield line, None, "missing or empty '_id'/'id'"
        elif not isinstance(text, str):
            yield line, None, f"field 'text' must be a string, got {type(text).__name__}"
        elif not text.strip():
            yield line, None, "empty 'text'"
        elif not isinstance(title, str):
            yield line, None, f"field 'title' must be a string, got {type(title).__name__}"
        else:
            yield line, Passage(str(pid).strip(), title, text), ""


def signature(corpus_path: Path) -> dict:
    """What identifies a corpus file in a manifest: path (as users write it), size, and a sha256 fingerprint
    of its first and last MiB (a checkout or a copy changes the mtime, not the content)."""
    size = corpus_path.stat().st_size
    digest = hashlib.sha256()
    with corpus_path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return {"path": paths.relative(corpus_path), "size": size, "fingerprint": digest.hexdigest()[:16]}


def same_signature(a: dict | None, b: dict | None) -> bool:
    """Two signatures name the same content (the path may differ)."""
    return bool(a and b) and a.get("size") == b.get("size") and a.get("fingerprint") == b.get("fingerprint")
