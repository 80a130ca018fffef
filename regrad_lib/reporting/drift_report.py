"""Knowledge gained against general ability kept: the drift study's tables and verdict for 06_analyze (no model).

Reads what 05_evaluate wrote with the methods ``cpt`` / ``cpt_rag``: each dataset's CPT stream
(``results/<run>/<dataset>/cpt/drift.json``: one row before the first chunk and one after each), the general set with
its measures at the base and the meta-trained weights (``results/<run>/drift/general_set.json``), every method's EM
(``summary.csv``) and whether ReGrad's persistent weights were verified unchanged (``<method>.metrics.json``).

- :func:`drift_table`: one row per method (and per chunk for CPT): knowledge EM, general-text NLL, general-question
  EM and answer NLL, ‖Δθ‖/‖θ‖ of the persistent change over the stream and from the base model;
- :func:`general_changes`: paired changes of general ability between two sets of persistent weights (per held-out
  passage: NLL difference ± SE; per general question: McNemar on the ones only one answers);
- :func:`verdict`: one paragraph from the paired comparisons (:mod:`regrad_lib.reporting.effects`) and the drift
  numbers, direction-aware: a significant loss reads as a loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from regrad_lib.io import paths, result_files
from regrad_lib.reporting.analysis import MarkdownTable, Missing, read_summary
from regrad_lib.reporting.effects import (
    ALPHA,
    CLEAR_SE,
    Effect,
    EffectTable,
    PairedDifference,
    format_p,
    mcnemar_exact,
    paired_difference,
    paired_em,
    paired_nll_differences,
)

__all__ = ["DriftRow", "describe_change", "drift_table", "general_change", "general_changes", "paired", "verdict",
           "DriftTable", "GeneralChange"]

PAIRS = (("regrad", "cpt"), ("regrad_icl", "cpt_rag"), ("regrad", "rag"))
POINTS = (("closed_book", "base"), ("rag", "base"), ("regrad", "meta"), ("regrad_icl", "meta"))
PER_QUESTION = ("regrad", "regrad_icl", "regrad_online", "shift")      # answer with per-question updates


@dataclass(frozen=True)
class DriftRow:
    """One method (one chunk of CPT) on one dataset: knowledge gained and general ability kept."""
    dataset: str
    method: str
    chunk: int | None            # CPT: chunks injected so far; None: a method without a stream
    documents: int | None
    knowledge_em: float | None   # CPT: on the questions whose documents have arrived; others: on every question
    general_text_nll: float
    general_em: float | None
    general_nll: float | None
    delta_rel: float             # ‖Δθ‖/‖θ‖ over the stream (0 for weights that never change)
    from_base_rel: float         # ‖Δθ‖/‖θ‖ from the base model (meta-training's change for ReGrad)
    persistent: str              # how the persistent weights are known to be what they are
    values: dict                 # the per-passage / per-question general values (paired comparisons)


@dataclass
class DriftTable(MarkdownTable):
    """Every :class:`DriftRow`; iterable; shown inline as a markdown table."""
    entries: list[DriftRow]
    general_n: int
    passages: int

    def __iter__(self):
        return iter(self.entries)

    def header(self) -> list[str]:
        return ["dataset", "method", "chunk", "documents", "knowledge EM", "general text NLL",
                f"general EM (n={self.general_n})", "general answer NLL", "‖Δθ‖/‖θ‖", "from base", "persistent weights"]

    def rows_of(self, dataset: str, method: str) -> list[DriftRow]:
        return [r for r in self.entries if r.dataset == dataset and r.method == method]

    def rows(self) -> list[list[str]]:
        return [[r.dataset, r.method, "–" if r.chunk is None else str(r.chunk),
                 "–" if r.documents is None else str(r.documents), _num(r.knowledge_em, 1), _num(r.general_text_nll, 4),
                 _num(r.general_em, 1), _num(r.general_nll, 3), f"{r.delta_rel:.3g}", f"{r.from_base_rel:.3g}",
                 r.persistent] for r in self.entries]


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _verified(run: str, dataset: str, method: str, evaluation: str | None) -> str:
    file = paths.metrics_file(run, dataset, method, evaluation)
    saved = result_files.read_metrics(file) if file.is_file() else {}
    return "unchanged (sha256, bit for bit)" if saved.get("persistent_unchanged") is True else \
        "not checked (evaluated without cpt)"


def _row(dataset, method, chunk, documents, knowledge, point, delta, from_base, theta, persistent) -> DriftRow:
    values = {k: point.get(k, []) for k in ("general_text_nlls", "general_correct", "general_answer_nlls")}
    return DriftRow(dataset, method, chunk, documents, knowledge, point["general_text_nll"], point.get("general_em"),
                    point.get("general_nll"), delta / theta, from_base / theta, persistent, values)


def drift_table(run: str, datasets: Sequence[str], evaluation: str | None = None) -> DriftTable | Missing:
    """Every dataset with a CPT stream: the fixed-weight methods' points and CPT's rows, chunk by chunk."""
    try:
        general = result_files.read_general_set(run, evaluation)
    except FileNotFoundError as e:
        return Missing(str(e))
    theta, points = general["theta_norm"], general["points"]
    em = {(s.dataset, s.method): s.em for s in read_summary(run, datasets, evaluation)}
    rows: list[DriftRow] = []
    for dataset in datasets:
        try:
            stream = result_files.read_drift(run, dataset, evaluation)
        except FileNotFoundError:
            continue
        for method, name in POINTS:
            if (dataset, method) in em:
                persistent = "base model (no change)" if name == "base" else _verified(run, dataset, method, evaluation)
                rows.append(_row(dataset, method, None, None, em[(dataset, method)], points[name], 0.0,
                                 points[name]["delta_from_base"], theta, persistent))
        for r in stream["drift"]:
            rows.append(_row(dataset, "cpt", r["chunk"], r["documents"], r["knowledge_em"], r, r["delta_norm"],
                             r["delta_from_base"], theta, f"trained ({stream['settings']['cpt']['weights']})"))
        if (dataset, "cpt_rag") in em:
            last = stream["drift"][-1]
            rows.append(_row(dataset, "cpt_rag", last["chunk"], last["documents"], em[(dataset, "cpt_rag")], last,
                             last["delta_norm"], last["delta_from_base"], theta, "trained (as cpt)"))
    if not rows:
        return Missing(f"no CPT stream under {paths.relative(paths.results_dir(run, evaluation))}/<dataset>/cpt/: "
                       "05_evaluate writes one with the methods cpt, cpt_rag")
    return DriftTable(rows, len(points["base"].get("general_correct", [])), len(points["base"]["general_text_nlls"]))


def paired(run: str, datasets: Sequence[str], evaluation: str | None = None) -> EffectTable | Missing:
    """The paired effects (:mod:`regrad_lib.reporting.effects`) of :data:`PAIRS` wherever both methods were
    evaluated."""
    out = [Effect(paired_nll_differences(run, d, a, b, evaluation), paired_em(run, d, a, b, evaluation))
           for d in datasets for a, b in PAIRS
           if all(paths.predictions_file(run, d, m, evaluation).is_file() for m in (a, b))]
    if not out:
        return Missing(f"no dataset has the predictions of both methods of a pair of {list(PAIRS)}: 05_evaluate "
                       "writes them with the methods cpt, cpt_rag (besides regrad, regrad_icl, rag)")
    return EffectTable(out)


# --- paired changes of general ability ------------------------------------------------------------------------

@dataclass(frozen=True)
class GeneralChange:
    """General ability of weights ``a`` against ``b``: the paired held-out text NLL difference and the general
    questions each answers alone (McNemar). ``kind``: ``cpt`` (CPT after its stream − before), ``meta`` (the
    meta-trained weights − the base model) or ``versus`` (CPT after its stream − the meta-trained weights)."""
    dataset: str
    kind: str
    label: str
    text: PairedDifference
    em_a: float | None
    em_b: float | None
    only_a: int
    only_b: int

    @property
    def p(self) -> float:
        return mcnemar_exact(self.only_a, self.only_b)


def general_change(a: DriftRow, b: DriftRow, kind: str, label: str) -> GeneralChange:
    text = paired_difference(dict(enumerate(a.values["general_text_nlls"])),
                             dict(enumerate(b.values["general_text_nlls"])), a.dataset, label, "")
    right_a, right_b = a.values["general_correct"], b.values["general_correct"]
    return GeneralChange(a.dataset, kind, label, text, a.general_em, b.general_em,
                         sum(1 for x, y in zip(right_a, right_b) if x and not y),
                         sum(1 for x, y in zip(right_a, right_b) if y and not x))


def general_changes(table: DriftTable | Missing) -> list[GeneralChange] | Missing:
    """Per dataset: CPT after its last chunk against its start, the meta-trained weights (ReGrad's persistent ones)
    against the base, and CPT's last against ReGrad's."""
    if isinstance(table, Missing):
        return table
    out = []
    for dataset in dict.fromkeys(r.dataset for r in table):
        stream, meta = table.rows_of(dataset, "cpt"), table.rows_of(dataset, "regrad") + \
            table.rows_of(dataset, "regrad_icl")
        last = f"cpt after chunk {stream[-1].chunk}"
        out.append(general_change(stream[-1], stream[0], "cpt", f"{dataset}: {last} − before"))
        if meta:
            base = table.rows_of(dataset, "closed_book") + table.rows_of(dataset, "rag")
            if base:
                out.append(general_change(meta[0], base[0], "meta", f"{dataset}: meta-trained (ReGrad's) − base"))
            out.append(general_change(stream[-1], meta[0], "versus", f"{dataset}: {last} − ReGrad's"))
    return out


def describe_change(c: GeneralChange) -> str:
    em = "" if c.em_a is None else f"; general EM {c.em_a:.1f} vs {c.em_b:.1f} ({c.only_a} / {c.only_b} answered " \
                                   f"by one only, McNemar p = {format_p(c.p)})"
    return f"{c.label}: held-out text NLL {c.text.mean:+.3g} ± {c.text.se:.2g} nats{em}"


# --- the verdict ---------------------------------------------------------------------------------------------

def _compare(e) -> tuple[int, str]:
    """(+1 a better, -1 a worse, 0 not resolved) and the numbers, from EM (McNemar) and answer NLL (2 SE)."""
    em_sig, nll_clear = e.em.p < ALPHA, math.isfinite(e.nll.z) and abs(e.nll.z) > CLEAR_SE
    em_dir = (1 if e.em.difference > 0 else -1) if em_sig and e.em.difference else 0
    nll_dir = (1 if e.nll.mean < 0 else -1) if nll_clear else 0
    numbers = (f"EM {e.em.em_a:.1f} vs {e.em.em_b:.1f} (McNemar p = {format_p(e.em.p)}), "
               f"answer NLL {e.nll.mean:+.3g} ± {e.nll.se:.2g} nats (lower on {e.nll.n_lower}/{e.nll.n})")
    if em_dir and nll_dir and em_dir != nll_dir:
        return 0, numbers + ": EM and answer NLL disagree"
    return (em_dir or nll_dir), numbers


def verdict(paired: EffectTable | Missing, table: DriftTable | Missing,
            changes: list[GeneralChange] | Missing) -> str:
    """The drift study in words, from the numbers alone: each pair (better, worse or not resolved: a significant
    loss is called one) and the drift of CPT's persistent weights against ReGrad's."""
    parts = []
    if isinstance(paired, Missing):
        parts.append(f"No paired comparison: {paired.message}")
    else:
        for e in paired:
            direction, numbers = _compare(e)
            a, b = e.nll.method_a, e.nll.method_b
            said = {1: f"{a} beats {b}", -1: f"{a} is worse than {b} (a significant loss)",
                    0: f"{a} and {b} are not told apart"}[direction]
            parts.append(f"{e.nll.dataset}: {said}: {numbers}.")
    if isinstance(table, Missing) or isinstance(changes, Missing):
        parts.append(f"No drift measures: {(table if isinstance(table, Missing) else changes).message}")
        return " ".join(parts)
    for dataset in dict.fromkeys(r.dataset for r in table):
        last = table.rows_of(dataset, "cpt")[-1]
        by_kind = {c.kind: c for c in changes if c.dataset == dataset}
        parts.append(f"{dataset}: CPT moved its persistent weights by ‖Δθ‖/‖θ‖ = {last.delta_rel:.3g} over "
                     f"{last.chunk} chunks ({last.documents} documents; knowledge EM {_num(last.knowledge_em, 1)}); "
                     f"general ability {_general_direction(by_kind['cpt'])} ({describe_change(by_kind['cpt'])}).")
        regrad = table.rows_of(dataset, "regrad") or table.rows_of(dataset, "regrad_icl")
        if regrad:
            checked = regrad[0].persistent.startswith("unchanged")
            verified = "were verified unchanged, bit for bit," if checked else "were not checked"
            meta = (f"; general ability {_general_direction(by_kind['meta'])} ({describe_change(by_kind['meta'])})"
                    if "meta" in by_kind else "")
            parts.append(f"ReGrad's persistent weights {verified}"
                         " after its whole evaluation: nothing accumulates over the stream. Meta-training moved them "
                         f"from the base model by ‖Δθ‖/‖θ‖ = {regrad[0].from_base_rel:.3g}" + meta + ".")
            if "versus" in by_kind:
                parts.append(f"After the stream, CPT's weights against ReGrad's: general ability "
                             f"{_general_direction(by_kind['versus'], 'lower', 'higher')} "
                             f"({describe_change(by_kind['versus'])}).")
    return " ".join(parts)


def _general_direction(c: GeneralChange, worse: str = "degraded", better: str = "improved") -> str:
    """How general ability moved from b to a: worse (held-out NLL higher beyond 2 SE, or fewer general questions
    answered, McNemar p < 0.05), better (the opposite), mixed, or no significant change."""
    text = (1 if c.text.mean > 0 else -1) if math.isfinite(c.text.z) and abs(c.text.z) > CLEAR_SE else 0
    em = (1 if c.only_b > c.only_a else -1) if c.p < ALPHA and c.only_a != c.only_b else 0
    if text and em and text != em:
        return "mixed (text and questions disagree)"
    direction = text or em
    return {1: worse, -1: better, 0: "showed no significant change"}[direction]
