"""QA dataset loaders: a registry of the four datasets plus generic JSON, all returning :class:`QARecord`.

Formats (see ``data/sample/README.md`` and method.md "Data"):

- ``2wikimultihopqa``: ``<dir>/<split>.json`` (a JSON list or JSON lines) + optional ``<dir>/id_aliases.json``
  (JSON lines ``{Q_id, aliases, demonyms}``); answers = ``[answer]`` + the aliases of ``answer_id`` when it is
  set and known (the upstream evaluation's rule; demonyms are not answers).
- ``hotpotqa``: ``hotpot_train_v1.1.json`` / ``hotpot_dev_distractor_v1.json``; answers = ``[answer]``.
- ``popqa``: ``popQA.tsv`` (17 tab-separated columns); answers = ``[obj] + possible_answers + o_aliases``
  (JSON lists, parsed with ``json.loads``); splits by row: dev = rows 0-299, train = rows 500-end.
- ``complexwebquestions``: ``ComplexWebQuestions_<split>.json``; answers = each answer then its aliases.
- ``probe``: the bundled knowledge-injection probe (:mod:`regrad_lib.probe`), generic ``<split>.json`` records.
- generic: a ``.json``/``.jsonl`` of ``{question, answer: str | [str]}``. Every named loader also accepts
  its dataset in this form under its usual file name or as ``<split>.json``; the form is told per record.
- any other name (``myqa``): the generic form at ``<data_dir>/<split>.json`` or ``.jsonl``, or the loader that
  :func:`register` gave that name (a custom original format).

Answer lists are de-duplicated in stable order and never empty. Every record is validated before anything
is returned; a bad one raises :class:`DatasetFormatError` naming the file, the record (or line) and the field.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import artifacts, params, paths

log = logging.getLogger(__name__)

NAMES = ("2wikimultihopqa", "hotpotqa", "popqa", "complexwebquestions", "probe")

POPQA_COLUMNS = ("id", "subj", "prop", "obj", "subj_id", "prop_id", "obj_id", "s_aliases", "o_aliases",
                 "s_uri", "o_uri", "s_wiki_title", "o_wiki_title", "s_pop", "o_pop", "question",
                 "possible_answers")
POPQA_SPLITS = {"dev": (0, 300), "train": (500, None)}  # row ranges of the public protocol (no leakage)
_HOTPOT_FILES = {"train": "hotpot_train_v1.1.json", "dev": "hotpot_dev_distractor_v1.json"}
# Keys that only the original (upstream) layout has: a record holding one of them is read as original.
_ORIGINAL_KEYS = {
    "2wikimultihopqa": ("_id", "answer_id", "supporting_facts", "context"),
    "hotpotqa": ("_id", "supporting_facts", "context"),
    "complexwebquestions": ("ID", "answers"),
}
_HELP = ("Put the upstream file there (README.md, section 'Real data', says where to get it), or use the "
         "bundled sample: data_dir='data/sample/{name}'")


@dataclass(frozen=True)
class QARecord:
    """One question. ``test_id``: 0-based position in its split (PopQA: row in the file)."""

    test_id: int
    question: str
    answers: list[str]
    source_id: str
    gold_titles: tuple[str, ...] = ()


class DatasetFormatError(ValueError):
    """A dataset file that does not match its format; the message names file, record/line and field."""


# --- public API -------------------------------------------------------------------------------------------

def load(name: str, data_dir: str | os.PathLike, split: str, start: int = 0,
         end: int | None = None) -> list[QARecord]:
    """Load ``split`` of dataset ``name`` from ``data_dir`` (repo-relative or absolute), sliced ``[start:end]``.

    A name without a loader reads the generic ``<data_dir>/<split>.json[l]``; a near-miss of a known name
    without such a file is taken for a typo (``Unknown dataset 'hotpot'. Did you mean: hotpotqa?``).
    """
    folder = paths.resolve(data_dir)
    loader = _LOADERS.get(name) or _custom.get(name) or _generic_loader(name, folder, split)
    records = loader(folder, split)
    if not records:
        present = sorted(p.name for p in folder.glob(f"*{split}*")) if folder.is_dir() else []
        raise DatasetFormatError(f"dataset {name!r}, split {split!r} in {paths.relative(folder)} holds no questions"
                                 f"{f' (files: {present})' if present else ''}: an empty file? Give at least one "
                                 "{question, answer} record")
    out = records[start:end]
    log.info("loaded %d %s/%s records from %s (of %d in the split)", len(out), name, split,
             paths.relative(folder), len(records))
    return out


def register(name: str, loader: Callable[[Path, str], Iterable[QARecord | dict]]) -> None:
    """Register ``loader(folder, split)`` for dataset ``name``: a custom original format, read by 02_augment.

    It returns :class:`QARecord` objects or ``{question, answer: str | [str]}`` dicts (validated like the
    generic form, errors naming the folder, split, record and field). The four named loaders cannot be replaced;
    registering a custom name again replaces its loader.
    """
    if name in _LOADERS:
        raise ValueError(f"{name!r} is one of the named datasets {list(NAMES)}; register the custom loader under "
                         "another name")
    params.folder_name("dataset name", name)

    def checked(folder: Path, split: str) -> list[QARecord]:
        records = loader(folder, split)
        if records is None or isinstance(records, (str, bytes, dict)) or not hasattr(records, "__iter__"):
            raise DatasetFormatError(f"the loader registered for dataset {name!r} returned {_show(records)} for "
                                     f"{paths.relative(folder)}, split {split!r}: it must return or yield QARecord "
                                     "objects or {question, answer} dicts")
        out = []
        for i, rec in enumerate(records):
            out.append(rec if isinstance(rec, QARecord) else _generic(folder / f"{split} (loader {name!r})", i, rec))
        return out

    _custom[name] = checked


def import_loaders(modules: Sequence[str]) -> list[str]:
    """Import the named Python modules, each of which calls :func:`register` (02_augment's ``loaders``)."""
    import importlib

    if isinstance(modules, str):
        modules = [modules]
    for module in modules:
        importlib.import_module(module)
    return sorted(_custom)


def _generic_loader(name: str, folder: Path, split: str) -> Callable[[Path, str], list[QARecord]]:
    """The generic reader for a dataset without a loader, or the error: a typo of a known name, or no file."""
    files = [folder / f"{split}.json", folder / f"{split}.jsonl"]
    _one_of(files)
    if not any(f.is_file() for f in files):
        known = [*NAMES, *sorted(_custom)]
        close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.5)
        if close:
            raise ValueError(f"Unknown dataset {name!r}. Did you mean: {', '.join(close)}? Known: "
                             f"{', '.join(known)}; any other name reads the generic {{question, answer}} file "
                             f"{files[0]} or {files[1].name}")
        raise FileNotFoundError(f"No file for dataset {name!r}, split {split!r}: tried {files[0]}, {files[1]}. "
                                f"Known datasets: {', '.join(known)}; any other name reads a JSON list (or JSON "
                                "lines) of {question, answer: str | [str]} records there, or a loader given to "
                                "regrad_lib.datasets.register")
    return lambda folder, split: load_generic(next(f for f in files if f.is_file()))


def load_generic(path: str | os.PathLike, start: int = 0, end: int | None = None) -> list[QARecord]:
    """Load a generic ``[{question, answer: str | [str]}]`` file (JSON list or JSON lines), sliced."""
    path = paths.resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a JSON list (or JSON lines) of "
                                "{question, answer} records")
    records = [_generic(path, i, r) for i, r in enumerate(_read_records(path))]
    return records[start:end]


# --- per-dataset loaders ------------------------------------------------------------------------------------

def _load_2wiki(folder: Path, split: str) -> list[QARecord]:
    path = _find(folder, "2wikimultihopqa", split, [f"{split}.json", f"{split}.jsonl"])
    aliases = _read_id_aliases(folder / "id_aliases.json")
    out = []
    for i, rec in enumerate(_read_records(path)):
        if not _is_original(rec, "2wikimultihopqa"):
            out.append(_generic(path, i, rec))
            continue
        where = _where(path, i)
        answer = _text(rec, "answer", where)
        answer_id = rec.get("answer_id")
        if answer_id is not None and not isinstance(answer_id, str):
            raise DatasetFormatError(f"{where}: field 'answer_id' must be a string or null, "
                                     f"got {type(answer_id).__name__}")
        answers = [answer] + aliases.get(answer_id, []) if answer_id else [answer]
        out.append(QARecord(i, _text(rec, "question", where), _dedupe(answers), _id(rec, "_id", where),
                            _titles(rec, where)))
    return out


def _load_hotpot(folder: Path, split: str) -> list[QARecord]:
    names = ([_HOTPOT_FILES[split]] if split in _HOTPOT_FILES else []) + [f"{split}.json", f"{split}.jsonl"]
    path = _find(folder, "hotpotqa", split, names)
    out = []
    for i, rec in enumerate(_read_records(path)):
        if not _is_original(rec, "hotpotqa"):
            out.append(_generic(path, i, rec))
            continue
        where = _where(path, i)
        out.append(QARecord(i, _text(rec, "question", where), [_text(rec, "answer", where)],
                            _id(rec, "_id", where), _titles(rec, where)))
    return out


def _load_cwq(folder: Path, split: str) -> list[QARecord]:
    path = _find(folder, "complexwebquestions", split,
                 [f"ComplexWebQuestions_{split}.json", f"{split}.json", f"{split}.jsonl"])
    out = []
    for i, rec in enumerate(_read_records(path)):
        if not _is_original(rec, "complexwebquestions"):
            out.append(_generic(path, i, rec))
            continue
        where = _where(path, i)
        entries = rec.get("answers")
        if not isinstance(entries, list) or not entries:
            raise DatasetFormatError(f"{where}: field 'answers' must be a non-empty list of "
                                     f"{{answer, aliases}} objects, got {_show(entries)}")
        answers: list[str] = []
        for k, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise DatasetFormatError(f"{where}: field 'answers[{k}]' must be an {{answer, aliases}} object, "
                                         f"got {_show(entry)}")
            answers.append(_text(entry, "answer", where, f"answers[{k}].answer"))
            answers += _strings(entry.get("aliases", []), where, f"answers[{k}].aliases")
        out.append(QARecord(i, _text(rec, "question", where), _dedupe(answers), _id(rec, "ID", where)))
    return out


def _load_popqa(folder: Path, split: str) -> list[QARecord]:
    tsv = folder / "popQA.tsv"
    if split in POPQA_SPLITS and tsv.is_file():
        _one_of([tsv, folder / f"{split}.json", folder / f"{split}.jsonl"])
        lo, hi = POPQA_SPLITS[split]
        rows = _read_popqa(tsv)
        if len(rows) <= lo:
            raise DatasetFormatError(f"{paths.relative(tsv)} has {len(rows)} rows: split {split!r} (rows {lo}-"
                                     f"{'end' if hi is None else hi - 1}) holds no questions")
        return rows[lo:hi]
    generic = [f"{split}.json", f"{split}.jsonl"]
    if not any((folder / n).is_file() for n in generic) and split not in POPQA_SPLITS:
        raise ValueError(f"popqa split {split!r} is not defined for popQA.tsv: use one of "
                         f"{sorted(POPQA_SPLITS)} (dev = rows 0-299, train = rows 500-end), or give a "
                         f"generic {folder / generic[0]}")
    path = _find(folder, "popqa", split, (["popQA.tsv"] if split in POPQA_SPLITS else []) + generic)
    return [_generic(path, i, r) for i, r in enumerate(_read_records(path))]


def _read_popqa(path: Path) -> list[QARecord]:
    csv.field_size_limit(min(2**31 - 1, 1 << 40))
    out = []
    with io.StringIO(_read_text(path), newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or tuple(header) != POPQA_COLUMNS:
            raise DatasetFormatError(f"{paths.relative(path)}: line 1: header is {header!r}; expected the 17 "
                                     f"upstream columns {', '.join(POPQA_COLUMNS)}")
        for row in reader:
            where = f"{paths.relative(path)}: line {reader.line_num}"
            if len(row) != len(POPQA_COLUMNS):
                raise DatasetFormatError(f"{where}: expected {len(POPQA_COLUMNS)} tab-separated fields "
                                         f"(id ... possible_answers), got {len(row)}")
            rec = dict(zip(POPQA_COLUMNS, row))
            answers = [_text(rec, "obj", where)]
            for field in ("possible_answers", "o_aliases"):
                try:
                    value = json.loads(rec[field]) if rec[field].strip() else []
                except json.JSONDecodeError as e:
                    raise DatasetFormatError(f"{where}: field {field!r} is not a JSON list ({e.msg}): "
                                             f"{rec[field][:80]!r}") from e
                answers += _strings(value, where, field)
            out.append(QARecord(len(out), _text(rec, "question", where), _dedupe(answers),
                                _text(rec, "id", where)))
    return out


def _load_probe(folder: Path, split: str) -> list[QARecord]:
    path = _find(folder, "probe", split, [f"{split}.json", f"{split}.jsonl"])
    return [_generic(path, i, r) for i, r in enumerate(_read_records(path))]


_LOADERS: dict[str, Callable[[Path, str], list[QARecord]]] = {
    "2wikimultihopqa": _load_2wiki,
    "hotpotqa": _load_hotpot,
    "popqa": _load_popqa,
    "complexwebquestions": _load_cwq,
    "probe": _load_probe,
}
_custom: dict[str, Callable[[Path, str], list[QARecord]]] = {}   # register()


# --- reading and validation helpers ----------------------------------------------------------------------

def _one_of(files: Sequence[Path]) -> None:
    """Refuse two files that could each be the split (``dev.json`` and ``dev.jsonl``): which one is meant?"""
    present = [f for f in files if f.is_file()]
    if len(present) > 1:
        raise DatasetFormatError(f"{paths.relative(present[0].parent)} holds {' and '.join(f.name for f in present)} "
                                 "for one split: keep one of them (only one is read, and it would be a silent "
                                 "choice)")


def _find(folder: Path, name: str, split: str, candidates: list[str]) -> Path:
    _one_of([folder / c for c in candidates])
    for candidate in candidates:
        if (folder / candidate).is_file():
            return folder / candidate
    tried = ", ".join(str(folder / c) for c in candidates)
    raise FileNotFoundError(f"No {name} file for split {split!r}: tried {tried}. "
                            + _HELP.format(name=name))


def _read_text(path: Path) -> str:
    """The file as UTF-8 text (a byte-order mark is dropped); other bytes name the file, line and byte."""
    try:
        return artifacts.read_text(path)
    except ValueError as e:
        raise DatasetFormatError(str(e)) from None


def _read_records(path: Path) -> list[Any]:
    """A JSON list, or JSON lines (one record per line)."""
    text = _read_text(path)
    head = text.lstrip()[:1]
    if head == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise _locate_json_error(path, text, e) from e
        return data
    if head == "{":
        records = []
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
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


def _read_id_aliases(path: Path) -> dict[str, list[str]]:
    if path.exists() and not path.is_file():
        raise DatasetFormatError(f"{paths.relative(path)} is not a file (a folder?): id_aliases.json must be the JSON "
                                 "lines file of answer aliases ({Q_id, aliases, demonyms} per line), or be absent")
    if not path.is_file():
        return {}
    out: dict[str, list[str]] = {}
    for i, rec in enumerate(_read_records(path)):
        where = _where(path, i)
        if not isinstance(rec, dict):
            raise DatasetFormatError(f"{where}: expected a {{Q_id, aliases, demonyms}} object, got {_show(rec)}")
        out[_text(rec, "Q_id", where)] = _strings(rec.get("aliases", []), where, "aliases")
    return out


def _generic(path: Path, index: int, rec: Any) -> QARecord:
    where = _where(path, index)
    if not isinstance(rec, dict):
        raise DatasetFormatError(f"{where}: expected a {{question, answer}} object, got {_show(rec)}")
    question = _text(rec, "question", where)
    answer = rec.get("answer")
    if "answer" not in rec:
        raise DatasetFormatError(f"{where}: missing field 'answer' (a string or a list of strings)")
    answers = [_text(rec, "answer", where)] if isinstance(answer, str) else _strings(answer, where, "answer")
    if not answers:
        raise DatasetFormatError(f"{where}: field 'answer' is an empty list; give at least one answer")
    source = next((str(rec[k]) for k in ("_id", "id", "qid", "ID") if rec.get(k) not in (None, "")), str(index))
    return QARecord(index, question, _dedupe(answers), source)


def _is_original(rec: Any, name: str) -> bool:
    return isinstance(rec, dict) and any(k in rec for k in _ORIGINAL_KEYS[name])


def _where(path: Path, index: int) -> str:
    return f"{paths.relative(path)}: record {index}"


def _show(value: Any) -> str:
    return f"{type(value).__name__} {str(value)[:60]!r}"


def _text(rec: dict, key: str, where: str, label: str | None = None) -> str:
    """A required non-empty string field."""
    label = label or key
    if key not in rec:
        raise DatasetFormatError(f"{where}: missing field {label!r}")
    value = rec[key]
    if not isinstance(value, str) or not value.strip():
        raise DatasetFormatError(f"{where}: field {label!r} must be a non-empty string, got {_show(value)}")
    return value


def _strings(value: Any, where: str, field: str) -> list[str]:
    """A list of non-empty strings (possibly empty)."""
    if not isinstance(value, list):
        raise DatasetFormatError(f"{where}: field {field!r} must be a list of strings, got {_show(value)}")
    for k, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise DatasetFormatError(f"{where}: field '{field}[{k}]' must be a non-empty string, "
                                     f"got {_show(item)}")
    return value


def _id(rec: dict, key: str, where: str) -> str:
    if rec.get(key) in (None, ""):
        raise DatasetFormatError(f"{where}: missing field {key!r} (the record id)")
    return str(rec[key])


def _titles(rec: dict, where: str) -> tuple[str, ...]:
    """Supporting-fact titles (``[[title, sentence_index], ...]``), de-duplicated in order."""
    facts = rec.get("supporting_facts", [])
    if not isinstance(facts, list):
        raise DatasetFormatError(f"{where}: field 'supporting_facts' must be a list of [title, sentence] "
                                 f"pairs, got {_show(facts)}")
    titles = []
    for k, fact in enumerate(facts):
        if not isinstance(fact, list) or not fact or not isinstance(fact[0], str):
            raise DatasetFormatError(f"{where}: field 'supporting_facts[{k}]' must be a [title, sentence] "
                                     f"pair, got {_show(fact)}")
        titles.append(fact[0])
    return tuple(_dedupe(titles))


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
