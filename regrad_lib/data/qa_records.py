"""The QA record every dataset loader returns, and reading and validating dataset files (JSON lists or JSON lines,
required fields, answer kinds). Errors name the file, the record and the field (:class:`DatasetFormatError`).

A record's answer kind (:data:`metrics.ANSWER_KINDS`) is declared by its loader or, in the generic form, by the
record: ``{"question", "answer", "answer_kind": "yes_no", "choices": ["yes", "no", "maybe"]}`` (the labels a
yes/no question allows; default yes/no) or ``{"question", "choices": [option, ...], "answer": "B"}`` (options
lettered A, B, …; the answer is a letter or an option's text; ``choices`` alone means ``multiple_choice``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from regrad_lib.data import metrics
from regrad_lib.io import artifacts, paths


@dataclass(frozen=True)
class QARecord:
    """One question. ``test_id``: 0-based position in its split (PopQA: row in the file)."""

    test_id: int
    question: str
    answers: list[str]
    source_id: str
    gold_titles: tuple[str, ...] = ()
    kind: str = "short"                  # answer kind: short, yes_no, multiple_choice (metrics.ANSWER_KINDS)
    choices: tuple[str, ...] = ()        # yes_no: the labels allowed; multiple_choice: the options (A, B, ...)


class DatasetFormatError(ValueError):
    """A dataset file that does not match its format; the message names file, record/line and field."""


def read_text(path: Path) -> str:
    """The file as UTF-8 text (a byte-order mark is dropped); other bytes name the file, line and byte."""
    try:
        return artifacts.read_text(path)
    except ValueError as e:
        raise DatasetFormatError(str(e)) from None


def _once(where: str):
    """A JSON object hook refusing a key given twice (``{"question": "First?", "question": "Second?"}`` would
    silently be the second), naming ``where`` and the key."""
    def pairs(items: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in items:
            if key in out:
                raise DatasetFormatError(f"{where}: key {key!r} appears twice in one JSON object "
                                         f"({str(out[key])[:60]!r}, then {str(value)[:60]!r}); give each key once")
            out[key] = value
        return out
    return pairs


def _locate_duplicate(path: Path, text: str) -> DatasetFormatError:
    """The record of a JSON list holding a key twice (its elements decoded one by one)."""
    pos, index = text.index("[") + 1, 0
    ws = re.compile(r"\s*")
    while True:
        pos = ws.match(text, pos).end()
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            _, pos = json.JSONDecoder(object_pairs_hook=_once(locate(path, index))).raw_decode(text, pos)
        except DatasetFormatError as e:
            return e
        pos = ws.match(text, pos).end()
        if pos < len(text) and text[pos] == ",":
            pos += 1
        index += 1
    return DatasetFormatError(f"{paths.relative(path)}: a key appears twice in one JSON object")


def read_records(path: Path) -> list[Any]:
    """A JSON list, or JSON lines (one record per line); a key given twice in an object is refused."""
    text = read_text(path)
    head = text.lstrip()[:1]
    if head == "[":
        try:
            data = json.loads(text, object_pairs_hook=_once(paths.relative(path)))
        except json.JSONDecodeError as e:
            raise _locate_json_error(path, text, e) from e
        except DatasetFormatError:
            raise _locate_duplicate(path, text) from None
        return data
    if head == "{":
        records = []
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line, object_pairs_hook=_once(f"{paths.relative(path)}: line {lineno} "
                                                                        f"(record {len(records)})")))
            except json.JSONDecodeError as e:
                raise DatasetFormatError(f"{paths.relative(path)}: line {lineno} (record {len(records)}): not "
                                         f"valid JSON ({e.msg}, column {e.colno}); expected a JSON list or one "
                                         "JSON object per line") from e
        return records
    raise DatasetFormatError(f"{paths.relative(path)}: expected a JSON list of records or JSON lines, "
                             f"but the file starts with {text.lstrip()[:30]!r}")


def _locate_json_error(path: Path, text: str, error: json.JSONDecodeError) -> DatasetFormatError:
    """Find which record of a JSON list is broken, and the last field opened before the break."""
    decoder, pos, index = json.JSONDecoder(), text.index("[") + 1, 0
    ws = re.compile(r"\s*")
    while True:
        pos = ws.match(text, pos).end()
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            keys = re.findall(r'"([^"\\]+)"\s*:', text[pos:e.pos])
            field = f", in field {keys[-1]!r}" if keys else ""
            hint = "; the file looks truncated: fetch it again" if not text.rstrip().endswith("]") else ""
            return DatasetFormatError(f"{paths.relative(path)}: record {index}{field}: not valid JSON "
                                      f"({e.msg}: line {e.lineno}, column {e.colno}){hint}")
        pos = ws.match(text, pos).end()
        if pos < len(text) and text[pos] == ",":
            pos += 1
        index += 1
    return DatasetFormatError(f"{paths.relative(path)}: record {index}: not valid JSON ({error.msg}: line "
                              f"{error.lineno}, column {error.colno})")


def generic_record(path: Path, index: int, rec: Any, kind: str | None = None) -> QARecord:
    """A ``{question, answer: str | [str]}`` record (with ``answer_kind``/``choices`` for the label kinds; ``kind``:
    the loader's default answer kind), validated."""
    where = locate(path, index)
    if not isinstance(rec, dict):
        raise DatasetFormatError(f"{where}: expected a {{question, answer}} object, got {show(rec)}")
    question = text_field(rec, "question", where)
    answer = rec.get("answer")
    if "answer" not in rec:
        raise DatasetFormatError(f"{where}: missing field 'answer' (a string or a list of strings)")
    answers = [text_field(rec, "answer", where)] if isinstance(answer, str) else strings_field(answer, where, "answer")
    if not answers:
        raise DatasetFormatError(f"{where}: field 'answer' is an empty list; give at least one answer")
    source = next((str(rec[k]) for k in ("_id", "id", "qid", "ID") if rec.get(k) not in (None, "")), str(index))
    declared = rec.get("answer_kind", kind or ("multiple_choice" if "choices" in rec else "short"))
    choices = strings_field(rec["choices"], where, "choices") if "choices" in rec else []
    kind, choices, answers = answer_kind(where, declared, choices, dedupe(answers))
    return QARecord(index, question, answers, source, kind=kind, choices=choices)


def answer_kind(where: str, kind: Any, choices: Sequence[str], answers: list[str]) -> tuple[str, tuple, list[str]]:
    """(kind, choices, answers) of one record, checked: a known kind; yes/no labels among yes/no/maybe (default
    yes/no) and gold answers among them, lower-cased; 2-10 options and gold letters (an option's text becomes its
    letter); no choices for a short answer."""
    if kind not in metrics.ANSWER_KINDS:
        raise DatasetFormatError(f"{where}: field 'answer_kind' is {kind!r}; choose one of "
                                 f"{list(metrics.ANSWER_KINDS)}")
    if kind == "short":
        if choices:
            raise DatasetFormatError(f"{where}: field 'choices' is given but the answer kind is 'short'; set "
                                     "'answer_kind' to 'multiple_choice' or 'yes_no', or drop 'choices'")
        return kind, (), answers
    if kind == "yes_no":
        allowed = tuple(c.strip().lower() for c in choices) or metrics.YES_NO
        if not set(metrics.YES_NO) <= set(allowed) <= set(metrics.YES_NO_MAYBE) or len(set(allowed)) != len(allowed):
            raise DatasetFormatError(f"{where}: field 'choices' of a yes_no question is {list(choices)}; give "
                                     "['yes', 'no'] or ['yes', 'no', 'maybe']")
        golds = dedupe(a.strip().lower() for a in answers)
        bad = [a for a in golds if a not in allowed]
        if bad:
            raise DatasetFormatError(f"{where}: field 'answer' is {bad[0]!r}, not one of the yes_no labels "
                                     f"{list(allowed)}")
        return kind, allowed, golds
    if not 2 <= len(choices) <= len(metrics.LETTERS):
        raise DatasetFormatError(f"{where}: field 'choices' of a multiple_choice question must list 2 to "
                                 f"{len(metrics.LETTERS)} options, got {len(choices)}")
    letters = metrics.labels(kind, choices)
    golds = []
    for a in answers:
        letter = a.strip().upper() if a.strip().upper() in letters else \
            next((x for x, c in zip(letters, choices) if c.strip() == a.strip()), None)
        if letter is None:
            raise DatasetFormatError(f"{where}: field 'answer' is {a[:60]!r}: give an option letter "
                                     f"({', '.join(letters)}) or the text of one of the choices")
        golds.append(letter)
    return kind, tuple(choices), dedupe(golds)


def locate(path: Path, index: int) -> str:
    return f"{paths.relative(path)}: record {index}"


def show(value: Any) -> str:
    return f"{type(value).__name__} {str(value)[:60]!r}"


def text_field(rec: dict, key: str, where: str, label: str | None = None) -> str:
    """A required non-empty string field."""
    label = label or key
    if key not in rec:
        raise DatasetFormatError(f"{where}: missing field {label!r}")
    value = rec[key]
    if not isinstance(value, str) or not value.strip():
        raise DatasetFormatError(f"{where}: field {label!r} must be a non-empty string, got {show(value)}")
    return value


def strings_field(value: Any, where: str, field: str) -> list[str]:
    """A list of non-empty strings (possibly empty)."""
    if not isinstance(value, list):
        raise DatasetFormatError(f"{where}: field {field!r} must be a list of strings, got {show(value)}")
    for k, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise DatasetFormatError(f"{where}: field '{field}[{k}]' must be a non-empty string, "
                                     f"got {show(item)}")
    return value


def record_id(rec: dict, key: str, where: str) -> str:
    if rec.get(key) in (None, ""):
        raise DatasetFormatError(f"{where}: missing field {key!r} (the record id)")
    return str(rec[key])


def dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
