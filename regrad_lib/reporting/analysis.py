"""Tables of a run's results for 06_analyze: its parameters, the score table, the sweeps, bank sizes, and the note
a section shows when its input is missing.

Inputs (written by 05_evaluate and 04_encode; see design.md "Layout"): ``results/<run>/summary.csv`` and
``results/<run>/sweeps.csv``, read by :mod:`regrad_lib.io.result_files` (the one reader of 05_evaluate's files), and
the bank manifests ``offline/<topk>/<run>/<dataset>/<split>_all/<scheme>/manifest.json``. The training log and the
learned step sizes are read by :mod:`regrad_lib.io.run_state`, as 03_train reads them. Plain ``csv``/``json``; no
pandas, no model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from regrad_lib.answering.specs import METHODS, ordered
from regrad_lib.io import params, paths, result_files

__all__ = ["AnalyzeConfig", "BankSize", "MarkdownTable", "Missing", "Score", "ScoreTable", "bank_sizes", "optional",
           "read_summary", "read_sweeps", "score_table", "sweep_series"]

log = logging.getLogger(__name__)

T = TypeVar("T")

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


class MarkdownTable:
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


def _score(row: dict) -> Score:
    sweep = {k: row[k] for k in ("gamma", "topk", "mixed")} if "gamma" in row else {}
    return Score(dataset=row["dataset"], method=row["method"],
                 **{k: row[k] for k in ("em", "f1", "precision", "recall", "nll", "n")},
                 acc=row.get("acc", math.nan), **sweep)


def read_summary(run: str, datasets: Sequence[str] | None = None, evaluation: str | None = None) -> list[Score]:
    """``results/<run>/summary.csv`` (or a named evaluation's) as typed rows (only ``datasets`` if given); missing
    file: names 05_evaluate."""
    file = paths.summary_file(run, evaluation)
    rows = [_score(r) for r in result_files.summary_rows(run, evaluation)]
    if datasets is None:
        return rows
    absent = [d for d in datasets if all(r.dataset != d for r in rows)]
    if absent:
        log.warning("%s has no rows for %s", paths.relative(file), absent)
    return [r for r in rows if r.dataset in datasets]


def read_sweeps(run: str, evaluation: str | None = None) -> list[Score]:
    """``results/<run>/sweeps.csv`` (gamma / top-k / mixed sweeps of 05_evaluate); FileNotFoundError when absent."""
    return [_score(r) for r in result_files.sweep_rows(run, evaluation)]


@dataclass
class ScoreTable(MarkdownTable):
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


def sweep_series(rows: Sequence[Score] | Missing, vary: str, method: str = "regrad", **fixed) -> list[Score] | Missing:
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
    """Size facts of the bank ``offline/<topk>/<run>/<dataset>/<split>_all/<scheme>`` (read by
    :mod:`regrad_lib.bank.reader`)."""
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
