"""Reading a run's results for 06_analyze: score table, sweeps, paired answer-NLL differences, training log, bank sizes.

Inputs (written by 05_evaluate, 03_train and 04_encode; see design.md "Layout"):
``results/<run>/summary.csv``, ``results/<run>/sweeps.csv``, ``results/<run>/<dataset>/<method>.predictions.jsonl``,
``outputs/<run>/training_log.jsonl``, ``outputs/<run>/meta_state.safetensors`` and the bank manifests
``offline/<topk>/<run>/<dataset>/<split>_all/<scheme>/manifest.json``. Plain ``csv``/``json``; no pandas.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from regrad_lib.answering.specs import METHODS, ordered
from regrad_lib.io import params, paths

log = logging.getLogger(__name__)

T = TypeVar("T")

SUMMARY_FIELDS = ("dataset", "method", "em", "acc", "f1", "precision", "recall", "nll", "n")
SWEEP_FIELDS = ("dataset", "method", "gamma", "topk", "em", "acc", "f1", "precision", "recall", "nll", "n")
OPTIONAL_FIELDS = ("mixed", "acc")    # read as unmixed / NaN from files written before they existed


# --- where things are -------------------------------------------------------------------------------------

def summary_file(run: str, evaluation: str | None = None) -> Path:
    return paths.results_dir(run, evaluation) / "summary.csv"


def sweeps_file(run: str, evaluation: str | None = None) -> Path:
    return paths.results_dir(run, evaluation) / "sweeps.csv"


def predictions_file(run: str, dataset: str, method: str, evaluation: str | None = None) -> Path:
    return paths.results_dir(run, evaluation) / dataset / f"{method}.predictions.jsonl"


def training_log_file(run: str) -> Path:
    return paths.output_dir(run) / "training_log.jsonl"


def meta_state_file(run: str) -> Path:
    return paths.output_dir(run) / "meta_state.safetensors"


# --- missing optional inputs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Missing:
    """What a notebook section shows instead of a figure when its input is absent."""

    message: str

    def __str__(self) -> str:
        return f"not available: {self.message}"

    __repr__ = __str__

    def _repr_markdown_(self) -> str:
        return f"**Not available:** {self.message}"


def optional(read: Callable[..., T], *args, **kwargs) -> T | Missing:
    """``read(*args, **kwargs)``, or a :class:`Missing` note carrying its FileNotFoundError message."""
    try:
        return read(*args, **kwargs)
    except FileNotFoundError as e:
        log.warning("%s", e)
        return Missing(str(e.args[0]) if e.args else str(e))


@dataclass(frozen=True)
class AnalyzeConfig:
    """06_analyze's parameters, checked: which run, datasets, bank top-k and split, and which of the run's
    evaluations (None: the main results; a name: ``results/<run>/evaluations/<name>/`` of 05_evaluate)."""

    run: str
    datasets: tuple[str, ...]
    topk: int = 3
    split: str = "dev"
    evaluation: str | None = None

    def __post_init__(self):
        params.check_fields(self)       # topk "3" -> 3 as everywhere (params), True refused
        if not isinstance(self.run, str) or not self.run.strip():
            raise ValueError(f"run={self.run!r}: give the run name used by 03_train and 05_evaluate, e.g. 'demo'")
        if isinstance(self.datasets, str) or not self.datasets or \
                not all(isinstance(d, str) and d for d in self.datasets):
            raise ValueError(f"datasets={self.datasets!r}: give a non-empty list of dataset names, e.g. ['popqa']")
        object.__setattr__(self, "datasets", tuple(self.datasets))
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 1:
            raise ValueError(f"topk={self.topk!r}: a positive integer (the bank's offline/<topk>/ folder)")
        if not isinstance(self.split, str) or not self.split:
            raise ValueError(f"split={self.split!r}: the evaluated split, e.g. 'dev'")
        paths.results_dir(self.run, self.evaluation)        # a bad evaluation name fails here, naming the rule


class _Markdown:
    """Inline display of ``header()`` / ``rows()`` as a markdown table."""

    def to_markdown(self) -> str:
        header = self.header()
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in self.rows()])

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def __str__(self) -> str:
        return self.to_markdown()


# --- summary and sweeps -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Score:
    """One row of summary.csv or sweeps.csv (scores ×100; nll = mean gold-answer NLL in nats)."""

    dataset: str
    method: str
    em: float
    f1: float
    precision: float
    recall: float
    nll: float
    n: int
    acc: float = math.nan     # answer accuracy (gold alias contained); NaN in files written before it existed
    gamma: float | None = None
    topk: int | None = None
    mixed: float | None = None


MAY_BE_EMPTY = ("nll", "acc")     # a method without answer NLLs; a row written before accuracy existed


def _number(path: Path, line: int, name: str, value: str, kind=float):
    """A number of a results CSV; empty (or nan) only for :data:`MAY_BE_EMPTY`: any other score read as NaN would
    drop out of every table and mean silently."""
    missing = value is None or value.strip() in ("", "nan", "NaN", "None", "null")
    if missing and kind is float and name in MAY_BE_EMPTY:
        return math.nan
    fix = "re-run 05_evaluate to rewrite the file"
    if missing:
        raise ValueError(f"{paths.relative(path)} line {line}: field {name!r} is {value!r}; it must be "
                         f"{'an integer' if kind is int else 'a number'} ({fix})")
    try:
        number = kind(float(value)) if kind is int else kind(value)
    except ValueError:
        raise ValueError(f"{paths.relative(path)} line {line}: field {name!r} = {value!r} is not a number; "
                         f"{fix}") from None
    if not math.isfinite(number):
        raise ValueError(f"{paths.relative(path)} line {line}: field {name!r} = {value!r} is not a finite number; "
                         f"{fix}")
    return number


def _read_scores(path: Path, fields: Sequence[str], writer: str) -> list[Score]:
    if not path.is_file():
        raise FileNotFoundError(f"{paths.relative(path)} not found: it is written by {writer}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in fields if c not in (reader.fieldnames or []) and c not in OPTIONAL_FIELDS]
        if missing:
            raise ValueError(f"{paths.relative(path)}: header {reader.fieldnames} lacks {missing}; "
                             f"expected {','.join(fields)}")
        rows = []
        for line, r in enumerate(reader, start=2):
            extra = {}
            if "gamma" in fields:
                extra = {"gamma": _number(path, line, "gamma", r["gamma"]),
                         "topk": _number(path, line, "topk", r["topk"], int),
                         "mixed": _number(path, line, "mixed", r["mixed"]) if "mixed" in r else 0.0}
            rows.append(Score(dataset=r["dataset"], method=r["method"],
                              **{k: _number(path, line, k, r[k]) for k in ("em", "f1", "precision", "recall", "nll")},
                              n=_number(path, line, "n", r["n"], int),
                              acc=_number(path, line, "acc", r["acc"]) if "acc" in r else math.nan, **extra))
    return rows


def read_summary(run: str, datasets: Sequence[str] | None = None, evaluation: str | None = None) -> list[Score]:
    """``results/<run>/summary.csv`` (or a named evaluation's) as typed rows (only ``datasets`` if given); missing
    file: names 05_evaluate."""
    file = summary_file(run, evaluation)
    rows = _read_scores(file, SUMMARY_FIELDS, f"05_evaluate (run={run!r}, evaluation={evaluation!r}); run it first")
    if datasets is None:
        return rows
    absent = [d for d in datasets if all(r.dataset != d for r in rows)]
    if absent:
        log.warning("%s has no rows for %s", paths.relative(file), absent)
    return [r for r in rows if r.dataset in datasets]


def read_sweeps(run: str, evaluation: str | None = None) -> list[Score]:
    """``results/<run>/sweeps.csv`` (gamma / top-k / mixed sweeps of 05_evaluate); FileNotFoundError when absent."""
    return _read_scores(sweeps_file(run, evaluation), SWEEP_FIELDS,
                        f"05_evaluate when it sweeps (gammas, topks or mixed_sweep) the evaluated datasets among "
                        f"its sweep_datasets, default ['probe'] (run={run!r})")


@dataclass
class ScoreTable(_Markdown):
    """Datasets × methods, answer accuracy (gold contained), EM and F1 (×100); shown inline as a markdown table."""

    datasets: list[str]
    methods: list[str]
    em: dict[tuple[str, str], float] = field(default_factory=dict)
    f1: dict[tuple[str, str], float] = field(default_factory=dict)
    acc: dict[tuple[str, str], float] = field(default_factory=dict)

    def header(self) -> list[str]:
        return ["dataset"] + [f"{m} {k}" for m in self.methods for k in ("acc", "EM", "F1")]

    def rows(self) -> list[list[str]]:
        """One row per dataset: acc, EM and F1 of each method, one decimal; '–' where a method was not run."""
        def cell(table, d, m):
            v = table.get((d, m))
            return "–" if v is None or not math.isfinite(v) else f"{v:.1f}"
        return [[d] + [cell(t, d, m) for m in self.methods for t in (self.acc, self.em, self.f1)]
                for d in self.datasets]


def score_table(rows: Sequence[Score], datasets: Sequence[str] | None = None,
                methods: Sequence[str] | None = None) -> ScoreTable:
    """Pivot summary rows into datasets × methods (methods in :data:`METHODS` order, then any others)."""
    ds = list(datasets) if datasets else ordered((r.dataset for r in rows), ())
    ms = list(methods) if methods else ordered((r.method for r in rows), METHODS)
    table = ScoreTable(ds, ms)
    for r in rows:
        if r.dataset in ds and r.method in ms:
            table.em[(r.dataset, r.method)] = r.em
            table.f1[(r.dataset, r.method)] = r.f1
            table.acc[(r.dataset, r.method)] = r.acc
    return table


def sweep(rows: Sequence[Score] | Missing, vary: str, method: str = "regrad", **fixed) -> list[Score] | Missing:
    """The sweep rows of ``method`` where ``vary`` (gamma, topk or mixed) takes 2+ values in a dataset, the
    parameters in ``fixed`` (e.g. ``gamma=1.0``, ``mixed=0.0``) fixed.

    Returns a :class:`Missing` note when there is no such sweep (or no sweeps.csv at all).
    """
    if isinstance(rows, Missing):
        return rows
    if vary not in ("gamma", "topk", "mixed"):
        raise ValueError(f"vary={vary!r}: choose 'gamma', 'topk' or 'mixed'")
    if vary != "mixed":
        fixed.setdefault("mixed", 0.0)        # the plain retrieval unless a mixed share is asked for
    picked = [r for r in rows if r.method == method
              and all(getattr(r, k) == v for k, v in fixed.items() if v is not None)]
    values: dict[str, set] = {}
    for r in picked:
        values.setdefault(r.dataset, set()).add(getattr(r, vary))
    keep = {d for d, v in values.items() if len(v) >= 2}
    out = sorted((r for r in picked if r.dataset in keep), key=lambda r: (r.dataset, getattr(r, vary)))
    if not out:
        where = ", ".join(f"{k}={v}" for k, v in fixed.items() if v is not None)
        return Missing(f"sweeps.csv has no {vary} sweep for method {method!r}" + (f" at {where}" if where else ""))
    return out


# --- predictions ------------------------------------------------------------------------------------------

def _read_jsonl(path: Path, writer: str) -> list[dict]:
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


def read_predictions(run: str, dataset: str, method: str, evaluation: str | None = None) -> list[dict]:
    """Rows of ``results/<run>/<dataset>/<method>.predictions.jsonl`` (or a named evaluation's)."""
    return _read_jsonl(predictions_file(run, dataset, method, evaluation),
                       f"05_evaluate (run={run!r}, dataset={dataset!r}, method={method!r})")



# --- training log and step sizes --------------------------------------------------------------------------

def read_training_log(run: str) -> list[dict]:
    """Rows of ``outputs/<run>/training_log.jsonl`` (each with ``kind`` and ``step``)."""
    path = training_log_file(run)
    rows = _read_jsonl(path, f"03_train (run={run!r})")
    for i, row in enumerate(rows, start=1):
        if "kind" not in row or "step" not in row:
            raise ValueError(f"{paths.relative(path)} row {i}: lacks 'kind' or 'step' (keys {sorted(row)})")
    return rows


def read_alpha(run: str) -> dict[str, float]:
    """Step size per LoRA tensor from ``meta_state.safetensors`` (``alpha.*``; per-element values averaged)."""
    path = meta_state_file(run)
    if not path.is_file():
        raise FileNotFoundError(f"{paths.relative(path)} not found: it is written by 03_train (run={run!r})")
    from regrad_lib.core.learner import (
        read_state,  # the checked reader (checksum, finite weights)
    )

    out = {key[len("alpha."):].replace("__", "."): float(value.float().mean())
           for key, value in read_state(path).items() if key.startswith("alpha.")}
    if not out:
        raise ValueError(f"{paths.relative(path)} holds no 'alpha.*' tensors; is it a meta_state file of 03_train?")
    natural = lambda name: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]  # noqa: E731
    return {name: out[name] for name in sorted(out, key=natural)}


# --- bank sizes ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BankSize:
    """One Gradient Bank's size: stored bytes per passage (the scheme's values, scales and checksum) and on disk."""

    dataset: str
    scheme: str
    count: int
    bytes_per_passage: int
    bytes_on_disk: int
    path: Path


def bank_size(topk: int, run: str, dataset: str, split: str, scheme: str) -> BankSize:
    """Size facts of the bank ``offline/<topk>/<run>/<dataset>/<split>_all/<scheme>`` (via :mod:`regrad_lib.bank.reader`)."""
    from regrad_lib.bank import reader

    with reader.open_bank(topk, run, dataset, split, scheme) as b:
        return BankSize(dataset, b.scheme.name, len(b), b.bytes_per_passage, b.bytes_on_disk(), b.path)


def bank_sizes(topk: int, run: str, datasets: Sequence[str], split: str) -> list[BankSize] | Missing:
    """:func:`bank_size` of every bank (every scheme) of these datasets; a :class:`Missing` note when none has one."""
    from regrad_lib.bank import reader

    out, missing = [], []
    for dataset in datasets:
        found = reader.schemes_on_disk(topk, run, dataset, split)
        if not found:
            missing.append(dataset)
            log.warning("no Gradient Bank in %s", paths.relative(paths.bank_split_dir(topk, run, dataset, split)))
        out += [bank_size(topk, run, dataset, split, scheme) for scheme in found]
    if not out:
        root = paths.bank_split_dir(topk, run, "x", split).parent.parent
        return Missing(f"no Gradient Bank under {paths.relative(root)}"
                       f" for {', '.join(missing)}: 04_encode writes them")
    return out
