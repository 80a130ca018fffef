"""The learning curve of meta-training (``python -m experiments.learning_curve``): each kept step of a long run,
evaluated as a run of its own, read back as one table — every method's answer accuracy, EM, F1 and answer NLL per
evaluated split and point, the paired gaps regrad − rag, regrad − rag_sft and regrad_icl − rag with their
uncertainty, and a trend of each gap against log10(meta-training tasks) where three or more points allow one.

The base model's methods (rag, closed_book) do not change with meta-training, so they are read from one point
(``base_point``) and paired by question with every point. No model is loaded.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from regrad_lib.data import metrics
from regrad_lib.io import artifacts, paths, result_files
from regrad_lib.io.result_files import method_predictions
from regrad_lib.reporting.effects import mcnemar_exact

GAPS = (("regrad", "rag"), ("regrad", "rag_sft"), ("regrad_icl", "rag"), ("regrad_icl", "rag_sft"))
SHOWN = ("rag", "rag_sft", "regrad", "regrad_icl", "shift", "no_update", "closed_book")
BASE_METHODS = ("rag", "closed_book")


@dataclass(frozen=True)
class Score:
    run: str
    point: str
    step: int
    tasks: int
    dataset: str
    split: str
    method: str
    acc: float
    em: float
    f1: float
    nll: float
    n: int


@dataclass(frozen=True)
class Gap:
    """``a − b`` on the same questions: accuracy difference (points) with its paired SE and McNemar's p, and the
    answer-NLL difference with its SE."""
    run: str
    point: str
    step: int
    tasks: int
    dataset: str
    split: str
    a: str
    b: str
    acc: float
    acc_se: float
    only_a: int
    only_b: int
    nll: float
    nll_se: float
    n: int

    @property
    def p(self) -> float:
        return mcnemar_exact(self.only_a, self.only_b)


@dataclass(frozen=True)
class Trend:
    """A weighted least-squares line of a gap against log10(tasks): slope per tenfold tasks ± SE and the values it
    predicts (± SE of the line) at 10^4 and 10^5 tasks."""
    dataset: str
    split: str
    a: str
    b: str
    slope: float
    slope_se: float
    at: dict
    possible: tuple[float, float] = (-100.0, 100.0)   # the gap's range given b's accuracy at the last point


@dataclass
class Curve:
    scores: list[Score] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    trends: list[Trend] = field(default_factory=list)
    costs: list[dict] = field(default_factory=list)


def _evaluation(split: str) -> str | None:
    """Where the learning-curve driver keeps a split's results: the main results for ``dev``, else a named
    evaluation (``dev_position_free`` → ``dev-position-free``)."""
    return None if split == "dev" else split.replace("_", "-")


def _rows(run: str, dataset: str, method: str, split: str) -> dict[str, dict] | None:
    try:
        rows = method_predictions(run, dataset, method, _evaluation(split))
    except FileNotFoundError:
        return None
    return {str(r["test_id"]): r for r in rows}


def _right(row: dict, metric: str) -> float:
    return metrics.score_kind(row["prediction"], row["answers"], row.get("answer_kind", "short"),
                              row.get("choices", ()))[metric]


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else math.nan)


def _score(run, point, step, tasks, dataset, split, method, rows: dict[str, dict]) -> Score:
    scored = [metrics.score_kind(r["prediction"], r["answers"], r.get("answer_kind", "short"), r.get("choices", ()))
              for r in rows.values()]
    nll = [v for r in rows.values() if (v := _finite(r.get("answer_nll"))) is not None]
    agg = metrics.aggregate(scored)
    return Score(run, point, step, tasks, dataset, split, method, agg["acc"], agg["em"], agg["f1"],
                 sum(nll) / len(nll) if nll else math.nan, len(rows))


def _gap(run, point, step, tasks, dataset, split, a, b, rows_a, rows_b) -> Gap | None:
    common = [k for k in rows_a if k in rows_b]
    if len(common) < 2:
        return None
    diffs = [100 * (_right(rows_a[k], "acc") - _right(rows_b[k], "acc")) for k in common]
    acc, acc_se = _mean_se(diffs)
    nll = [x - y for k in common if (x := _finite(rows_a[k].get("answer_nll"))) is not None
           and (y := _finite(rows_b[k].get("answer_nll"))) is not None]
    nll_mean, nll_se = _mean_se(nll) if len(nll) > 1 else (math.nan, math.nan)
    return Gap(run, point, step, tasks, dataset, split, a, b, acc, acc_se, sum(d > 0 for d in diffs),
               sum(d < 0 for d in diffs), nll_mean, nll_se, len(common))


def fit(points: Sequence[tuple[float, float, float]]) -> tuple[float, float, float, list[list[float]]] | None:
    """Weighted least squares of ``y = c + s·x`` through ``(x, y, se)`` points (weights 1/se²): (c, s, SE of s, the
    covariance of (c, s)); None with fewer than three points or a non-positive SE."""
    if len(points) < 3 or any(not (se > 0) for _, _, se in points):
        return None
    w = [1 / se ** 2 for _, _, se in points]
    sw = sum(w)
    sx, sy = sum(wi * x for wi, (x, _, _) in zip(w, points)), sum(wi * y for wi, (_, y, _) in zip(w, points))
    sxx = sum(wi * x * x for wi, (x, _, _) in zip(w, points))
    sxy = sum(wi * x * y for wi, (x, y, _) in zip(w, points))
    det = sw * sxx - sx * sx
    if det <= 0:
        return None
    slope = (sw * sxy - sx * sy) / det
    intercept = (sy - slope * sx) / sw
    cov = [[sxx / det, -sx / det], [-sx / det, sw / det]]
    return intercept, slope, math.sqrt(cov[1][1]), cov


def trend(gaps: Sequence[Gap]) -> Trend | None:
    """The line of the accuracy gap against log10(tasks) over the points of one (dataset, split, pair) of the main
    run, and what it predicts at 10^4 and 10^5 tasks."""
    pts = [(math.log10(g.tasks), g.acc, g.acc_se) for g in gaps if g.tasks > 0 and math.isfinite(g.acc_se)]
    found = fit(pts)
    if found is None:
        return None
    c, s, s_se, cov = found
    at = {}
    for tasks in (1e4, 1e5):
        x = math.log10(tasks)
        at[int(tasks)] = (c + s * x, math.sqrt(cov[0][0] + 2 * x * cov[0][1] + x * x * cov[1][1]))
    g = gaps[0]
    return Trend(g.dataset, g.split, g.a, g.b, s, s_se, at)


def _points(run: str) -> list[tuple[str, int, int]]:
    """(point run, step, tasks) of every kept step of ``run`` made into a run
    (:mod:`regrad_lib.training.kept_steps`)."""
    root = paths.output_dir(run).parent
    out = []
    for folder in sorted(root.glob(f"{run}-[0-9][0-9][0-9]*")):
        summary = folder / paths.TRAIN_SUMMARY
        if summary.is_file():
            s = artifacts.read_json(summary)
            if s.get("kept_step_of") == run:
                out.append((folder.name, int(s["steps"]), int(s["tasks"])))
    return sorted(out, key=lambda p: p[1])


def collect(runs: Sequence[str], splits: Sequence[tuple], validation: tuple[str, str], base_point: str) -> Curve:
    """Every point of ``runs`` on every ``(dataset, split, ...)`` of ``splits`` that was evaluated."""
    curve = Curve()
    for run in runs:
        for point, step, tasks in _points(run):
            for dataset, split, *_ in splits:
                found = {m: rows for m in SHOWN if m not in BASE_METHODS
                         and (rows := _rows(point, dataset, m, split)) is not None}
                if not found:
                    continue
                found.update({m: rows for m in BASE_METHODS if (rows := _rows(base_point, dataset, m, split))})
                curve.scores += [_score(run, point, step, tasks, dataset, split, m, r) for m, r in found.items()]
                curve.gaps += [g for a, b in GAPS if a in found and b in found
                               and (g := _gap(run, point, step, tasks, dataset, split, a, b, found[a], found[b]))]
            if paths.general_set_file(point).is_file():
                saved = result_files.read_general_set(point)["points"]
                curve.costs.append({"run": run, "point": point, "step": step, "tasks": tasks,
                                    **{f"{k}_{m}": v for k, p in saved.items() for m, v in p.items()
                                       if not isinstance(v, list)}})
    main_run = runs[0]
    for dataset, split, *_ in splits:
        for a, b in GAPS:
            series = sorted((g for g in curve.gaps if g.run == main_run and (g.dataset, g.split, g.a, g.b) ==
                             (dataset, split, a, b)), key=lambda g: g.tasks)
            found = trend(series)
            if found is not None:
                last = series[-1]
                b_acc = next(s.acc for s in curve.scores if (s.point, s.dataset, s.split, s.method) ==
                             (last.point, dataset, split, b))
                curve.trends.append(replace(found, possible=(-b_acc, 100.0 - b_acc)))
    return curve


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:"
                                                                    for i in range(len(header))) + "|"]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def _predicted(t: Trend, tasks: int) -> str:
    """The line's value at ``tasks`` ± its SE, marked where accuracy cannot follow a straight line that far."""
    value, se = t.at[tasks]
    low, high = t.possible
    beyond = "" if low <= value <= high else f" (beyond the possible {low:+.1f} … {high:+.1f}: the line cannot hold)"
    return f"{value:+.1f} ± {se:.1f}{beyond}"


def markdown(curve: Curve) -> str:
    """The report: per split, each method's acc / EM / answer NLL per point, the paired gaps, the trends."""
    parts = []
    splits = list(dict.fromkeys((s.dataset, s.split) for s in curve.scores))
    for dataset, split in splits:
        rows = [s for s in curve.scores if (s.dataset, s.split) == (dataset, split)]
        points = list(dict.fromkeys((s.run, s.step, s.tasks) for s in rows))
        methods = [m for m in SHOWN if any(s.method == m for s in rows)]
        cell = {(s.run, s.step, s.method): s for s in rows}
        body = [[f"{run} step {step} ({tasks} tasks)",
                 *(f"{c.acc:.1f} / {c.em:.1f} / {c.nll:.2f}" if (c := cell.get((run, step, m))) else "–"
                   for m in methods)] for run, step, tasks in points]
        parts += [f"**{dataset} ({split}, n = {rows[0].n})** — acc / EM / answer NLL:", "",
                  _table(["point", *methods], body), ""]
        gaps = [g for g in curve.gaps if (g.dataset, g.split) == (dataset, split)]
        if gaps:
            parts += ["Paired gaps (acc in points ± paired SE, McNemar p; answer NLL ± SE):", "",
                      _table(["point", "pair", "Δacc", "only a / only b", "p", "Δ answer NLL"],
                             [[f"{g.run} step {g.step}", f"{g.a} − {g.b}", f"{g.acc:+.1f} ± {g.acc_se:.1f}",
                               f"{g.only_a} / {g.only_b}", f"{g.p:.2g}", f"{g.nll:+.2f} ± {g.nll_se:.2f}"]
                              for g in gaps]), ""]
    if curve.trends:
        parts += ["Trends of the accuracy gap against log10(meta-training tasks) (weighted least squares over the "
                  "main run's points; ± SE of the line):", ""]
        parts += [f"- {t.dataset} ({t.split}), {t.a} − {t.b}: {t.slope:+.1f} ± {t.slope_se:.1f} points per tenfold "
                  f"tasks; predicted at 10^4 tasks {_predicted(t, 10000)}, at 10^5 {_predicted(t, 100000)}"
                  for t in curve.trends]
        parts.append("")
    if curve.costs:
        keys = [k for k in ("meta_general_text_nll", "meta_general_acc", "meta_general_nll", "base_general_text_nll",
                            "base_general_acc", "base_general_nll") if any(k in c for c in curve.costs)]
        parts += ["The meta-trained LoRA's own cost to general ability (its persistent weights against the base "
                  "model):", "", _table(["point", *keys], [[f"{c['run']} step {c['step']}",
                                                           *(_fmt(c.get(k)) for k in keys)] for c in curve.costs]), ""]
    return "\n".join(parts).rstrip() + "\n"


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def write_csv(curve: Curve, target) -> None:
    """Every score and gap row as one CSV (``kind`` score or gap), for a reader's own analysis."""
    rows = [{"kind": "score", **asdict(s)} for s in curve.scores] + \
        [{"kind": "gap", **asdict(g), "p": g.p} for g in curve.gaps]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    artifacts.write_text(target, text.getvalue())


def to_json(curve: Curve) -> str:
    return json.dumps({"scores": [asdict(s) for s in curve.scores], "gaps": [asdict(g) for g in curve.gaps],
                       "trends": [asdict(t) for t in curve.trends], "costs": curve.costs}, indent=1)
