"""A fresh run against the reference (:mod:`regrad_lib.reporting.reference`): figure by figure, is the difference within
the figure's own uncertainty?

Rules (``z`` = :data:`effects.CLEAR_SE`, the 2 SE beyond which 06_analyze calls an effect clear; ``α`` =
:data:`effects.ALPHA`):

- **counts** (``n``) and the set of questions are deterministic: they must be equal;
- **a mean of a continuous per-question value** (the answer NLL of a method or sweep point, a new numeric column
  of the prediction rows): |fresh − reference| ≤ z × the figure's standard error over its questions;
- **a paired effect** (regrad − shift answer NLL ...): |fresh − reference| ≤ z × its paired SE;
- **a score of the predicted text** (EM, F1, precision, recall; also per probe relation): the questions whose
  score changed are counted up and down; the change is within its uncertainty when it is not one-sided beyond
  chance (exact McNemar/sign test p ≥ α) or when every changed question was a near tie: its smallest greedy
  margin (top-1 − top-2 logit, either run) is at most the largest change of a question's answer NLL between the
  runs on that figure (an NLL moves by at most twice the largest logit change, so the logits moved by at least
  half that: enough to flip such a choice);
- without per-question rows (an older run) an EM is judged as two binomial shares, |Δ| ≤ z × √(SE₁² + SE₂²),
  and other figures are shown, not judged;
- across seeds: |Δ mean| ≤ z × SD / √seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from regrad_lib.data import metrics
from regrad_lib.reporting import effects
from regrad_lib.reporting.reference_tables import Results

Z = effects.CLEAR_SE
TEXT_SCORES = set(metrics.METRICS)
KEYS = {"summary": ("dataset", "method"), "sweeps": ("dataset", "method", "gamma", "topk", "mixed", "scheme")}
SKIP = {"seed", "dataset", "method", "gamma", "topk", "mixed", "scheme"}


@dataclass(frozen=True)
class Line:
    """One figure: where, what, reference → fresh, the verdict (ok, OUT, missing, shown) and why."""

    where: str
    figure: str
    reference: str
    fresh: str
    verdict: str
    why: str = ""


@dataclass
class Report:
    lines: list[Line] = field(default_factory=list)
    new: list[str] = field(default_factory=list)        # figures of the fresh run the reference lacks

    @property
    def ok(self) -> bool:
        return not any(line.verdict in ("OUT", "missing") for line in self.lines)

    def add(self, *args, **kwargs) -> None:
        self.lines.append(Line(*args, **kwargs))

    def text(self) -> str:
        cells = [("where", "figure", "reference", "fresh", "verdict", "why")] + \
                [(x.where, x.figure, x.reference, x.fresh, x.verdict, x.why) for x in self.lines]
        widths = [max(len(c[i]) for c in cells) for i in range(5)]
        out = ["  ".join(c[i].ljust(widths[i]) for i in range(5)) + "  " + c[5] for c in cells]
        counts = {v: sum(x.verdict == v for x in self.lines) for v in ("ok", "OUT", "missing", "shown")}
        out.append(f"{len(self.lines)} figures: {counts['ok']} within their uncertainty, {counts['OUT']} outside, "
                   f"{counts['missing']} missing from the fresh run, {counts['shown']} shown without a judgement")
        if self.new:
            out.append(f"not in the reference (not judged): {', '.join(self.new)}")
        return "\n".join(out)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _question_values(results: Results, seed: str, column: str, **match) -> dict[str, dict]:
    """``{test_id: row}`` of the per-question rows of a figure that hold ``column``."""
    return {r["test_id"]: r for r in results.table("questions", seed, **match) if r.get(column, "") != ""}


def _question_column(column: str) -> str:
    return "answer_nll" if column == "nll" else column


def _margin(row: dict) -> float:
    value = row.get("min_margin", "")
    return float(value) if value != "" else math.nan


def judge_text_score(ref: dict[str, dict], new: dict[str, dict], column: str) -> tuple[str, str]:
    """(verdict, why) of a score of the predicted text over the same questions (module notes)."""
    up = [k for k in ref if new[k][column] > ref[k][column]]
    down = [k for k in ref if new[k][column] < ref[k][column]]
    changed = up + down
    if not changed:
        return "ok", "no question changed"
    p = effects.mcnemar_exact(len(up), len(down))
    nll = [abs(new[k]["answer_nll"] - ref[k]["answer_nll"]) for k in ref
           if isinstance(ref[k].get("answer_nll"), float) and isinstance(new[k].get("answer_nll"), float)]
    scale = max(nll, default=math.nan)
    ties = sum(1 for k in changed if _margin(ref[k]) <= scale or _margin(new[k]) <= scale)   # NaN: unknown
    why = (f"{len(up)} up / {len(down)} down, sign test p = {p:.2g}; {ties} of {len(changed)} at near ties "
           f"(margin ≤ {scale:.2g})")
    return ("ok" if p >= effects.ALPHA or ties == len(changed) else "OUT"), why


def judge_mean(ref_value: float, new_value: float, ref_rows: dict[str, dict], column: str) -> tuple[str, str]:
    """(verdict, why) of a mean of a continuous per-question value: within z × its SE over the questions."""
    values = [r[column] for r in ref_rows.values() if isinstance(r[column], (int, float)) and math.isfinite(r[column])]
    if len(values) < 2:
        return "shown", "fewer than two questions: no standard error"
    se = effects.mean_se(values)[1]
    delta = new_value - ref_value
    return ("ok" if abs(delta) <= Z * se else "OUT"), f"Δ {delta:+.3g}, tolerance {Z:g} × SE {se:.2g}"


def _compare_figure(report: Report, where: str, column: str, ref_value, new_value, ref: Results, new: Results,
                    seed: str, match: dict, n: int) -> None:
    qcol = _question_column(column)
    ref_rows, new_rows = _question_values(ref, seed, qcol, **match), _question_values(new, seed, qcol, **match)
    shown = (_fmt(ref_value), _fmt(new_value))
    if ref_rows and new_rows:
        if set(ref_rows) != set(new_rows):
            report.add(where, column, *shown, "OUT", "the questions differ (they are deterministic)")
        elif column in TEXT_SCORES:
            report.add(where, column, *shown, *judge_text_score(ref_rows, new_rows, qcol))
        else:
            report.add(where, column, *shown, *judge_mean(ref_value, new_value, ref_rows, qcol))
    elif column == "em" and isinstance(ref_value, float) and isinstance(new_value, float):
        se = math.hypot(*(100 * effects.proportion_se(v / 100, n) for v in (ref_value, new_value)))
        delta = new_value - ref_value
        report.add(where, column, *shown, "ok" if abs(delta) <= Z * se else "OUT",
                   f"no per-question rows: Δ {delta:+.3g}, tolerance {Z:g} × binomial SE {se:.2g}")
    else:
        report.add(where, column, *shown, "ok" if ref_value == new_value else "shown",
                   "" if ref_value == new_value else "no per-question rows: not judged")


def _compare_scores(report: Report, name: str, ref: Results, new: Results, seed: str) -> None:
    keys = KEYS[name]
    fresh = {tuple(r.get(k, 0.0 if k == "mixed" else "") for k in keys): r for r in new.table(name, seed)}
    for row in ref.table(name, seed):
        key = tuple(row.get(k, 0.0 if k == "mixed" else "") for k in keys)     # references before mixed: 0
        where = f"seed {seed} {name} " + " ".join(f"{k}={v}" if k in ("gamma", "topk", "mixed") else str(v)
                                                  for k, v in zip(keys, key) if v != "" and (k != "mixed" or v))
        other = fresh.pop(key, None)
        if other is None:
            report.add(where, "*", "present", "absent", "missing")
            continue
        if row.get("n") != other.get("n"):
            report.add(where, "n", str(row.get("n")), str(other.get("n")), "OUT", "the question count is deterministic")
        match = {"dataset": row["dataset"], "method": row["method"], "gamma": row["gamma"] if name == "sweeps" else ""}
        if name == "sweeps":
            match.update(topk=row["topk"], mixed=float(row.get("mixed") or 0.0))
        for column, value in row.items():
            if column in SKIP or column == "n" or not isinstance(value, (int, float)):
                continue
            if not isinstance(other.get(column), (int, float)):
                report.add(where, column, _fmt(value), "absent", "missing")
                continue
            _compare_figure(report, where, column, float(value), float(other[column]), ref, new, seed, match,
                            int(row.get("n") or 0))
    report.new += [f"seed {seed} {name} {' '.join(map(str, k))}" for k in fresh]


def _compare_effects(report: Report, ref: Results, new: Results, seed: str) -> None:
    fresh = {(r["dataset"], r["a"], r["b"]): r for r in new.table("effects", seed)}
    for row in ref.table("effects", seed):
        where = f"seed {seed} effect {row['dataset']} {row['a']} − {row['b']}"
        other = fresh.get((row["dataset"], row["a"], row["b"]))
        if other is None:
            report.add(where, "Δ answer NLL", _fmt(row["mean"]), "absent", "missing")
            continue
        delta = other["mean"] - row["mean"]
        ok = abs(delta) <= Z * row["se"]
        report.add(where, "Δ answer NLL", f"{row['mean']:+.3f} ± {row['se']:.2f}", f"{other['mean']:+.3f} ± "
                   f"{other['se']:.2f}", "ok" if ok else "OUT", f"Δ {delta:+.3g}, tolerance {Z:g} × paired SE "
                   f"{row['se']:.2g}; lower on {row['n_lower']} → {other['n_lower']} of {row['n']}, McNemar "
                   f"{row['only_a']}/{row['only_b']} → {other['only_a']}/{other['only_b']}")


def _compare_relations(report: Report, ref: Results, new: Results, seed: str) -> None:
    fresh = {(r["relation"], r["method"]): r for r in new.table("relations", seed)}
    for row in ref.table("relations", seed):
        where = f"seed {seed} probe relation {row['relation']} {row['method']}"
        other = fresh.get((row["relation"], row["method"]))
        if other is None:
            report.add(where, "em", _fmt(row["em"]), "absent", "missing")
            continue
        match = {"dataset": "probe", "method": row["method"], "gamma": "", "group": row["relation"]}
        _compare_figure(report, where, "em", float(row["em"]), float(other["em"]), ref, new, seed, match,
                        int(row["n"]))


def _compare_seeds(report: Report, ref: Results, new: Results) -> None:
    """The across-seed mean of each effect and EM, when both hold the same two or more seeds."""
    seeds = ref.seeds
    if len(seeds) < 2 or set(seeds) != set(new.seeds):
        return
    figures = {}
    for results, side in ((ref, 0), (new, 1)):
        for r in results.effects:
            figures.setdefault((r["dataset"], f"{r['a']} − {r['b']} answer NLL"), ([], []))[side].append(r["mean"])
        for r in results.summary:
            figures.setdefault((r["dataset"], f"{r['method']} EM"), ([], []))[side].append(r["em"])
    for (dataset, name), (a, b) in figures.items():
        if len(a) != len(seeds) or len(b) != len(seeds):
            continue
        spread_a, spread_b = effects.Spread(name, tuple(a)), effects.Spread(name, tuple(b))
        tolerance = Z * spread_a.sd / math.sqrt(len(seeds))
        delta = spread_b.mean - spread_a.mean
        report.add(f"seeds {','.join(seeds)} {dataset}", name, f"{spread_a.mean:.4g} ± {spread_a.sd:.2g}",
                   f"{spread_b.mean:.4g} ± {spread_b.sd:.2g}", "ok" if abs(delta) <= tolerance else "OUT",
                   f"Δ {delta:+.3g}, tolerance {Z:g} × SD / √{len(seeds)} = {tolerance:.2g}")


def compare(ref: Results, new: Results) -> Report:
    """Every figure of ``ref`` against the same figure of ``new`` (module notes)."""
    report = Report()
    for seed in ref.seeds:
        if seed not in new.seeds:
            report.add(f"seed {seed}", "*", "present", "absent", "missing", "no run of this seed was given")
            continue
        _compare_scores(report, "summary", ref, new, seed)
        _compare_scores(report, "sweeps", ref, new, seed)
        _compare_effects(report, ref, new, seed)
        _compare_relations(report, ref, new, seed)
    _compare_seeds(report, ref, new)
    return report
