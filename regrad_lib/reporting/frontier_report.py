"""06_analyze's storage-scheme frontier: regrad on each scheme's bank of one run (``results/<run>/schemes.csv`` and
``results/<run>/<dataset>/schemes/regrad.<scheme>.predictions.jsonl``, written by 05_evaluate's
:mod:`regrad_lib.evaluation.frontier`) as, per dataset and scheme, bytes per passage, EM/F1, and the paired
answer-NLL difference to the reference bank (fp32) per question, mean ± SE and mean |Δ|, beside the run's
regrad − no_update effect. Reads files only: no model, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from regrad_lib.io import paths, result_files
from regrad_lib.reporting import effects
from regrad_lib.reporting.analysis import MarkdownTable, Missing
from regrad_lib.reporting.effects import PairedDifference

__all__ = ["REFERENCE", "FrontierPoint", "FrontierTable", "read_frontier"]

REFERENCE = "fp32"      # the bank every other scheme's answers are compared with, question by question


@dataclass(frozen=True)
class FrontierPoint:
    """One scheme on one dataset: size, scores, and its paired answer-NLL difference to the reference bank."""

    dataset: str
    scheme: str
    bytes_per_passage: int
    em: float
    f1: float
    n: int
    delta: PairedDifference | None          # answer_nll[scheme] - answer_nll[reference], per question
    mean_abs_delta: float
    effect: PairedDifference | None          # the run's regrad - no_update, when 05 evaluated both

    @property
    def ratio(self) -> float:
        """mean |Δ to the reference| / |regrad − no_update|: how much of the method's effect storing the gradients
        in fewer bits moves (the target for int4: below 0.1, the dashed line of the figure)."""
        if self.effect is None or not self.effect.mean:
            return math.nan
        return self.mean_abs_delta / abs(self.effect.mean)


@dataclass
class FrontierTable(MarkdownTable):
    points: list[FrontierPoint]
    reference: str = REFERENCE

    def __iter__(self):
        return iter(self.points)

    def __len__(self) -> int:
        return len(self.points)

    def header(self) -> list[str]:
        return ["dataset", "scheme", "bytes/passage", "EM", "F1", f"Δ NLL vs {self.reference} (mean ± SE)",
                "mean |Δ|", "|Δ| / |regrad − no_update|", "n"]

    def rows(self) -> list[list[str]]:
        def delta(p: FrontierPoint) -> str:
            return "–" if p.delta is None else f"{p.delta.mean:+.2e} ± {p.delta.se:.1e}"
        return [[p.dataset, p.scheme, f"{p.bytes_per_passage:,}", f"{p.em:.1f}", f"{p.f1:.1f}", delta(p),
                 "–" if p.delta is None else f"{p.mean_abs_delta:.2e}",
                 "–" if math.isnan(p.ratio) else f"{p.ratio:.3f}", str(p.n)] for p in self.points]


def _nlls(run: str, dataset: str, scheme: str, evaluation: str | None = None) -> dict[str, float]:
    """``{test_id: answer_nll}`` of the scheme's regrad predictions."""
    path = paths.scheme_predictions_file(run, dataset, scheme, evaluation)
    rows = result_files.read_predictions(path, f"05_evaluate with frontier_schemes including {scheme!r} "
                                               f"(dataset={dataset!r})")
    out = {}
    for i, r in enumerate(rows, start=1):
        if "test_id" not in r or "answer_nll" not in r:
            raise ValueError(f"{paths.relative(path)} row {i}: lacks 'test_id' or 'answer_nll'; re-run 05_evaluate")
        v = r["answer_nll"]
        out[str(r["test_id"])] = float(v) if isinstance(v, (int, float)) else math.nan
    return out


def read_frontier(run: str, datasets: Sequence[str], reference: str = REFERENCE,
                  evaluation: str | None = None) -> FrontierTable | Missing:
    """Every (dataset, scheme) of schemes.csv for ``datasets``, ordered by size; a :class:`Missing` note if none."""
    try:
        rows = [r for r in result_files.scheme_rows(run, evaluation) if r["dataset"] in set(datasets)]
    except FileNotFoundError as e:
        return Missing(str(e))
    if not rows:
        return Missing(f"{paths.relative(paths.schemes_file(run, evaluation))} has no rows for {list(datasets)}")
    points = []
    for r in sorted(rows, key=lambda r: (list(datasets).index(r["dataset"]), -r["bytes_per_passage"])):
        mine, delta, mean_abs = _nlls(run, r["dataset"], r["scheme"], evaluation), None, math.nan
        if (r["dataset"], reference) in {(x["dataset"], x["scheme"]) for x in rows}:
            ref = _nlls(run, r["dataset"], reference, evaluation)
            delta = effects.paired_difference(mine, ref, r["dataset"], r["scheme"], reference)
            common = [k for k in mine if k in ref and math.isfinite(mine[k]) and math.isfinite(ref[k])]
            mean_abs = sum(abs(mine[k] - ref[k]) for k in common) / len(common)
        try:
            effect = effects.paired_nll_differences(run, r["dataset"], "regrad", "no_update", evaluation)
        except FileNotFoundError:
            effect = None
        points.append(FrontierPoint(r["dataset"], r["scheme"], int(r["bytes_per_passage"]), r["em"], r["f1"],
                                    int(r["n"]), delta, mean_abs, effect))
    return FrontierTable(points, reference)
