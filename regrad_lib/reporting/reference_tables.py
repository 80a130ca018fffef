"""The tables of a reference (:mod:`regrad_lib.reporting.reference`): the :class:`Results` they hold, their names and
how a CSV cell is read back; shared by saving, rendering and comparing."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_FOLDER = "reference/demo"
EXPERIMENTS = "reference/experiments"    # reports of `make experiments`, each with its per-question rows
TABLES = ("summary", "sweeps", "questions", "effects", "relations")
META = "reference.json"
PROBE = "probe"
# prediction-row fields that are not per-question scores
NOT_SCORES = {"test_id", "truncated_passages"}
TEXT_COLUMNS = {"seed", "dataset", "method", "scheme", "test_id", "group", "prediction", "relation", "a", "b", "run",
                "evaluation"}
# an experiment report's per-question rows (reference/experiments/<name>.questions.csv): one figure per these fields
REPORT_KEYS = ("run", "evaluation", "dataset", "method", "gamma", "topk", "mixed")


def rounded(value):
    """Floats to 7 significant digits (far below any tolerance; keeps the folder small); the same for a saved
    reference and a fresh run, so a run compared with its own reference differs by exactly zero."""
    return float(f"{value:.7g}") if isinstance(value, float) and math.isfinite(value) else value


@dataclass
class Results:
    """The figures of one run (and its seed runs): one list of row dicts per table, and what made them."""

    summary: list[dict] = field(default_factory=list)
    sweeps: list[dict] = field(default_factory=list)
    questions: list[dict] = field(default_factory=list)
    effects: list[dict] = field(default_factory=list)
    relations: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def seeds(self) -> list[str]:
        return list(dict.fromkeys(r["seed"] for r in self.summary))

    @property
    def main_seed(self) -> str:
        return str(self.meta.get("main_seed") or self.seeds[0])

    def table(self, name: str, seed: str | None = None, **match) -> list[dict]:
        """Rows of table ``name`` (of one ``seed`` when given) whose fields equal ``match``."""
        return [r for r in getattr(self, name) if (seed is None or r["seed"] == seed)
                and all(r.get(k) == v for k, v in match.items())]


def _number(text: str):
    """A CSV cell: int or float where it parses as one, else the text ('' stays '')."""
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            continue
    return text


def read_table(file: Path) -> list[dict]:
    """A CSV file as row dicts, numbers parsed (any columns: new ones flow through)."""
    with file.open(newline="", encoding="utf-8") as f:
        return [{k: v if k in TEXT_COLUMNS else _number(v) for k, v in r.items()} for r in csv.DictReader(f)]


def load(folder: str | Path = DEFAULT_FOLDER) -> Results:
    """A saved reference (tables it lacks are empty)."""
    from regrad_lib.io import paths

    source = paths.resolve(folder)
    if not (source / META).is_file():
        raise FileNotFoundError(f"{paths.relative(source)}/{META} not found: write a reference with "
                                "python -m regrad_lib.reporting.reference save --run <run>")
    results = Results(meta=json.loads((source / META).read_text(encoding="utf-8")))
    for name in TABLES:
        file = source / f"{name}.csv"
        if file.is_file():
            setattr(results, name, read_table(file))
    return results
