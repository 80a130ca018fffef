"""PubMedQA PQA-L (the medicine domain of the public code's ``--domain med``): its original file as questions and
its context paragraphs as a corpus of their own.

Files (``<folder>/``, as the data set's repository ships them, unchanged): ``ori_pqal.json`` (``{PMID:
{QUESTION, CONTEXTS: [paragraph, ...], LABELS, MESHES, YEAR, reasoning_required_pred, reasoning_free_pred,
final_decision: yes|no|maybe, LONG_ANSWER}}``, 1,000 expert-labelled questions) and ``test_ground_truth.json``
(``{PMID: yes|no|maybe}``, the official 500-question test split).

- splits: ``test`` (and ``dev``, the name 02_augment and 05_evaluate evaluate) = the PMIDs of
  ``test_ground_truth.json``; ``train`` = the other PMIDs; both in ``ori_pqal.json``'s order (the ground truth
  file is sorted by label, yes first: in its order a ``limit`` would take yes questions only);
- each question is a ``yes_no`` record whose labels allow ``maybe``; its answer is ``final_decision`` (checked
  against the ground truth file);
- :func:`passages` / :func:`write_corpus`: every context paragraph as a passage ``<PMID>-<i>`` titled with its
  section label (BACKGROUND, METHODS, …; never the question), a DPR-layout TSV written once to
  ``data/corpora/pubmedqa-<hash>.tsv`` for 01_index (its own index: the public code searched all of PubMed).

The long answer (the abstract's conclusion) is not used: it states the answer.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from pathlib import Path
from typing import Iterator

from regrad_lib.data import metrics
from regrad_lib.data.qa_records import DatasetFormatError, QARecord, read_text
from regrad_lib.io import artifacts, paths

log = logging.getLogger(__name__)

ORIGINAL = "ori_pqal.json"
TEST_SPLIT = "test_ground_truth.json"
SPLITS = ("train", "dev", "test")


def _read(folder: Path) -> tuple[dict, dict]:
    """(the questions by PMID, the test split's labels by PMID), both checked."""
    import json

    files = {name: folder / name for name in (ORIGINAL, TEST_SPLIT)}
    absent = [str(f) for f in files.values() if not f.is_file()]
    if absent:
        raise FileNotFoundError(f"PubMedQA: {', '.join(absent)} not found: put the data set's {ORIGINAL} and "
                                f"{TEST_SPLIT} there (https://github.com/pubmedqa/pubmedqa, data/), or use the "
                                "bundled sample data/sample/pubmedqa")
    try:
        data, test = (json.loads(read_text(files[n])) for n in (ORIGINAL, TEST_SPLIT))
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"PubMedQA {folder}: not valid JSON ({e.msg}, line {e.lineno})") from e
    where = paths.relative(files[ORIGINAL])
    if not isinstance(data, dict) or not isinstance(test, dict):
        raise DatasetFormatError(f"{where} and {TEST_SPLIT} must be JSON objects keyed by PMID")
    for pmid, rec in data.items():
        _check(f"{where}: PMID {pmid}", rec)
    for pmid, label in test.items():
        if pmid not in data:
            raise DatasetFormatError(f"{paths.relative(files[TEST_SPLIT])}: PMID {pmid} is not in {ORIGINAL}")
        if label != data[pmid]["final_decision"]:
            raise DatasetFormatError(f"{paths.relative(files[TEST_SPLIT])}: PMID {pmid} is {label!r} but "
                                     f"{ORIGINAL} says final_decision {data[pmid]['final_decision']!r}")
    return data, test


def _check(where: str, rec) -> None:
    if not isinstance(rec, dict):
        raise DatasetFormatError(f"{where}: expected a {{QUESTION, CONTEXTS, LABELS, final_decision}} object")
    if not isinstance(rec.get("QUESTION"), str) or not rec["QUESTION"].strip():
        raise DatasetFormatError(f"{where}: field 'QUESTION' must be a non-empty string")
    contexts, labels = rec.get("CONTEXTS"), rec.get("LABELS")
    if not isinstance(contexts, list) or not contexts or not all(isinstance(c, str) and c.strip() for c in contexts):
        raise DatasetFormatError(f"{where}: field 'CONTEXTS' must be a non-empty list of paragraphs")
    if not isinstance(labels, list) or len(labels) != len(contexts) or not all(isinstance(x, str) for x in labels):
        raise DatasetFormatError(f"{where}: field 'LABELS' must hold one section label per paragraph of CONTEXTS")
    if rec.get("final_decision") not in metrics.YES_NO_MAYBE:
        raise DatasetFormatError(f"{where}: field 'final_decision' is {rec.get('final_decision')!r}; expected "
                                 f"one of {list(metrics.YES_NO_MAYBE)}")


def split_ids(folder: Path, split: str) -> list[str]:
    """The PMIDs of ``split`` (``train``, ``dev`` or ``test``) in their defined order."""
    if split not in SPLITS:
        raise ValueError(f"pubmedqa split {split!r}: choose one of {list(SPLITS)} (dev = the official test split)")
    data, test = _read(folder)
    return [pmid for pmid in data if (pmid in test) == (split in ("dev", "test"))]


def load(folder: Path, split: str) -> list[QARecord]:
    """The questions of ``split`` as yes/no/maybe records (``source_id`` = PMID)."""
    data, _ = _read(folder)
    return [QARecord(i, data[pmid]["QUESTION"], [data[pmid]["final_decision"]], pmid, kind="yes_no",
                     choices=metrics.YES_NO_MAYBE) for i, pmid in enumerate(split_ids(folder, split))]


def passage_id(pmid: str, i: int) -> str:
    return f"{pmid}-{i}"


def passages(folder: Path) -> Iterator[tuple[str, str, str]]:
    """(id, section label, paragraph) of every context paragraph, in the file's order."""
    data, _ = _read(folder)
    for pmid, rec in data.items():
        for i, (text, label) in enumerate(zip(rec["CONTEXTS"], rec["LABELS"])):
            yield passage_id(pmid, i), label.strip().upper(), " ".join(text.split())


def write_corpus(folder: str | Path) -> Path:
    """The context paragraphs as a DPR-layout corpus ``data/corpora/pubmedqa-<hash of the file>.tsv`` (written once,
    atomically; the name changes with the file, so 01_index never reopens an index of other paragraphs)."""
    folder = paths.resolve(folder)
    _read(folder)
    digest = hashlib.sha256((folder / ORIGINAL).read_bytes()).hexdigest()[:12]
    target = paths.work_root() / "data" / "corpora" / f"pubmedqa-{digest}.tsv"
    if target.is_file():
        return target
    text = io.StringIO()
    writer = csv.writer(text, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(["id", "text", "title"])
    rows = list(passages(folder))
    writer.writerows((pid, body, title) for pid, title, body in rows)
    artifacts.write_text(target, text.getvalue())
    log.info("wrote %s (%d paragraphs of %s)", paths.relative(target), len(rows), paths.relative(folder / ORIGINAL))
    return target


def own_passage_share(records: list[dict], folder: str | Path, split: str = "dev") -> float:
    """Share of the retrieved passages (augmented ``records`` of ``split``) that are their own question's paragraphs:
    how often BM25 finds the abstract a question was written from."""
    pmids = split_ids(paths.resolve(folder), split)
    own = [pid.rsplit("-", 1)[0] == pmids[r["test_id"]] for r in records for pid in r["passage_ids"]]
    return sum(own) / len(own) if own else float("nan")
