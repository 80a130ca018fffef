"""Does ReGrad work? Paired effects of one method over another, with their uncertainty, for 06_analyze.

Per dataset, questions matched by ``test_id`` in two methods' ``predictions.jsonl`` (05_evaluate):

- answer NLL: the mean of ``nll_a - nll_b`` with its standard error (sample std / √n) and how often ``a`` is lower;
- answer accuracy (acc: a gold alias contained in the answer) and EM: both methods' score, the paired difference and
  the exact McNemar test on the discordant questions (two-sided binomial test of ``b`` "only a right" against ``c``
  "only b right" with p = 1/2);
- a verdict: one paragraph that says, from these numbers alone, on which datasets a method is better or worse than
  another (direction-aware, Holm-corrected across datasets). A method is better *on knowledge* only where answer
  accuracy and answer NLL agree; an EM difference without the same acc difference is answer format and is called
  that.

Across seeds (the same setting trained with several seeds, :func:`across_seeds`): mean and spread of each
method's EM/F1 and of each paired NLL difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from regrad_lib.data import metrics
from regrad_lib.io import paths
from regrad_lib.io.result_files import method_predictions
from regrad_lib.reporting.analysis import MarkdownTable, Missing, read_summary

__all__ = ["ALPHA", "CLEAR_SE", "Effect", "EffectTable", "GroupTable", "ICL_PAIRS", "PAIRS", "PairedDifference",
           "PairedEM", "Spread", "across_seeds", "effect_table", "em_by_group", "format_p", "holm", "mcnemar_exact",
           "mean_se", "nll_p", "paired_difference", "paired_em", "paired_nll_differences", "probe_relations",
           "proportion_se", "rows_by_id", "verdict", "verdicts", "SeedTable", "FAIR_PAIRS", "REPORTED_PAIRS", "calls",
           "paired_rows", "clustered_difference", "clustered_se", "is_right"]

PAIRS = (("regrad", "shift"), ("regrad", "no_update"))
# the combined configuration (gradients and passages in the prompt) against rag and its two controls
ICL_PAIRS = (("regrad_icl", "rag"), ("regrad_icl", "no_update_icl"), ("regrad_icl", "shift_icl"))
# the fair comparisons: regrad and regrad_icl against the baselines trained on what meta-training used (rag_sft: the
# RAG that learned the answer format; sft: the same closed book) and against plain rag
FAIR_PAIRS = (("regrad", "rag_sft"), ("regrad_icl", "rag_sft"), ("regrad", "sft"), ("regrad", "rag"),
              ("regrad_icl", "rag"))
REPORTED_PAIRS = PAIRS + FAIR_PAIRS      # what a saved reference holds, where both methods were evaluated
ALPHA = 0.05          # significance level of the verdict
CLEAR_SE = 2.0        # the "beyond 2 SE" rule of README's rendered tables and the drift study (not 06's verdict)


# --- paired answer-NLL differences -------------------------------------------------------------------------

@dataclass(frozen=True)
class PairedDifference:
    """Per-question ``nll_a - nll_b`` matched by test_id: mean, standard error (sample std / √n), share a lower."""

    dataset: str
    method_a: str
    method_b: str
    mean: float
    se: float
    share_lower: float
    n_lower: int
    n: int

    @property
    def label(self) -> str:
        return f"{self.method_a} − {self.method_b}"

    @property
    def z(self) -> float:
        """The mean in standard errors (NaN for one question)."""
        return self.mean / self.se if self.se and math.isfinite(self.se) else math.nan

    def __str__(self) -> str:
        return (f"{self.dataset}: {self.label} = {self.mean:+.4g} ± {self.se:.2g} nats, "
                f"lower on {self.n_lower} of {self.n} ({100 * self.share_lower:.0f}%)")


def rows_by_id(run: str, dataset: str, method: str, field: str = "prediction",
               evaluation: str | None = None) -> dict[str, dict]:
    path = paths.predictions_file(run, dataset, method, evaluation)
    out: dict[str, dict] = {}
    for i, r in enumerate(method_predictions(run, dataset, method, evaluation), start=1):
        if "test_id" not in r or field not in r:
            raise ValueError(f"{paths.relative(path)} row {i}: lacks 'test_id' or {field!r} "
                             f"(keys {sorted(r)}); re-run 05_evaluate")
        tid = str(r["test_id"])
        if tid in out:
            raise ValueError(f"{paths.relative(path)} row {i}: duplicate test_id {tid!r}")
        out[tid] = r
    return out


def is_right(row: dict, metric: str = "em") -> bool:
    """Whether a prediction row's answer is right by ``metric``: ``em`` exact, ``acc`` a gold alias contained (for
    yes/no and multiple-choice rows both: the right label)."""
    return metrics.score_kind(row["prediction"], row["answers"], row.get("answer_kind", "short"),
                              row.get("choices", ()))[metric] == 1.0


def _answer_nll(run: str, dataset: str, method: str, evaluation: str | None = None) -> dict[str, float]:
    rows = rows_by_id(run, dataset, method, "answer_nll", evaluation)
    return {k: float(r["answer_nll"]) if isinstance(r["answer_nll"], (int, float)) else math.nan
            for k, r in rows.items()}


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / √n; NaN for one value) of ``values``."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_se of no values")
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else math.nan


def clustered_se(values: Sequence[float], clusters: Sequence) -> tuple[float, float]:
    """Mean of ``values`` and its standard error clustered by ``clusters`` (one label per value): the sandwich
    variance ``G/(G−1) · Σ_g (Σ_{i∈g} (x_i − x̄))² / n²`` over the G clusters (CR1), so values that share a cluster
    (passages of one article) count as one draw; with one value per cluster it is the plain SE (sample std / √n).
    NaN for fewer than two clusters."""
    n = len(values)
    if n == 0 or n != len(clusters):
        raise ValueError(f"clustered_se needs one cluster label per value, got {n} values and {len(clusters)} labels")
    mean = sum(values) / n
    sums: dict = {}
    for v, g in zip(values, clusters):
        sums[g] = sums.get(g, 0.0) + (v - mean)
    groups = len(sums)
    if groups < 2:
        return mean, math.nan
    return mean, math.sqrt(groups / (groups - 1) * sum(s * s for s in sums.values()) / n ** 2)


def clustered_difference(values_a: Sequence[float], values_b: Sequence[float], clusters: Sequence,
                         dataset: str = "", method_a: str = "a", method_b: str = "b") -> PairedDifference:
    """Paired ``a − b`` of two aligned lists (None or NaN pairs left out) with :func:`clustered_se`'s SE."""
    kept = [(a - b, g) for a, b, g in zip(values_a, values_b, clusters)
            if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if not kept:
        raise ValueError(f"{dataset}: {method_a} and {method_b} share no finite value")
    diffs = [d for d, _ in kept]
    mean, se = clustered_se(diffs, [g for _, g in kept])
    lower = sum(d < 0 for d in diffs)
    return PairedDifference(dataset, method_a, method_b, mean, se, lower / len(diffs), lower, len(diffs))


def proportion_se(share: float, n: int) -> float:
    """Binomial standard error of a share (0-1) observed on ``n`` questions: √(p(1 − p) / n)."""
    return math.sqrt(share * (1 - share) / n)


def paired_difference(nll_a: dict[str, float], nll_b: dict[str, float], dataset: str = "",
                      method_a: str = "a", method_b: str = "b") -> PairedDifference:
    """Paired statistics of ``nll_a[id] - nll_b[id]`` over the test_ids both have with finite values."""
    import logging

    diffs = [nll_a[k] - nll_b[k] for k in nll_a if k in nll_b and math.isfinite(nll_a[k]) and math.isfinite(nll_b[k])]
    n = len(diffs)
    if n == 0:
        raise ValueError(f"{dataset}: {method_a} and {method_b} share no test_id with a finite answer_nll")
    mean, se = mean_se(diffs)
    lower = sum(d < 0 for d in diffs)
    unmatched = len(set(nll_a) ^ set(nll_b))
    if unmatched:
        logging.getLogger(__name__).warning("%s: %d test_id(s) appear in only one of %s / %s; compared %d",
                                            dataset, unmatched, method_a, method_b, n)
    return PairedDifference(dataset, method_a, method_b, mean, se, lower / n, lower, n)


def paired_nll_differences(run: str, dataset: str, method_a: str = "regrad", method_b: str = "shift",
                           evaluation: str | None = None) -> PairedDifference:
    """Mean, SE and share-lower of ``answer_nll[method_a] - answer_nll[method_b]`` per question of ``dataset``."""
    return paired_difference(_answer_nll(run, dataset, method_a, evaluation),
                             _answer_nll(run, dataset, method_b, evaluation),
                             dataset, method_a, method_b)


# --- paired EM and McNemar's exact test ---------------------------------------------------------------------

def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of ``only_a`` successes in ``only_a + only_b`` trials
    at p = 1/2 (doubled smaller tail, at most 1; 1 when there is no discordant pair)."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"discordant counts must be >= 0, got {only_a}, {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedEM:
    """A 0/1 score of two methods on the same questions (``metric``: EM, or acc — a gold alias contained): both
    scores ×100 (``em_a``, ``em_b``: named for EM, the first use), the difference and McNemar's exact test."""

    dataset: str
    method_a: str
    method_b: str
    em_a: float
    em_b: float
    only_a: int          # questions a gets right and b does not
    only_b: int
    n: int
    metric: str = "em"

    @property
    def difference(self) -> float:
        return self.em_a - self.em_b

    @property
    def p(self) -> float:
        return mcnemar_exact(self.only_a, self.only_b)


def paired_em(run: str, dataset: str, method_a: str = "regrad", method_b: str = "shift",
              evaluation: str | None = None, metric: str = "em") -> PairedEM:
    """``metric`` (exact match, or ``acc``: answer accuracy) of ``method_a`` and ``method_b`` on the questions both
    answered, with McNemar's test."""
    a = rows_by_id(run, dataset, method_a, "prediction", evaluation)
    b = rows_by_id(run, dataset, method_b, "prediction", evaluation)
    return paired_binary(a, b, dataset, method_a, method_b, metric)


def paired_binary(a: dict[str, dict], b: dict[str, dict], dataset: str, method_a: str, method_b: str,
                  metric: str = "em") -> PairedEM:
    """:class:`PairedEM` of two methods' prediction rows by test_id (``a`` and ``b`` may come from two runs)."""
    common = [k for k in a if k in b]
    if not common:
        raise ValueError(f"{dataset}: {method_a} and {method_b} share no test_id")
    right_a = {k: is_right(a[k], metric) for k in common}
    right_b = {k: is_right(b[k], metric) for k in common}
    n = len(common)
    return PairedEM(dataset, method_a, method_b, 100 * sum(right_a.values()) / n, 100 * sum(right_b.values()) / n,
                    sum(right_a[k] and not right_b[k] for k in common),
                    sum(right_b[k] and not right_a[k] for k in common), n, metric)


def paired_rows(a: dict[str, dict], b: dict[str, dict], dataset: str, method_a: str, method_b: str) -> Effect:
    """The :class:`Effect` (answer NLL, EM, acc) of two sets of prediction rows keyed by test_id — e.g. the same
    method of two runs on the same questions."""
    def nll(rows):
        return {k: float(r["answer_nll"]) if isinstance(r.get("answer_nll"), (int, float)) else math.nan
                for k, r in rows.items()}
    return Effect(paired_difference(nll(a), nll(b), dataset, method_a, method_b),
                  paired_binary(a, b, dataset, method_a, method_b, "em"),
                  paired_binary(a, b, dataset, method_a, method_b, "acc"))


# --- the effects table and the verdict ------------------------------------------------------------------------

@dataclass(frozen=True)
class Effect:
    """One (dataset, method_a − method_b): the paired NLL difference and the paired EM and answer-accuracy
    differences (``acc`` None where it was not measured, e.g. a reference saved before acc existed)."""

    nll: PairedDifference
    em: PairedEM
    acc: PairedEM | None = None


@dataclass
class EffectTable(MarkdownTable):
    """Every available (dataset, pair); iterable; shown inline as a markdown table."""

    effects: list[Effect]

    def __iter__(self):
        return iter(self.effects)

    def __len__(self) -> int:
        return len(self.effects)

    def header(self) -> list[str]:
        return ["dataset", "difference", "Δ answer NLL (nats)", "SE", "a lower", "acc a", "acc b", "Δacc",
                "acc a only / b only", "acc McNemar p", "EM a", "EM b", "ΔEM", "EM a only / b only", "EM McNemar p",
                "n"]

    def rows(self) -> list[list[str]]:
        def binary(p: PairedEM | None) -> list[str]:
            if p is None:
                return ["–"] * 5
            return [f"{p.em_a:.1f}", f"{p.em_b:.1f}", f"{p.difference:+.1f}", f"{p.only_a} / {p.only_b}", format_p(p.p)]
        return [[e.nll.dataset, e.nll.label, f"{e.nll.mean:+.4g}", f"{e.nll.se:.2g}", f"{e.nll.n_lower}/{e.nll.n}",
                 *binary(e.acc), *binary(e.em), str(e.em.n)] for e in self.effects]


def format_p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def effect_table(run: str, datasets: Sequence[str], pairs: Sequence[tuple[str, str]] = PAIRS,
                 evaluation: str | None = None) -> EffectTable | Missing:
    """:func:`paired_nll_differences` and :func:`paired_em` of every (dataset, pair) whose predictions exist."""
    import logging

    out, skipped = [], []
    for dataset in datasets:
        for a, b in pairs:
            try:
                out.append(Effect(paired_nll_differences(run, dataset, a, b, evaluation),
                                  paired_em(run, dataset, a, b, evaluation),
                                  paired_em(run, dataset, a, b, evaluation, metric="acc")))
            except FileNotFoundError as e:
                skipped.append(str(e).split(":")[0])
    if out and skipped:      # one line, not one per (dataset, pair): a section of pairs 05 did not run stays quiet
        logging.getLogger(__name__).warning("%d paired comparison(s) skipped, their predictions are missing: %s%s",
                                            len(skipped), ", ".join(skipped[:3]), " …" if len(skipped) > 3 else "")
    if not out:
        return Missing(f"no prediction files to pair ({', '.join(skipped[:3])}{' …' if len(skipped) > 3 else ''}); "
                       f"05_evaluate writes them with the methods {sorted({m for p in pairs for m in p})}")
    return EffectTable(out)


def _nll_phrase(d: PairedDifference) -> str:
    return f"{d.mean:+.3g} ± {d.se:.2g} nats (lower on {d.n_lower}/{d.n})"


def nll_p(d: PairedDifference) -> float:
    """Two-sided p of the paired NLL difference: the normal tail of mean / SE (1 when the SE is undefined)."""
    z = d.z
    return math.erfc(abs(z) / math.sqrt(2)) if math.isfinite(z) else 1.0


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (monotone, at most 1): a test is significant at
    level alpha across the family when its adjusted p is below alpha."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Call:
    """One dataset's verdict: the direction of answer accuracy, of NLL and of EM (+1 a better, -1 a worse, 0 not
    significant after Holm's correction across the datasets) with the adjusted p-values. ``acc`` is 0 and ``acc_p``
    NaN where accuracy was not measured."""

    effect: Effect
    em: int
    nll: int
    em_p: float          # Holm-adjusted McNemar p of EM
    nll_p: float         # Holm-adjusted p of the paired NLL difference
    acc: int = 0
    acc_p: float = math.nan   # Holm-adjusted McNemar p of answer accuracy

    @property
    def knowledge(self) -> int:
        """+1 where answer accuracy and answer NLL are both significantly better, -1 both worse, else 0: the only
        reading under which a method is called better (or worse) on knowledge."""
        return self.acc if self.acc == self.nll else 0

    @property
    def format_only(self) -> bool:
        """A significant EM difference that answer accuracy does not share: answer format, not knowledge."""
        return self.em != 0 and self.acc != self.em


def _direction(difference: float, p_adjusted: float, alpha: float, higher_is_better: bool = True) -> int:
    if not (p_adjusted < alpha) or difference == 0 or not math.isfinite(difference):
        return 0
    return (1 if difference > 0 else -1) * (1 if higher_is_better else -1)


def calls(table: EffectTable, method: str = "regrad", reference: str = "shift",
          alpha: float = ALPHA) -> list[Call]:
    """Per dataset of ``method`` − ``reference``: answer accuracy and EM (McNemar) and answer NLL (paired SE,
    normal p) each tested, Holm-corrected across the datasets (one family per measure), with the direction of each
    effect: a higher accuracy or EM and a lower NLL are gains."""
    chosen = [e for e in table if e.nll.method_a == method and e.nll.method_b == reference]
    em_adj = holm([e.em.p for e in chosen])
    nll_adj = holm([nll_p(e.nll) for e in chosen])
    measured = [e for e in chosen if e.acc is not None]
    acc_adj = dict(zip(map(id, measured), holm([e.acc.p for e in measured])))
    out = []
    for e, pe, pn in zip(chosen, em_adj, nll_adj):
        pa = acc_adj.get(id(e), math.nan)
        out.append(Call(e, _direction(e.em.difference, pe, alpha), _direction(e.nll.mean, pn, alpha, False), pe, pn,
                        _direction(e.acc.difference, pa, alpha) if e.acc is not None else 0, pa))
    return out


_KNOWLEDGE = {  # (acc direction, NLL direction) -> how the sentence reads
    (1, 1): "{m} beats {r} on knowledge (answer accuracy and the gold answer's likelihood both better) on ",
    (1, 0): "{m} answers more questions than {r} (answer accuracy), with no significant change of the gold answer's "
            "likelihood, on ",
    (0, 1): "{m} raises the gold answer's likelihood over {r}, with no significant change of answer accuracy, on ",
    (-1, -1): "{m} is worse than {r} on knowledge (answer accuracy and the gold answer's likelihood both worse) on ",
    (-1, 0): "{m} answers fewer questions than {r} (answer accuracy), with no significant change of the gold "
             "answer's likelihood, on ",
    (0, -1): "{m} lowers the gold answer's likelihood below {r}, with no significant change of answer accuracy, on ",
    (1, -1): "Mixed: {m} answers more questions than {r} but lowers the gold answer's likelihood on ",
    (-1, 1): "Mixed: {m} answers fewer questions than {r} but raises the gold answer's likelihood on ",
    (0, 0): "No significant difference in answer accuracy or the gold answer's likelihood between {m} and {r} on ",
    # answer accuracy not measured (results saved before it existed): the likelihood alone, never "knowledge"
    (None, 1): "{m} raises the gold answer's likelihood over {r} (answer accuracy not measured) on ",
    (None, -1): "{m} lowers the gold answer's likelihood below {r} (answer accuracy not measured) on ",
    (None, 0): "No significant difference in the gold answer's likelihood between {m} and {r} (answer accuracy not "
               "measured) on ",
}


def _detail(c: Call) -> str:
    e = c.effect
    acc = (f"acc {e.acc.em_a:.1f} vs {e.acc.em_b:.1f}, McNemar p = {format_p(e.acc.p)}, Holm {format_p(c.acc_p)}; "
           if e.acc is not None else "acc not measured; ")
    return (f"{e.nll.dataset} ({acc}answer NLL {_nll_phrase(e.nll)}, Holm p = {format_p(c.nll_p)}; "
            f"EM {e.em.em_a:.1f} vs {e.em.em_b:.1f}, McNemar p = {format_p(e.em.p)}, Holm {format_p(c.em_p)})")


def verdict(table: EffectTable | Missing, reference: str = "shift", method: str = "regrad",
            alpha: float = ALPHA) -> str:
    """One paragraph, from the numbers alone: per dataset whether ``method`` is better, worse or not
    distinguishable from ``reference`` in answer accuracy (McNemar) and answer NLL (paired SE) — better on knowledge
    only where the two agree — and where EM moves without accuracy (format only); each test direction-aware and
    Holm-corrected across the datasets at level ``alpha`` (:func:`calls`)."""
    if isinstance(table, Missing):
        return f"No verdict: {table.message}"
    found = calls(table, method, reference, alpha)
    if not found:
        return f"No verdict: no {method} − {reference} pair was evaluated."
    groups: dict[tuple[int, int], list[str]] = {}
    for c in found:
        groups.setdefault((c.acc if c.effect.acc is not None else None, c.nll), []).append(_detail(c))
    parts = [_KNOWLEDGE[k].format(m=method, r=reference) + "; ".join(groups[k]) + "."
             for k in _KNOWLEDGE if k in groups]
    for direction, word in ((1, "higher"), (-1, "lower")):
        fmt = [c.effect.nll.dataset for c in found if c.format_only and c.em == direction]
        if fmt:
            parts.append(f"Format only: {method} has a significantly {word} exact match than {reference} without the "
                         f"same change in answer accuracy on {', '.join(fmt)}: that EM difference is answer format, "
                         "not knowledge.")
    parts.append(f"(Significant: Holm-adjusted p < {alpha:g} across the {len(found)} dataset(s), separately for "
                 "accuracy, NLL and EM; a lower NLL is better; better on knowledge means accuracy and NLL agree.)")
    return " ".join(parts)


def verdicts(table: EffectTable | Missing, pairs: Sequence[tuple[str, str]]) -> str:
    """:func:`verdict` of each pair, one paragraph each (pairs not evaluated are left out)."""
    if isinstance(table, Missing):
        return f"No verdict: {table.message}"
    present = {(e.nll.method_a, e.nll.method_b) for e in table}
    return "\n\n".join(verdict(table, b, a) for a, b in pairs if (a, b) in present)


# --- several seeds of one setting ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Spread:
    """A statistic over seeds: mean, sample standard deviation, min, max, and the values."""

    name: str
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def sd(self) -> float:
        n = len(self.values)
        return math.sqrt(sum((v - self.mean) ** 2 for v in self.values) / (n - 1)) if n > 1 else math.nan

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.sd:.2g} (min {min(self.values):.4g}, max {max(self.values):.4g})"


@dataclass
class SeedTable(MarkdownTable):
    """Per (dataset, statistic): mean ± SD across the runs of several seeds."""

    runs: list[str]
    spreads: list[tuple[str, Spread]]     # (dataset, spread)

    def header(self) -> list[str]:
        return ["dataset", "statistic", f"mean ± SD over {len(self.runs)} seeds", "min", "max"]

    def rows(self) -> list[list[str]]:
        return [[d, s.name, f"{s.mean:.4g} ± {s.sd:.2g}", f"{min(s.values):.4g}", f"{max(s.values):.4g}"]
                for d, s in self.spreads]


def across_seeds(runs: Sequence[str], datasets: Sequence[str],
                 methods: Sequence[str] = ("regrad", "shift", "no_update"), pairs: Sequence[tuple[str, str]] = PAIRS,
                 evaluation: str | None = None) -> SeedTable | Missing:
    """EM and F1 of ``methods`` and the paired NLL differences of ``pairs``, across ``runs`` (one per seed;
    ``evaluation``: the same named evaluation of each)."""
    if len(runs) < 2:
        return Missing(f"runs={list(runs)}: give at least two runs of the same setting with different seeds")
    spreads: list[tuple[str, Spread]] = []
    try:
        summaries = {run: {(s.dataset, s.method): s for s in read_summary(run, datasets, evaluation)} for run in runs}
        for dataset in datasets:
            for method in methods:
                for stat in ("em", "f1"):
                    values = [getattr(summaries[r][(dataset, method)], stat) for r in runs
                              if (dataset, method) in summaries[r]]
                    if len(values) == len(runs):
                        spreads.append((dataset, Spread(f"{method} {stat.upper()}", tuple(values))))
            for a, b in pairs:
                diffs = [paired_nll_differences(r, dataset, a, b, evaluation).mean for r in runs]
                spreads.append((dataset, Spread(f"{a} − {b} answer NLL", tuple(diffs))))
    except FileNotFoundError as e:
        return Missing(str(e))
    return SeedTable(list(runs), spreads)


# --- exact match per group of questions (the probe's relations) ------------------------------------------------

@dataclass
class GroupTable(MarkdownTable):
    """EM of each method per group of questions (e.g. the probe's relations); ``cells[(group, method)]``."""

    groups: list[str]
    methods: list[str]
    cells: dict[tuple[str, str], tuple[float, int]]      # (EM ×100, n)

    def header(self) -> list[str]:
        return ["group", "n", *(f"{m} EM" for m in self.methods)]

    def rows(self) -> list[list[str]]:
        return [[g, str(self.cells[(g, self.methods[0])][1]),
                 *(f"{self.cells[(g, m)][0]:.1f}" if (g, m) in self.cells else "–" for m in self.methods)]
                for g in self.groups]


def em_by_group(run: str, dataset: str, methods: Sequence[str], group_of: dict[str, str] | Missing,
                evaluation: str | None = None) -> GroupTable | Missing:
    """EM ×100 of every method on each group of questions; ``group_of[test_id]`` names a question's group."""
    if isinstance(group_of, Missing):
        return group_of
    present, cells = [], {}
    for method in methods:
        try:
            rows = rows_by_id(run, dataset, method, "prediction", evaluation)
        except FileNotFoundError:
            continue
        present.append(method)
        scores: dict[str, list[float]] = {}
        for tid, r in rows.items():
            if tid in group_of:
                scores.setdefault(group_of[tid], []).append(float(is_right(r)))
        cells.update({(g, method): (100 * sum(v) / len(v), len(v)) for g, v in scores.items()})
    if not present:
        return Missing(f"no predictions of {list(methods)} for {dataset} (05_evaluate writes them)")
    groups = list(dict.fromkeys(group_of[k] for k in sorted(group_of, key=lambda k: int(k) if k.isdigit() else k)
                                if any((group_of[k], m) in cells for m in present)))
    return GroupTable(groups, present, cells)


def probe_relations(run: str, datasets: Sequence[str], data_root: str = "data/sample",
                    split: str = "dev", evaluation: str | None = None) -> GroupTable | Missing:
    """EM per relation of the knowledge-injection probe (the held-out relation shows transfer), every method."""
    from regrad_lib.answering.specs import METHODS
    from regrad_lib.data import probe

    if "probe" not in datasets:
        return Missing("the probe was not among the evaluated datasets")
    try:
        groups = probe.relation_groups(f"{data_root}/probe", split)
    except FileNotFoundError as e:
        return Missing(str(e))
    return em_by_group(run, "probe", METHODS, groups, evaluation)
