"""05_evaluate's result files as files, each with its one writer and its one reader: the tables ``summary.csv``,
``sweeps.csv`` and ``schemes.csv`` (their columns, a typed reader, an atomic merging writer), the predictions and
metrics of a method, and the drift measures of continual post-training (``drift.json``, ``general_set.json``).

What the rows hold is decided where they are computed (:mod:`regrad_lib.evaluation.results`,
:mod:`regrad_lib.cpt.continual`); evaluation and cpt write through here and 06_analyze's reporting reads through here,
so both sides agree on every column and on what a damaged file is. Paths come from :mod:`regrad_lib.io.paths`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from regrad_lib.io import artifacts, paths

__all__ = ["SUMMARY_FIELDS", "SWEEP_FIELDS", "SCHEME_FIELDS", "read_table", "merge_table", "summary_rows",
           "sweep_rows", "scheme_rows", "read_predictions", "method_predictions", "read_metrics", "write_drift",
           "read_drift", "write_general_set", "read_general_set", "write_binding_matrix", "read_binding_matrix"]

SUMMARY_FIELDS = ("dataset", "method", "em", "acc", "f1", "precision", "recall", "nll", "n")
SWEEP_FIELDS = ("dataset", "method", "gamma", "topk", "mixed", "scheme", "em", "acc", "f1", "precision", "recall",
                "nll", "n")
SCHEME_FIELDS = ("dataset", "scheme", "bytes_per_passage", "em", "f1", "precision", "recall", "nll", "n")
TEXT_COLUMNS = ("dataset", "method", "scheme")
INTEGER_COLUMNS = ("n", "topk")
# Columns a sweep table written before they existed lacks, read as what those files measured: unmixed retrieval
# (mixed 0.0) and the one bank of its run (no scheme named).
LEGACY_SWEEP_COLUMNS = {"mixed": 0.0, "scheme": ""}
# Columns a table written before they existed lacks and may keep lacking: a reader takes such a row's value as
# unmeasured (answer accuracy, before it was scored).
OPTIONAL_COLUMNS = ("acc",)
_EMPTY = ("", "nan", "NaN", "None", "null")      # a number that was not measured (no finite answer NLL)
# The scores a checked reader (06's, the reference's) takes empty: a method without answer NLLs, a row written before
# accuracy existed. Any other score read as NaN would drop out of every table and mean silently.
MAY_BE_EMPTY = ("nll", "acc")


# --- the tables ---------------------------------------------------------------------------------------------------

def _cell(path: Path, line: int, name: str, value: str | None, checked: bool) -> Any:
    """One CSV cell by its column: text, an integer, or a number. Unchecked, an empty number is NaN (nothing was
    measured); ``checked``, only :data:`MAY_BE_EMPTY` may be empty and every number must be finite."""
    if name in TEXT_COLUMNS:
        return value
    fix = "re-run 05_evaluate to rewrite the file"
    missing = value is None or value.strip() in _EMPTY
    if missing and name not in INTEGER_COLUMNS and (not checked or name in MAY_BE_EMPTY):
        return math.nan
    if missing:
        raise ValueError(f"{paths.relative(path)} line {line}: field {name!r} is {value!r}; it must be "
                         f"{'an integer' if name in INTEGER_COLUMNS else 'a number'} ({fix})")
    try:
        number = int(float(value)) if name in INTEGER_COLUMNS else float(value)
    except ValueError:
        raise ValueError(f"{paths.relative(path)} line {line}: field {name!r} = {value!r} is not a number; "
                         f"{fix}") from None
    if checked and not math.isfinite(number):
        raise ValueError(f"{paths.relative(path)} line {line}: field {name!r} = {value!r} is not a finite number; "
                         f"{fix}")
    return number


def read_table(path: Path, fields: Sequence[str], writer: str = "05_evaluate", checked: bool = False) -> list[dict]:
    """The rows of a result table as dicts in the file's column order: dataset, method and scheme as text, n and
    topk as integers, every other column a float (NaN where empty; ``checked``: only nll and acc may be empty and
    every number must be finite, as the reports need). The header must hold ``fields``; a sweep table written before
    ``mixed`` or ``scheme`` existed reads as unmixed and of no named scheme, and a table written before ``acc``
    existed has rows without it. Errors name the file, the line and the field; a missing file names ``writer``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{paths.relative(path)} not found: it is written by {writer}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        legacy = {k: v for k, v in LEGACY_SWEEP_COLUMNS.items() if "gamma" in header and k not in header}
        missing = [c for c in fields if c not in header and c not in legacy and c not in OPTIONAL_COLUMNS]
        if missing:
            raise ValueError(f"{paths.relative(path)}: header {header} lacks {missing}; expected {','.join(fields)}")
        return [{**{k: _cell(path, line, k, v, checked) for k, v in r.items()}, **legacy}
                for line, r in enumerate(reader, start=2)]


def merge_table(path: Path, fields: Sequence[str], rows: Sequence[dict], key: Sequence[str]) -> Path:
    """Insert or replace ``rows`` (matched on ``key``) in the table ``path`` with columns ``fields``; atomic, rows
    sorted by key, finite floats rounded to 4 decimals."""
    old = read_table(path, fields) if path.exists() else []

    def key_of(r):   # rows of an older file may lack a key field
        return tuple("" if r.get(k) is None else r[k] for k in key)

    merged = {key_of(r): r for r in old}
    merged.update({key_of(r): r for r in rows})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for k in sorted(merged):
        writer.writerow({f: _rounded(merged[k].get(f)) for f in fields})
    return artifacts.write_text(path, text.getvalue())


def _rounded(value):
    return round(value, 4) if isinstance(value, float) and math.isfinite(value) else value


def summary_rows(run: str, evaluation: str | None = None) -> list[dict]:
    """``results/<run>/summary.csv`` (or a named evaluation's): one row per dataset and method, checked."""
    return read_table(paths.summary_file(run, evaluation), SUMMARY_FIELDS,
                      f"05_evaluate (run={run!r}, evaluation={evaluation!r}); run it first", checked=True)


def sweep_rows(run: str, evaluation: str | None = None) -> list[dict]:
    """``results/<run>/sweeps.csv``: one row per dataset, method and (gamma, topk, mixed, scheme) point, checked."""
    return read_table(paths.sweeps_file(run, evaluation), SWEEP_FIELDS,
                      f"05_evaluate when it sweeps (gammas, topks or mixed_sweep) the evaluated datasets among its "
                      f"sweep_datasets, default ['probe'] (run={run!r})", checked=True)


def scheme_rows(run: str, evaluation: str | None = None) -> list[dict]:
    """``results/<run>/schemes.csv``: regrad on each storage scheme's bank, one row per dataset and scheme."""
    return read_table(paths.schemes_file(run, evaluation), SCHEME_FIELDS,
                      "05_evaluate when frontier_schemes names storage schemes (and 04_encode wrote their banks)")


# --- a method's predictions and metrics ------------------------------------------------------------------------------

def read_predictions(path: Path, writer: str = "05_evaluate") -> list[dict]:
    """The rows of a ``*.predictions.jsonl`` file (written whole and atomically, so every line must parse: a
    damaged line is refused naming the file and the line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{paths.relative(path)} not found: it is written by {writer}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            try:
                row = json.loads(text) if text.strip() else None
            except json.JSONDecodeError as e:
                raise ValueError(f"{paths.relative(path)} line {line}: not valid JSON ({e.msg})") from e
            if row is not None:
                rows.append(row)
    return rows


def method_predictions(run: str, dataset: str, method: str, evaluation: str | None = None) -> list[dict]:
    """The rows of ``results/<run>/<dataset>/<method>.predictions.jsonl`` (or of a named evaluation's)."""
    return read_predictions(paths.predictions_file(run, dataset, method, evaluation),
                            f"05_evaluate (run={run!r}, dataset={dataset!r}, method={method!r})")


def read_metrics(path: Path) -> dict:
    """A method's ``metrics.json``; its null NLL (no finite answer NLL) read back as NaN."""
    saved = artifacts.read_json(path)
    return {**saved, "nll": math.nan if saved.get("nll") is None else saved["nll"]}


# --- drift of continual post-training --------------------------------------------------------------------------------

def write_drift(run: str, dataset: str, evaluation: str | None, record: dict) -> Path:
    """``results/<run>/<dataset>/cpt/drift.json``: the settings, the stream and the measures after every chunk."""
    return artifacts.write_json(paths.drift_file(run, dataset, evaluation), record)


def read_drift(run: str, dataset: str, evaluation: str | None = None) -> dict:
    """``results/<run>/<dataset>/cpt/drift.json`` (FileNotFoundError naming 05_evaluate when absent)."""
    return _read_json(paths.drift_file(run, dataset, evaluation), "05_evaluate with the method cpt")


def write_general_set(run: str, evaluation: str | None, record: dict) -> Path:
    """``results/<run>/drift/general_set.json``: the general set and its measures at the base and meta weights."""
    return artifacts.write_json(paths.general_set_file(run, evaluation), record)


def read_general_set(run: str, evaluation: str | None = None) -> dict:
    """``results/<run>/drift/general_set.json`` (FileNotFoundError naming 05_evaluate when absent)."""
    return _read_json(paths.general_set_file(run, evaluation), "05_evaluate with the method cpt or cpt_rag")


# --- the binding probe's matrix -------------------------------------------------------------------------------------

def write_binding_matrix(run: str, evaluation: str | None, record: dict) -> Path:
    """``results/<run>/probe_binding/binding_matrix.json``: its settings and one row per question and family member."""
    return artifacts.write_json(paths.binding_matrix_file(run, evaluation), record)


def read_binding_matrix(run: str, evaluation: str | None = None) -> dict:
    """``results/<run>/probe_binding/binding_matrix.json`` (FileNotFoundError naming 05_evaluate when absent)."""
    return _read_json(paths.binding_matrix_file(run, evaluation), "05_evaluate when probe_binding is evaluated")


def _read_json(path: Path, writer: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{paths.relative(path)} not found: it is written by {writer}")
    return artifacts.read_json(path)
