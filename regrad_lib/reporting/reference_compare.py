"""A fresh run against the reference (:mod:`regrad_lib.reporting.reference`), or an experiment report's per-question
rows against a fresh collection of them: figure by figure, the same result or a changed one?

**A changed result is one a reader would call changed.** A rerun on the same machine gives identical files (the
tests check it); another thread count or CPU may flip a greedy choice that was a near tie and move an NLL in its
last digits. Anything beyond that is a change. The rules (``z`` = :data:`effects.CLEAR_SE`, 2; ``α`` =
:data:`effects.ALPHA`, 0.05):

- **counts** (``n``) and the set of questions are deterministic: they must be equal;
- **a score per question** (EM, answer accuracy ``acc`` where the rows hold it, every column whose values are all
  0/1 or 0/100, and the text scores F1, precision, recall): a question whose score changed is a flip. A flip is
  *explained* only where that question's own greedy choice was a near tie: its smallest greedy margin (top-1 −
  top-2 logit, the smaller of the two runs') is at most its own answer-NLL change between the runs (logits that
  moved the gold answer's NLL by δ moved by at least δ/2, enough to swap two choices within δ of each other; a
  question whose NLL did not move explains no flip). The score has CHANGED when its unexplained flips

  (a) are one-sided beyond chance: exact McNemar p < α on the unexplained ups and downs, or
  (b) move it materially: their net change is at least two questions' worth and at least a quarter
      (:data:`MATERIAL_SHARE`) of the larger of the two scores — a halved or doubled score is a change at any n;

- **a mean of a continuous per-question value** (the answer NLL, any other numeric column): the per-question
  differences, paired; CHANGED when |mean Δ| > z × their SE and above the column's floor (:data:`FLOORS`: 0.01 nats
  for the answer NLL, below the last digit README's tables print); an identical rerun has Δ = 0 on every question;
- **the figure moves with its questions**: a summary figure that is the mean of its per-question rows must change
  by what their mean changes (within 0.01, the summary's rounding), else CHANGED;
- **without per-question rows** on both sides nothing tells a near tie from a change: the figure passes only when
  equal at the saved precision (7 significant digits);
- **a paired effect** (regrad − shift answer NLL ...): |Δ| ≤ z × its paired SE (each method's own figures are
  judged per question above);
- **across seeds**: |Δ mean| ≤ z × SD / √seeds.

Examples (``tests/test_reference.py``): PopQA EM 26.7 → 13.3 at n = 30 (four questions lost, none a near tie:
McNemar p = 0.125, but halved) and twelve of 60 questions lost (p = 0.0005) are changes; ten questions lost of which
one was a near tie is one (nine unexplained, p = 0.004); an identical rerun is not.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from regrad_lib.data import metrics
from regrad_lib.reporting import effects
from regrad_lib.reporting.reference_tables import REPORT_KEYS, Results, rounded

Z = effects.CLEAR_SE
TEXT_SCORES = set(metrics.METRICS)
MATERIAL_SHARE = 0.25         # a net change of a quarter of the score is one a reader sees (a halving: 0.5)
FLOORS = {"answer_nll": 0.01}  # nats: below the last digit README's tables print
FIGURE_ROUNDING = 0.01         # summary.csv keeps 4 decimals
NOT_JUDGED = {"min_margin"}    # the margin is the evidence, not a result
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
        out.append(f"{len(self.lines)} figures: {counts['ok']} the same result, {counts['OUT']} changed, "
                   f"{counts['missing']} missing from the fresh run, {counts['shown']} shown without a judgement")
        if self.new:
            out.append(f"not in the reference (not judged): {', '.join(self.new)}")
        return "\n".join(out)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _value(row: dict, column: str) -> float | None:
    """A row's number in ``column`` (None when absent, empty or not finite)."""
    value = row.get(column, "")
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _margin(row: dict) -> float:
    value = _value(row, "min_margin")
    return math.nan if value is None else value


def near_tie(ref_row: dict, new_row: dict) -> bool:
    """Whether this question's own greedy choice was a near tie: its smaller margin of the two runs is at most its
    own answer-NLL change (NaN, an unknown margin or NLL, explains nothing)."""
    a, b = _value(ref_row, "answer_nll"), _value(new_row, "answer_nll")
    moved = abs(b - a) if a is not None and b is not None else math.nan
    return min(_margin(ref_row), _margin(new_row)) <= moved


def is_score(column: str, rows: Iterable[dict]) -> bool:
    """A score of the predicted text (EM, F1, ...), or a per-question column holding only 0/1 or 0/100."""
    if column in TEXT_SCORES:
        return True
    values = {_value(r, column) for r in rows} - {None}
    return bool(values) and (values <= {0.0, 1.0} or values <= {0.0, 100.0})


def _mean(rows: dict[str, dict], column: str) -> float:
    values = [v for r in rows.values() if (v := _value(r, column)) is not None]
    return sum(values) / len(values) if values else math.nan


def judge_text_score(ref: dict[str, dict], new: dict[str, dict], column: str) -> tuple[str, str]:
    """(verdict, why) of a per-question score over the same questions (module notes: flips, each explained only
    at its own near tie; changed when the unexplained ones are one-sided beyond chance or material)."""
    changed = [k for k in ref if _value(new[k], column) != _value(ref[k], column)]
    if not changed:
        return "ok", "no question changed"
    explained = [k for k in changed if near_tie(ref[k], new[k])]
    rest = [k for k in changed if k not in explained]
    delta = {k: (_value(new[k], column) or 0.0) - (_value(ref[k], column) or 0.0) for k in rest}
    up, down = sum(d > 0 for d in delta.values()), sum(d < 0 for d in delta.values())
    p = effects.mcnemar_exact(up, down)
    # a question's worth: 100 on a 0-100 scale, 1 on a 0/1 one (answer accuracy's rows are either)
    unit = 100.0 if any((_value(r, column) or 0.0) > 1.0 for r in (*ref.values(), *new.values())) else 1.0
    before, after = _mean(ref, column), _mean(new, column)
    net = abs(sum(delta.values()))
    material = net >= 2 * unit and net / len(ref) >= MATERIAL_SHARE * max(before, after)
    why = (f"{up} up / {down} down unexplained, McNemar p = {p:.2g}; {len(explained)} of {len(changed)} changed "
           f"questions at their own near tie; {before:.4g} → {after:.4g}"
           + (f", a net change of {net / unit:g} questions ≥ {MATERIAL_SHARE:g} of the score" if material else ""))
    return ("OUT" if p < effects.ALPHA or material else "ok"), why


def judge_paired_mean(ref: dict[str, dict], new: dict[str, dict], column: str) -> tuple[str, str]:
    """(verdict, why) of a continuous per-question value: the paired mean difference within z × its SE and the
    column's floor."""
    diffs = [b - a for k in ref if (a := _value(ref[k], column)) is not None
             and (b := _value(new[k], column)) is not None]
    if not diffs:
        return "shown", "no question holds the value in both runs"
    mean = sum(diffs) / len(diffs)
    se = effects.mean_se(diffs)[1] if len(diffs) > 1 else math.nan
    floor = FLOORS.get(column, 0.0)
    tolerance = max(Z * se if math.isfinite(se) else 0.0, floor)
    return ("ok" if abs(mean) <= tolerance else "OUT"), (f"Δ {mean:+.3g} paired over {len(diffs)} questions, "
                                                         f"tolerance {tolerance:.2g} ({Z:g} × SE, at least {floor:g})")


def judge_rows(ref: dict[str, dict], new: dict[str, dict], column: str) -> tuple[str, str]:
    """(verdict, why) of one column of a figure's per-question rows (the same questions on both sides)."""
    if is_score(column, [*ref.values(), *new.values()]):
        return judge_text_score(ref, new, column)
    return judge_paired_mean(ref, new, column)


def _moves_with_rows(ref_value: float, new_value: float, ref: dict[str, dict], new: dict[str, dict],
                     column: str) -> str | None:
    """Why the figure changed apart from its rows, where it is their mean (None: it moved as they did)."""
    before, after = _mean(ref, column), _mean(new, column)
    if not math.isfinite(before) or abs(ref_value - before) > FIGURE_ROUNDING:
        return None                                  # not the mean of these rows: nothing to hold it to
    if abs((new_value - ref_value) - (after - before)) <= FIGURE_ROUNDING:
        return None
    return (f"the figure moved by {new_value - ref_value:+.3g} but the mean of its questions by "
            f"{after - before:+.3g}")


# --- a reference folder against a fresh run ---------------------------------------------------------------------

def _question_values(results: Results, seed: str, column: str, **match) -> dict[str, dict]:
    """``{test_id: row}`` of the per-question rows of a figure that hold ``column``."""
    return {r["test_id"]: r for r in results.table("questions", seed, **match) if r.get(column, "") != ""}


def _question_column(column: str) -> str:
    return "answer_nll" if column == "nll" else column


def _compare_figure(report: Report, where: str, column: str, ref_value, new_value, ref: Results, new: Results,
                    seed: str, match: dict) -> None:
    qcol = _question_column(column)
    ref_rows, new_rows = _question_values(ref, seed, qcol, **match), _question_values(new, seed, qcol, **match)
    shown = (_fmt(ref_value), _fmt(new_value))
    if ref_rows and new_rows:
        if set(ref_rows) != set(new_rows):
            report.add(where, column, *shown, "OUT", "the questions differ (they are deterministic)")
            return
        verdict, why = judge_rows(ref_rows, new_rows, qcol)
        apart = _moves_with_rows(ref_value, new_value, ref_rows, new_rows, qcol)
        report.add(where, column, *shown, *(("OUT", apart) if apart else (verdict, why)))
    else:
        same = rounded(ref_value) == rounded(new_value)
        report.add(where, column, *shown, "ok" if same else "OUT",
                   "no per-question rows: " + ("equal" if same else "it moved, and without its questions no change "
                                               "can be told from a near tie"))


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
            _compare_figure(report, where, column, float(value), float(other[column]), ref, new, seed, match)
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
        _compare_figure(report, where, "em", float(row["em"]), float(other["em"]), ref, new, seed, match)


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


# --- an experiment report's per-question rows against fresh ones ---------------------------------------------------

def _figures(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    out: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        out[tuple(r.get(k, "") for k in REPORT_KEYS)][str(r["test_id"])] = r
    return out


def _where(key: tuple) -> str:
    named = dict(zip(REPORT_KEYS, key))
    source = named["run"] + (f"/{named['evaluation']}" if named["evaluation"] != "" else "")
    point = " ".join(f"{k}={named[k]}" for k in ("gamma", "topk", "mixed") if named[k] != "")
    return " ".join(filter(None, (source, str(named["dataset"]), str(named["method"]), point)))


def compare_rows(ref_rows: list[dict], new_rows: list[dict]) -> Report:
    """Each figure (run, evaluation, dataset, method, sweep point) of a report's saved per-question rows against
    fresh ones: every numeric column by the module's rules (its score columns, its answer NLL ...)."""
    report = Report()
    ref, new = _figures(ref_rows), _figures(new_rows)
    for key, questions in ref.items():
        where = _where(key)
        fresh = new.pop(key, None)
        if fresh is None:
            report.add(where, "*", "present", "absent", "missing")
            continue
        if set(questions) != set(fresh):
            report.add(where, "questions", str(len(questions)), str(len(fresh)), "OUT",
                       "the questions differ (they are deterministic)")
            continue
        columns = dict.fromkeys(c for r in questions.values() for c, v in r.items() if c not in REPORT_KEYS
                                and c not in NOT_JUDGED and c != "test_id" and isinstance(v, (int, float)))
        for column in columns:
            if all(_value(r, column) is None for r in fresh.values()):
                report.add(where, column, _fmt(_mean(questions, column)), "absent", "missing")
                continue
            report.add(where, column, _fmt(_mean(questions, column)), _fmt(_mean(fresh, column)),
                       *judge_rows(questions, fresh, column))
    report.new += [_where(k) for k in new]
    return report
