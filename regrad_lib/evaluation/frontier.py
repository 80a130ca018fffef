"""Storage schemes side by side: regrad on each scheme's bank of one run, and the size/quality frontier.

05_evaluate (parameter ``frontier_schemes``; 04_encode writes those banks from the same gradients) answers every
question with ``regrad`` once per scheme and writes ``results/<run>/<dataset>/schemes/regrad.<scheme>.
{predictions.jsonl,metrics.json}`` and ``results/<run>/schemes.csv``. 06_analyze reads them
(:func:`read_frontier`): per dataset and scheme, bytes per passage, EM/F1, and the paired answer-NLL difference
to the reference bank (fp32) per question, mean ± SE and mean |Δ|, beside the run's regrad − no_update effect.
Opt-in: the default pipeline evaluates one scheme only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from regrad_lib.answering import harness
from regrad_lib.bank import schemes
from regrad_lib.core import task_batches
from regrad_lib.evaluation import learner_once, results
from regrad_lib.io import artifacts, params, paths, runlock
from regrad_lib.reporting import analysis, effects
from regrad_lib.reporting.analysis import Missing
from regrad_lib.reporting.effects import PairedDifference

log = logging.getLogger(__name__)

FIELDS = ("dataset", "scheme", "bytes_per_passage", "em", "f1", "precision", "recall", "nll", "n")
REFERENCE = "fp32"


def files(run: str, dataset: str, scheme: str, evaluation: str | None = None) -> tuple[Path, Path]:
    """``results/<run>/<dataset>/schemes/regrad.<scheme>.predictions.jsonl`` and ``….metrics.json`` (under
    ``results/<run>/evaluations/<evaluation>/`` for a named evaluation)."""
    folder = paths.results_dir(run, evaluation) / dataset / "schemes"
    return folder / f"regrad.{scheme}.predictions.jsonl", folder / f"regrad.{scheme}.metrics.json"


def table_file(run: str, evaluation: str | None = None) -> Path:
    return paths.results_dir(run, evaluation) / "schemes.csv"


@params.typed
@runlock.writer("05_evaluate")
def evaluate_schemes(run: str, dataset: str, schemes_: Sequence[str], *, split: str = "dev", topk: int = 3,
                     gamma: float = 1.0, limit: int | None = None, device: str = "cpu", overwrite: bool = False,
                     learner=None, evaluation: str | None = None) -> list[dict]:
    """``regrad`` on the ``offline/<topk>/<run>/<dataset>/<split>_all/<scheme>`` bank of each scheme; rows of
    schemes.csv. A scheme already evaluated with the same settings is kept unless ``overwrite``."""
    from regrad_lib.bank import reader

    get_learner: Callable = learner_once.loader(run, device, learner)
    rows = []
    for name in dict.fromkeys(schemes.parse(s).name for s in schemes_):
        predictions_file, metrics_file = files(run, dataset, name, evaluation)
        settings = {"split": split, "limit": limit, "topk": topk, "gamma": gamma, "scheme": name}
        saved = artifacts.read_json(metrics_file) if metrics_file.exists() and not overwrite else {}
        if not saved or any(saved.get(k) != v for k, v in settings.items()):
            current = get_learner()
            with reader.open_bank(topk, run, dataset, split, name, learner=current) as store:
                items = task_batches.load(dataset, split, topk, end=limit)
                out = harness.run_method("regrad", current, items, bank=store, gamma=gamma, topk=topk)
                saved = {**results.score_rows(out), **settings, "dataset": dataset, "method": "regrad",
                         "bytes_per_passage": store.bytes_per_passage, "meta_hash": current.meta_hash(),
                         "provenance": artifacts.provenance({"run": run, "device": str(current.device)})}
            artifacts.write_jsonl(predictions_file, out)
            artifacts.write_json(metrics_file, saved)       # last: its presence marks the scheme as done
            log.info("%s/regrad [%s]: EM %.1f F1 %.1f NLL %.4f", dataset, name, saved["em"], saved["f1"], saved["nll"])
        rows.append({k: saved[k] for k in FIELDS})
    results.merge_csv(table_file(run, evaluation), FIELDS, rows, key=("dataset", "scheme"))
    return rows


@params.typed
def evaluate_all(run: str, datasets: Sequence[str], schemes_: Sequence[str], *, device: str = "cpu",
                 learner=None, **kwargs) -> list[dict]:
    """:func:`evaluate_schemes` for every dataset, loading the learner at most once (nothing for no schemes)."""
    if not schemes_:
        return []
    get_learner = learner_once.loader(run, device, learner)
    return [r for d in datasets
            for r in evaluate_schemes(run, d, schemes_, device=device, learner=get_learner, **kwargs)]


# --- reading (06_analyze) -----------------------------------------------------------------------------------

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
        """mean |Δ to the reference| / |regrad − no_update| (the issue's target: below 0.1 for int4)."""
        if self.effect is None or not self.effect.mean:
            return math.nan
        return self.mean_abs_delta / abs(self.effect.mean)


@dataclass
class FrontierTable(analysis.MarkdownTable):
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


def read_table(run: str, evaluation: str | None = None) -> list[dict]:
    """Rows of ``results/<run>/schemes.csv`` (FileNotFoundError naming 05_evaluate when absent)."""
    file = table_file(run, evaluation)
    if not file.exists():
        raise FileNotFoundError(f"{paths.relative(file)} not found: 05_evaluate writes it when frontier_schemes "
                                f"names storage schemes (and 04_encode wrote their banks)")
    return results.read_csv(file)


def _nlls(run: str, dataset: str, scheme: str, evaluation: str | None = None) -> dict[str, float]:
    """``{test_id: answer_nll}`` of the scheme's regrad predictions."""
    path = files(run, dataset, scheme, evaluation)[0]
    rows = analysis._read_jsonl(path, f"05_evaluate with frontier_schemes including {scheme!r} (dataset={dataset!r})")
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
        rows = [r for r in read_table(run, evaluation) if r["dataset"] in set(datasets)]
    except FileNotFoundError as e:
        return Missing(str(e))
    if not rows:
        return Missing(f"{paths.relative(table_file(run, evaluation))} has no rows for {list(datasets)}")
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
