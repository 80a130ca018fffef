"""The knowledge-against-drift frontier (06_analyze, no model): knowledge injected (answer accuracy and answer NLL on
the injected questions) against general ability kept (the held-out text's and the general questions' answer NLL,
each against the base model), one point per CPT setting and chunk, and ReGrad's, regrad_icl's, RAG's and rag_sft's
points; with the verdict that answers the paper's question as far as the numbers allow: **at equal drift, does ReGrad
inject more than CPT?**

CPT's settings are the named evaluation ``<evaluation>`` (05_evaluate with cpt / cpt_rag) and its *arms*, the
evaluations ``<evaluation>-<arm>`` beside it (other weights, objective, seeds, the one-chunk upper bound; written by
``python -m experiments.cpt_study``), all measured on the same general set. A CPT point after its last chunk answers
every question (the ``cpt`` method's rows; ``cpt_rag`` with the passages in the prompt); after an earlier chunk, the
questions whose documents have arrived.

At equal drift: a CPT point is *within ReGrad's drift* when neither of its drifts from the base model exceeds the
meta-trained weights' own (floored at 0, as the settings grid's ceiling, :mod:`regrad_lib.cpt.selection`). Per
dataset and family (question only: regrad against cpt; passages in the prompt: regrad_icl against cpt_rag), ReGrad
is paired with the most knowledgeable CPT point within its drift after a whole stream (or, when none is, with the
least-drifting one) on the same questions: answer accuracy by McNemar, answer NLL by its paired SE, each family
Holm-corrected across the datasets (:func:`regrad_lib.reporting.effects.calls`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from regrad_lib.io import paths, result_files
from regrad_lib.reporting import drift_report
from regrad_lib.reporting.analysis import MarkdownTable, Missing
from regrad_lib.reporting.effects import (
    ALPHA,
    EffectTable,
    PairedDifference,
    calls,
    clustered_difference,
    format_p,
    is_right,
    paired_rows,
    rows_by_id,
)

__all__ = ["FAMILIES", "FIXED", "FrontierPoint", "FrontierTable", "Matched", "arms", "equal_drift_effects", "frontier",
           "matches", "setting_of", "verdict", "within"]

FIXED = (("closed_book", "base"), ("rag", "base"), ("rag_sft", "rag_sft"), ("regrad", "meta"), ("regrad_icl", "meta"))
FAMILIES = (("regrad", "cpt"), ("regrad_icl", "cpt_rag"))


@dataclass(frozen=True)
class FrontierPoint:
    """One set of persistent weights on one dataset: the knowledge its method injects and its drift from base."""
    dataset: str
    method: str                      # cpt, cpt_rag, or a method with fixed weights
    setting: str                     # CPT: "lora-replay lr 0.001 ×2, seed 42" (one chunk: "…, one chunk"); else ""
    evaluation: str | None
    chunk: int | None
    chunks: int | None
    knowledge_acc: float | None
    knowledge_nll: float | None
    knowledge_n: int
    text: PairedDifference           # general-text NLL − the base model's (SE clustered by article)
    answer: PairedDifference | None  # general answer NLL − the base model's
    general_acc: float | None

    @property
    def final(self) -> bool:
        """Every question answered: a fixed method, or CPT after its stream's last chunk."""
        return self.chunk is None or self.chunk == self.chunks

    @property
    def label(self) -> str:
        if not self.setting:
            return self.method
        return f"{self.method} {self.setting}" + ("" if self.final else f", chunk {self.chunk}")


@dataclass
class FrontierTable(MarkdownTable):
    points: list[FrontierPoint]
    base: dict                       # the base model's general measures

    def __iter__(self):
        return iter(self.points)

    def header(self) -> list[str]:
        return ["dataset", "point", "chunk", "knowledge acc", "knowledge answer NLL", "n", "Δ text NLL ± SE",
                "Δ general answer NLL ± SE", "general acc"]

    def rows(self) -> list[list[str]]:
        return [[p.dataset, p.label, "–" if p.chunk is None else f"{p.chunk}/{p.chunks}", _num(p.knowledge_acc, 1),
                 _num(p.knowledge_nll, 3), str(p.knowledge_n), _diff(p.text, 4), _diff(p.answer, 3),
                 _num(p.general_acc, 1)] for p in self.points]


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _diff(d: PairedDifference | None, digits: int) -> str:
    return "–" if d is None else f"{d.mean:+.{digits}f} ± {d.se:.{digits}f}"


def arms(run: str, evaluation: str) -> list[str]:
    """The evaluations ``<evaluation>-*`` beside ``evaluation`` that hold a CPT stream (sorted)."""
    folder = paths.results_dir(run, evaluation).parent
    return sorted(p.name for p in folder.glob(f"{evaluation}-*") if p.is_dir()
                  and any(paths.drift_file(run, d.name, p.name).is_file() for d in p.iterdir() if d.is_dir()))


def setting_of(stream: dict) -> str:
    s = stream["settings"]["cpt"]
    return (f"{s['weights']}-{s.get('objective', 'raw')} lr {s['learning_rate']:g} ×{s['epochs_per_chunk']}, "
            f"seed {s['seed']}" + (", one chunk" if s["chunks"] == 1 else ""))


def _knowledge(rows: dict[str, dict]) -> tuple[float | None, float | None, int]:
    if not rows:
        return None, None, 0
    nll = [float(r["answer_nll"]) for r in rows.values() if isinstance(r.get("answer_nll"), (int, float))
           and math.isfinite(r["answer_nll"])]
    return (100.0 * sum(is_right(r, "acc") for r in rows.values()) / len(rows), sum(nll) / len(nll) if nll else None,
            len(rows))


def _changes(point: dict, base: dict, articles: Sequence[str], dataset: str, label: str):
    text = clustered_difference(point["general_text_nlls"], base["general_text_nlls"], list(articles), dataset, label,
                                "base")
    ans = point.get("general_answer_nlls", [])
    answer = clustered_difference(ans, base["general_answer_nlls"], list(range(len(ans))), dataset, label, "base") \
        if any(v is not None for v in ans) else None
    return text, answer


def frontier(run: str, datasets: Sequence[str], evaluation: str | None = None) -> FrontierTable | Missing:
    """Every point of the frontier: the fixed-weight methods of ``evaluation`` and every CPT setting and chunk of it
    and of its arms (those measured on another general set are left out)."""
    try:
        general = result_files.read_general_set(run, evaluation)
    except FileNotFoundError as e:
        return Missing(str(e))
    base, articles = general["points"]["base"], drift_report.articles_of(general)
    found: list[FrontierPoint] = []
    names = [evaluation] + (arms(run, evaluation) if evaluation else [])
    for dataset in datasets:
        for method, name in FIXED:
            if name in general["points"] and paths.predictions_file(run, dataset, method, evaluation).is_file():
                point = general["points"][name]
                acc, nll, n = _knowledge(rows_by_id(run, dataset, method, "prediction", evaluation))
                found.append(FrontierPoint(dataset, method, "", evaluation, None, None, acc, nll, n,
                                           *_changes(point, base, articles, dataset, method), point.get("general_acc")))
        for name in names:
            try:
                stream = result_files.read_drift(run, dataset, name)
                if name != evaluation and result_files.read_general_set(run, name)["settings"] != general["settings"]:
                    continue
            except FileNotFoundError:
                continue
            setting, chunks = setting_of(stream), stream["settings"]["cpt"]["chunks"]
            for r in stream["drift"]:
                if r["chunk"] == 0 or "general_text_nll" not in r:
                    continue
                changes = _changes(r, base, articles, dataset, setting)
                found.append(FrontierPoint(dataset, "cpt", setting, name, r["chunk"], chunks, r["knowledge_acc"],
                                           r["knowledge_nll"], r["questions"], *changes, r.get("general_acc")))
                if r["chunk"] == chunks and paths.predictions_file(run, dataset, "cpt_rag", name).is_file():
                    acc, nll, n = _knowledge(rows_by_id(run, dataset, "cpt_rag", "prediction", name))
                    found.append(FrontierPoint(dataset, "cpt_rag", setting, name, r["chunk"], chunks, acc, nll, n,
                                               *changes, r.get("general_acc")))
    if not any(p.method in ("cpt", "cpt_rag") for p in found):
        return Missing(f"no CPT stream under {paths.relative(paths.results_dir(run, evaluation))}: 05_evaluate "
                       "writes one with the methods cpt, cpt_rag")
    return FrontierTable(found, base)


# --- at equal drift ------------------------------------------------------------------------------------------

def within(point: FrontierPoint, reference: FrontierPoint) -> bool:
    """Whether ``point`` drifts no more than ``reference`` on either measure (the reference's drift floored at 0)."""
    answer_ok = point.answer is None or reference.answer is None or \
        point.answer.mean <= max(reference.answer.mean, 0.0)
    return point.text.mean <= max(reference.text.mean, 0.0) and answer_ok


def _drift_excess(point: FrontierPoint, reference: FrontierPoint) -> float:
    answer = 0.0 if point.answer is None or reference.answer is None else \
        point.answer.mean - max(reference.answer.mean, 0.0)
    return max(point.text.mean - max(reference.text.mean, 0.0), answer)


@dataclass(frozen=True)
class Matched:
    """ReGrad's point, the CPT point it is paired with and how that one was found."""
    regrad: FrontierPoint
    cpt: FrontierPoint
    within: bool            # the CPT point drifts no more than ReGrad's weights (else: the least-drifting CPT)
    candidates: int         # CPT points after a whole stream in this family


def matches(table: FrontierTable) -> list[Matched]:
    """Per dataset and family: ReGrad's point and the CPT point it is compared with at equal drift."""
    out = []
    for dataset in dict.fromkeys(p.dataset for p in table):
        for method, cpt in FAMILIES:
            regrad = next((p for p in table if p.dataset == dataset and p.method == method), None)
            pool = [p for p in table if p.dataset == dataset and p.method == cpt and p.final]
            if regrad is None or not pool:
                continue
            inside = [p for p in pool if within(p, regrad)]
            if inside:
                best = max(inside, key=lambda p: (p.knowledge_acc or 0.0, -(p.knowledge_nll or math.inf)))
            else:
                best = min(pool, key=lambda p: (_drift_excess(p, regrad), -(p.knowledge_acc or 0.0)))
            out.append(Matched(regrad, best, bool(inside), len(pool)))
    return out


def equal_drift_effects(run: str, found: list[Matched]) -> EffectTable:
    """ReGrad − the matched CPT point, paired on the same questions (answer NLL, acc, EM); the CPT side named by
    its method so that :func:`effects.calls` corrects each family across the datasets."""
    out = []
    for m in found:
        a = rows_by_id(run, m.regrad.dataset, m.regrad.method, "prediction", m.regrad.evaluation)
        b = rows_by_id(run, m.cpt.dataset, m.cpt.method, "prediction", m.cpt.evaluation)
        out.append(paired_rows(a, b, m.regrad.dataset, m.regrad.method, m.cpt.method))
    return EffectTable(out)


def verdict(run: str, table: FrontierTable | Missing) -> str:
    """The answer to "at equal drift, does ReGrad inject more than CPT?", per dataset and family, from the numbers."""
    if isinstance(table, Missing):
        return f"No frontier: {table.message}"
    found = matches(table)
    if not found:
        return "No frontier verdict: no dataset has both ReGrad's point and a CPT stream that ended."
    effects = equal_drift_effects(run, found)
    decided = {(c.effect.nll.dataset, c.effect.nll.method_a): c
               for method, cpt in FAMILIES for c in calls(effects, method, cpt)}
    parts = []
    for m in found:
        c = decided[(m.regrad.dataset, m.regrad.method)]
        e, r, k = c.effect, m.regrad, m.cpt
        numbers = (f"acc {e.acc.em_a:.1f} vs {e.acc.em_b:.1f} (McNemar p = {format_p(e.acc.p)}, "
                   f"Holm {format_p(c.acc_p)}), answer NLL {e.nll.mean:+.3g} ± {e.nll.se:.2g} nats "
                   f"(Holm p = {format_p(c.nll_p)}), n = {e.nll.n}")
        drift = (f"ReGrad's drift from base: text {r.text.mean:+.4f} ± {r.text.se:.4f}, answer "
                 f"{_diff(r.answer, 3)}; {k.label}: text {k.text.mean:+.4f} ± {k.text.se:.4f}, answer "
                 f"{_diff(k.answer, 3)}")
        outcome = {1: "yes: ReGrad injects more (answer accuracy and answer NLL both better)",
                   -1: "no: CPT injects more (answer accuracy and answer NLL both better)",
                   0: "not resolved: accuracy and answer NLL do not both differ significantly"}[c.knowledge]
        if m.within:
            head = (f"{r.dataset}, {r.method} against {k.method} at equal drift — {outcome}; the CPT point is the "
                    f"most knowledgeable of the {m.candidates} whole streams within ReGrad's drift ({k.label})")
        else:
            head = (f"{r.dataset}, {r.method} against {k.method}: none of the {m.candidates} whole CPT streams "
                    f"stays within ReGrad's drift, so equal drift is not observed; against the least-drifting one "
                    f"({k.label}, {_drift_excess(k, r):+.3g} nats over ReGrad's) — {outcome}")
        parts.append(f"{head}: {numbers}. {drift}.")
    parts.append(f"(Within ReGrad's drift: neither general-text NLL nor general answer NLL rises from the base model "
                 f"by more than the meta-trained weights' own rise, floored at 0; significant: Holm-adjusted p < "
                 f"{ALPHA:g} across the datasets of each family.)")
    return " ".join(parts)
