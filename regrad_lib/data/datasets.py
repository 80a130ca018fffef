"""QA dataset loaders: a registry of the four datasets plus generic JSON, all returning :class:`QARecord`.

Formats (see ``data/sample/README.md`` and method.md "Data"):

- ``2wikimultihopqa``: ``<dir>/<split>.json`` (a JSON list or JSON lines) + optional ``<dir>/id_aliases.json``
  (JSON lines ``{Q_id, aliases, demonyms}``); answers = ``[answer]`` + the aliases of ``answer_id`` when it is
  set and known (the upstream evaluation's rule; demonyms are not answers).
- ``hotpotqa``: ``hotpot_train_v1.1.json`` / ``hotpot_dev_distractor_v1.json``; answers = ``[answer]``.
- ``popqa``: ``popQA.tsv`` (17 tab-separated columns); answers = ``[obj] + possible_answers + o_aliases``
  (JSON lists, parsed with ``json.loads``); splits by row: dev = rows 0-299, train = rows 500-end.
- ``complexwebquestions``: ``ComplexWebQuestions_<split>.json``; answers = each answer then its aliases.
- ``probe``: the bundled knowledge-injection probe (:mod:`regrad_lib.data.probe`), generic ``<split>.json`` records.
- ``pubmedqa``: PubMedQA PQA-L, ``ori_pqal.json`` + ``test_ground_truth.json`` (:mod:`regrad_lib.data.pubmedqa`):
  yes/no/maybe questions (answer kind ``yes_no``); dev = test = the official test split, train = the other 500.
- generic: a ``.json``/``.jsonl`` of ``{question, answer: str | [str]}``. Every named loader also accepts
  its dataset in this form under its usual file name or as ``<split>.json``; the form is told per record.
- any other name (``myqa``): the generic form at ``<data_dir>/<split>.json`` or ``.jsonl``, or the loader that
  :func:`register` gave that name (a custom original format).

Every record has an answer kind (``short``, ``yes_no``, ``multiple_choice``: :mod:`regrad_lib.data.qa_records`): a
named loader declares its dataset's, :func:`register` takes one for a custom loader, and a generic record may
state its own (``answer_kind``, ``choices``). Answer lists are de-duplicated in stable order and never empty.
Every record is validated before anything is returned; a bad one raises :class:`DatasetFormatError` naming the
file, the record (or line) and the field.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from regrad_lib.data import pubmedqa
from regrad_lib.data.metrics import ANSWER_KINDS
from regrad_lib.data.qa_records import (
    DatasetFormatError,
    QARecord,
    answer_kind,
    dedupe,
    generic_record,
    locate,
    read_records,
    read_text,
    record_id,
    show,
    strings_field,
    text_field,
)
from regrad_lib.io import params, paths

__all__ = ["NAMES", "import_loaders", "load", "load_generic", "register"]

log = logging.getLogger(__name__)

NAMES = ("2wikimultihopqa", "hotpotqa", "popqa", "complexwebquestions", "probe", "pubmedqa")

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


def register(name: str, loader: Callable[[Path, str], Iterable[QARecord | dict]], kind: str = "short") -> None:
    """Register ``loader(folder, split)`` for dataset ``name``: a custom original format, read by 02_augment.

    It returns :class:`QARecord` objects or ``{question, answer: str | [str]}`` dicts (validated like the
    generic form, errors naming the folder, split, record and field). ``kind``: the dataset's answer kind
    (``short``, ``yes_no``, ``multiple_choice``), for its records that do not state one. The named loaders cannot
    be replaced; registering a custom name again replaces its loader.
    """
    if name in _LOADERS:
        raise ValueError(f"{name!r} is one of the named datasets {list(NAMES)}; register the custom loader under "
                         "another name")
    params.folder_name("dataset name", name)
    if kind not in ANSWER_KINDS:
        raise ValueError(f"kind={kind!r}: the answer kind of {name!r}, one of {list(ANSWER_KINDS)}")

    def checked(folder: Path, split: str) -> list[QARecord]:
        records = loader(folder, split)
        if records is None or isinstance(records, (str, bytes, dict)) or not hasattr(records, "__iter__"):
            raise DatasetFormatError(f"the loader registered for dataset {name!r} returned {show(records)} for "
                                     f"{paths.relative(folder)}, split {split!r}: it must return or yield QARecord "
                                     "objects or {question, answer} dicts")
        out, where = [], folder / f"{split} (loader {name!r})"
        for i, rec in enumerate(records):
            if not isinstance(rec, QARecord):
                rec = generic_record(where, i, rec, kind)
            elif rec.kind == "short" and kind != "short":     # a record of the default kind gets the dataset's
                checked_kind, choices, answers = answer_kind(locate(where, i), kind, rec.choices, list(rec.answers))
                rec = dataclasses.replace(rec, kind=checked_kind, choices=choices, answers=answers)
            out.append(rec)
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
                                "regrad_lib.data.datasets.register")
    return lambda folder, split: load_generic(next(f for f in files if f.is_file()))


def load_generic(path: str | os.PathLike, start: int = 0, end: int | None = None) -> list[QARecord]:
    """Load a generic ``[{question, answer: str | [str]}]`` file (JSON list or JSON lines), sliced."""
    path = paths.resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a JSON list (or JSON lines) of "
                                "{question, answer} records")
    records = [generic_record(path, i, r) for i, r in enumerate(read_records(path))]
    return records[start:end]


# --- per-dataset loaders ------------------------------------------------------------------------------------

def _load_2wiki(folder: Path, split: str) -> list[QARecord]:
    path = _find(folder, "2wikimultihopqa", split, [f"{split}.json", f"{split}.jsonl"])
    aliases = _read_id_aliases(folder / "id_aliases.json")
    out = []
    for i, rec in enumerate(read_records(path)):
        if not _is_original(rec, "2wikimultihopqa"):
            out.append(generic_record(path, i, rec))
            continue
        where = locate(path, i)
        answer = text_field(rec, "answer", where)
        answer_id = rec.get("answer_id")
        if answer_id is not None and not isinstance(answer_id, str):
            raise DatasetFormatError(f"{where}: field 'answer_id' must be a string or null, "
                                     f"got {type(answer_id).__name__}")
        answers = [answer] + aliases.get(answer_id, []) if answer_id else [answer]
        out.append(QARecord(i, text_field(rec, "question", where), dedupe(answers), record_id(rec, "_id", where),
                            _titles(rec, where)))
    return out


def _load_hotpot(folder: Path, split: str) -> list[QARecord]:
    names = ([_HOTPOT_FILES[split]] if split in _HOTPOT_FILES else []) + [f"{split}.json", f"{split}.jsonl"]
    path = _find(folder, "hotpotqa", split, names)
    out = []
    for i, rec in enumerate(read_records(path)):
        if not _is_original(rec, "hotpotqa"):
            out.append(generic_record(path, i, rec))
            continue
        where = locate(path, i)
        out.append(QARecord(i, text_field(rec, "question", where), [text_field(rec, "answer", where)],
                            record_id(rec, "_id", where), _titles(rec, where)))
    return out


def _load_cwq(folder: Path, split: str) -> list[QARecord]:
    path = _find(folder, "complexwebquestions", split,
                 [f"ComplexWebQuestions_{split}.json", f"{split}.json", f"{split}.jsonl"])
    out = []
    for i, rec in enumerate(read_records(path)):
        if not _is_original(rec, "complexwebquestions"):
            out.append(generic_record(path, i, rec))
            continue
        where = locate(path, i)
        entries = rec.get("answers")
        if not isinstance(entries, list) or not entries:
            raise DatasetFormatError(f"{where}: field 'answers' must be a non-empty list of "
                                     f"{{answer, aliases}} objects, got {show(entries)}")
        answers: list[str] = []
        for k, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise DatasetFormatError(f"{where}: field 'answers[{k}]' must be an {{answer, aliases}} object, "
                                         f"got {show(entry)}")
            answers.append(text_field(entry, "answer", where, f"answers[{k}].answer"))
            answers += strings_field(entry.get("aliases", []), where, f"answers[{k}].aliases")
        out.append(QARecord(i, text_field(rec, "question", where), dedupe(answers), record_id(rec, "ID", where)))
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
    return [generic_record(path, i, r) for i, r in enumerate(read_records(path))]


def _read_popqa(path: Path) -> list[QARecord]:
    csv.field_size_limit(min(2**31 - 1, 1 << 40))
    out = []
    with io.StringIO(read_text(path), newline="") as f:
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
            answers = [text_field(rec, "obj", where)]
            for field in ("possible_answers", "o_aliases"):
                try:
                    value = json.loads(rec[field]) if rec[field].strip() else []
                except json.JSONDecodeError as e:
                    raise DatasetFormatError(f"{where}: field {field!r} is not a JSON list ({e.msg}): "
                                             f"{rec[field][:80]!r}") from e
                answers += strings_field(value, where, field)
            out.append(QARecord(len(out), text_field(rec, "question", where), dedupe(answers),
                                text_field(rec, "id", where)))
    return out


def _load_probe(folder: Path, split: str) -> list[QARecord]:
    path = _find(folder, "probe", split, [f"{split}.json", f"{split}.jsonl"])
    return [generic_record(path, i, r) for i, r in enumerate(read_records(path))]


def _load_pubmedqa(folder: Path, split: str) -> list[QARecord]:
    generic = [f"{split}.json", f"{split}.jsonl"]
    if (folder / pubmedqa.ORIGINAL).is_file() or not any((folder / name).is_file() for name in generic):
        return pubmedqa.load(folder, split)
    path = _find(folder, "pubmedqa", split, generic)      # the generic form, yes/no by default
    return [generic_record(path, i, r, "yes_no") for i, r in enumerate(read_records(path))]


_LOADERS: dict[str, Callable[[Path, str], list[QARecord]]] = {
    "2wikimultihopqa": _load_2wiki,
    "hotpotqa": _load_hotpot,
    "popqa": _load_popqa,
    "complexwebquestions": _load_cwq,
    "probe": _load_probe,
    "pubmedqa": _load_pubmedqa,
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


def _read_id_aliases(path: Path) -> dict[str, list[str]]:
    if path.exists() and not path.is_file():
        raise DatasetFormatError(f"{paths.relative(path)} is not a file (a folder?): id_aliases.json must be the JSON "
                                 "lines file of answer aliases ({Q_id, aliases, demonyms} per line), or be absent")
    if not path.is_file():
        return {}
    out: dict[str, list[str]] = {}
    for i, rec in enumerate(read_records(path)):
        where = locate(path, i)
        if not isinstance(rec, dict):
            raise DatasetFormatError(f"{where}: expected a {{Q_id, aliases, demonyms}} object, got {show(rec)}")
        out[text_field(rec, "Q_id", where)] = strings_field(rec.get("aliases", []), where, "aliases")
    return out


def _is_original(rec: Any, name: str) -> bool:
    return isinstance(rec, dict) and any(k in rec for k in _ORIGINAL_KEYS[name])


def _titles(rec: dict, where: str) -> tuple[str, ...]:
    """Supporting-fact titles (``[[title, sentence_index], ...]``), de-duplicated in order."""
    facts = rec.get("supporting_facts", [])
    if not isinstance(facts, list):
        raise DatasetFormatError(f"{where}: field 'supporting_facts' must be a list of [title, sentence] "
                                 f"pairs, got {show(facts)}")
    titles = []
    for k, fact in enumerate(facts):
        if not isinstance(fact, list) or not fact or not isinstance(fact[0], str):
            raise DatasetFormatError(f"{where}: field 'supporting_facts[{k}]' must be a [title, sentence] "
                                     f"pair, got {show(fact)}")
        titles.append(fact[0])
    return tuple(dedupe(titles))


