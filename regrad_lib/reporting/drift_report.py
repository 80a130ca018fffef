"""Knowledge gained against general ability kept: the drift study's tables and verdict for 06_analyze (no model).

Reads what 05_evaluate wrote with the methods ``cpt`` / ``cpt_rag``: each dataset's CPT stream
(``results/<run>/<dataset>/cpt/drift.json``: one row before the first chunk and one after each), the general set with
its measures at the base and the meta-trained weights (``results/<run>/drift/general_set.json``, and at the weights of
``sft`` / ``rag_sft`` where they were measured), every method's scores (``summary.csv``) and whether ReGrad's
persistent weights were verified unchanged (``<method>.metrics.json``).

- :func:`drift_table`: one row per method (and per chunk for CPT): knowledge (answer accuracy, EM, answer NLL),
  general-text NLL, general-question accuracy, EM and answer NLL, ‖Δθ‖ relative to every weight and to the trained
  modules' weights, over the stream and from the base model;
- :func:`general_changes`: paired changes of general ability between two sets of persistent weights (held-out text:
  NLL difference with its SE clustered by article; general questions: answer-NLL difference ± SE, and McNemar on
  accuracy and EM), each NLL test Holm-corrected across the study's family (:func:`holm_calls`);
- :func:`verdict`: one paragraph from these numbers, ReGrad's own persistent weights against the base model first
  (meta-training's cost, the drift ReGrad carries), then CPT's, then the paired comparisons of the methods
  (:func:`regrad_lib.reporting.effects.verdicts`); direction-aware: a significant loss reads as a loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from regrad_lib.io import paths, result_files
from regrad_lib.reporting.analysis import MarkdownTable, Missing, read_summary
from regrad_lib.reporting.effects import (
    ALPHA,
    EffectTable,
    PairedDifference,
    clustered_difference,
    effect_table,
    format_p,
    holm,
    mcnemar_exact,
    nll_p,
    verdicts,
)

__all__ = ["DriftRow", "articles_of", "describe_change", "drift_table", "general_change", "general_changes",
           "holm_calls", "paired", "stream_rows", "verdict", "ChangeCall", "DriftTable", "GeneralChange"]

# the paired comparisons of the study; cpt_rag − rag: a CPT that still reads its prompt is not below rag
PAIRS = (("regrad", "cpt"), ("regrad_icl", "cpt_rag"), ("regrad", "rag"), ("cpt_rag", "rag"))
# methods with fixed persistent weights and the general-set point that measured those weights
POINTS = (("closed_book", "base"), ("rag", "base"), ("sft", "sft"), ("rag_sft", "rag_sft"), ("regrad", "meta"),
          ("regrad_icl", "meta"))
VALUES = ("general_text_nlls", "general_answer_nlls", "general_accurate", "general_correct")


@dataclass(frozen=True)
class DriftRow:
    """One method (one chunk of CPT) on one dataset: knowledge gained and general ability kept."""
    dataset: str
    method: str
    chunk: int | None            # CPT: chunks injected so far; None: a method without a stream
    documents: int | None
    knowledge_acc: float | None  # CPT: on the questions whose documents have arrived; others: on every question
    knowledge_em: float | None
    knowledge_nll: float | None
    general_text_nll: float | None
    general_acc: float | None
    general_em: float | None
    general_nll: float | None
    delta_rel: float | None      # ‖Δθ‖/‖θ‖ over the stream (0 for weights that never change)
    delta_rel_trained: float | None   # the same relative to the trained modules' base weights
    from_base_rel: float | None  # ‖Δθ‖/‖θ‖ from the base model (meta-training's change for ReGrad)
    from_base_rel_trained: float | None
    persistent: str              # how the persistent weights are known to be what they are
    values: dict = field(default_factory=dict)   # per-passage / per-question general values (paired comparisons)


@dataclass
class DriftTable(MarkdownTable):
    """Every :class:`DriftRow`; iterable; shown inline as a markdown table. ``articles``: each held-out passage's
    article (the clusters of the text NLL's SE)."""
    entries: list[DriftRow]
    general_n: int
    passages: int
    articles: list[str] = field(default_factory=list)

    def __iter__(self):
        return iter(self.entries)

    def header(self) -> list[str]:
        return ["dataset", "method", "chunk", "documents", "knowledge acc", "knowledge EM", "knowledge answer NLL",
                f"general text NLL (n={self.passages})", f"general acc (n={self.general_n})", "general EM",
                "general answer NLL", "‖Δθ‖/‖θ‖", "‖Δθ‖/‖θ_trained‖", "from base", "from base (trained)",
                "persistent weights"]

    def rows_of(self, dataset: str, method: str) -> list[DriftRow]:
        return [r for r in self.entries if r.dataset == dataset and r.method == method]

    def rows(self) -> list[list[str]]:
        return [[r.dataset, r.method, _dash(r.chunk), _dash(r.documents), _num(r.knowledge_acc, 1),
                 _num(r.knowledge_em, 1), _num(r.knowledge_nll, 3), _num(r.general_text_nll, 4),
                 _num(r.general_acc, 1), _num(r.general_em, 1), _num(r.general_nll, 3), _sci(r.delta_rel),
                 _sci(r.delta_rel_trained), _sci(r.from_base_rel), _sci(r.from_base_rel_trained), r.persistent]
                for r in self.entries]


def _dash(value) -> str:
    return "–" if value is None else str(value)


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _sci(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3g}"


def articles_of(general: dict) -> list[str]:
    """Each held-out passage's article (title, or id without one): the clusters of the general text's SE."""
    return [p.get("title") or p["id"] for p in general.get("passages", [])]


def _verified(run: str, dataset: str, method: str, evaluation: str | None) -> str:
    file = paths.metrics_file(run, dataset, method, evaluation)
    saved = result_files.read_metrics(file) if file.is_file() else {}
    return "unchanged (sha256, bit for bit)" if saved.get("persistent_unchanged") is True else \
        "not checked (evaluated without cpt)"


def _row(dataset, method, chunk, documents, knowledge: tuple, point: dict, delta, from_base, theta, trained,
         persistent) -> DriftRow:
    acc, em, nll = knowledge
    return DriftRow(dataset, method, chunk, documents, acc, em, nll, point.get("general_text_nll"),
                    point.get("general_acc"), point.get("general_em"), point.get("general_nll"),
                    None if delta is None else delta / theta, None if delta is None or not trained else delta / trained,
                    from_base / theta, from_base / trained if trained else None, persistent,
                    {k: point.get(k, []) for k in VALUES})


def _lora_norm(general: dict) -> float | None:
    return general.get("lora_norm")


def stream_rows(dataset: str, stream: dict, theta: float, method: str = "cpt") -> list[DriftRow]:
    """CPT's rows of one stream file, the chunks measured (a grid's stream: its start and its end)."""
    trained = stream.get("trained_norm")
    weights = stream["settings"]["cpt"]["weights"]
    return [_row(dataset, method, r["chunk"], r["documents"], (r.get("knowledge_acc"), r.get("knowledge_em"),
                                                                r.get("knowledge_nll")), r, r["delta_norm"],
                 r["delta_from_base"], theta, trained, f"trained ({weights})")
            for r in stream["drift"] if "general_text_nll" in r]


def drift_table(run: str, datasets: Sequence[str], evaluation: str | None = None) -> DriftTable | Missing:
    """Every dataset with a CPT stream: the fixed-weight methods' points and CPT's rows, chunk by chunk."""
    try:
        general = result_files.read_general_set(run, evaluation)
    except FileNotFoundError as e:
        return Missing(str(e))
    theta, points, lora_norm = general["theta_norm"], general["points"], _lora_norm(general)
    scores = {(s.dataset, s.method): s for s in read_summary(run, datasets, evaluation)}
    rows: list[DriftRow] = []
    for dataset in datasets:
        try:
            stream = result_files.read_drift(run, dataset, evaluation)
        except FileNotFoundError:
            continue
        for method, name in POINTS:
            if (dataset, method) in scores and name in points:
                s = scores[(dataset, method)]
                persistent = "base model (no change)" if name == "base" else \
                    _verified(run, dataset, method, evaluation) if name == "meta" else f"fine-tuned ({name})"
                rows.append(_row(dataset, method, None, None, (_finite(s.acc), s.em, s.nll), points[name], 0.0,
                                 points[name]["delta_from_base"], theta, lora_norm, persistent))
        rows += stream_rows(dataset, stream, theta)
        if (dataset, "cpt_rag") in scores:
            last = rows[-1]
            s = scores[(dataset, "cpt_rag")]
            rows.append(DriftRow(dataset, "cpt_rag", last.chunk, last.documents, _finite(s.acc), s.em, s.nll,
                                 last.general_text_nll, last.general_acc, last.general_em, last.general_nll,
                                 last.delta_rel, last.delta_rel_trained, last.from_base_rel,
                                 last.from_base_rel_trained, "trained (as cpt)", last.values))
    if not rows:
        return Missing(f"no CPT stream under {paths.relative(paths.results_dir(run, evaluation))}/<dataset>/cpt/: "
                       "05_evaluate writes one with the methods cpt, cpt_rag")
    return DriftTable(rows, len(points["base"].get("general_answer_nlls", [])),
                      len(points["base"]["general_text_nlls"]), articles_of(general))


def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def paired(run: str, datasets: Sequence[str], evaluation: str | None = None) -> EffectTable | Missing:
    """The paired effects (:mod:`regrad_lib.reporting.effects`: answer NLL, acc, EM) of :data:`PAIRS` wherever both
    methods were evaluated."""
    return effect_table(run, datasets, PAIRS, evaluation)


# --- paired changes of general ability ------------------------------------------------------------------------

@dataclass(frozen=True)
class GeneralChange:
    """General ability of weights ``a`` against ``b``: the paired held-out text NLL difference (SE clustered by
    article), the paired general answer-NLL difference, and the general questions each answers alone by accuracy
    and by EM (McNemar). ``kind``: ``cpt`` (CPT after its stream − before), ``meta`` (the meta-trained weights − the
    base model), ``versus`` (CPT after its stream − the meta-trained weights) or ``from_base`` (CPT − the base)."""
    dataset: str
    kind: str
    label: str
    text: PairedDifference
    answer: PairedDifference | None
    acc_a: float | None
    acc_b: float | None
    acc_only: tuple[int, int]
    em_a: float | None
    em_b: float | None
    em_only: tuple[int, int]

    @property
    def acc_p(self) -> float:
        return mcnemar_exact(*self.acc_only)

    @property
    def em_p(self) -> float:
        return mcnemar_exact(*self.em_only)


def _only(a: Sequence, b: Sequence) -> tuple[int, int]:
    return sum(1 for x, y in zip(a, b) if x and not y), sum(1 for x, y in zip(a, b) if y and not x)


def general_change(a: DriftRow, b: DriftRow, kind: str, label: str,
                   articles: Sequence[str] | None = None) -> GeneralChange:
    ta, tb = a.values["general_text_nlls"], b.values["general_text_nlls"]
    clusters = list(articles) if articles and len(articles) == len(ta) else list(range(len(ta)))
    text = clustered_difference(ta, tb, clusters, a.dataset, label, "")
    na, nb = a.values.get("general_answer_nlls", []), b.values.get("general_answer_nlls", [])
    answer = clustered_difference(na, nb, list(range(len(na))), a.dataset, label, "") if \
        any(v is not None for v in na) and any(v is not None for v in nb) else None
    return GeneralChange(a.dataset, kind, label, text, answer, a.general_acc, b.general_acc,
                         _only(a.values.get("general_accurate", []), b.values.get("general_accurate", [])),
                         a.general_em, b.general_em,
                         _only(a.values.get("general_correct", []), b.values.get("general_correct", [])))


def general_changes(table: DriftTable | Missing) -> list[GeneralChange] | Missing:
    """Per dataset: the meta-trained weights (ReGrad's persistent ones) against the base, CPT after its last chunk
    against its start and against the base, and CPT's last against ReGrad's."""
    if isinstance(table, Missing):
        return table
    out = []
    for dataset in dict.fromkeys(r.dataset for r in table):
        stream = table.rows_of(dataset, "cpt")
        meta = table.rows_of(dataset, "regrad") + table.rows_of(dataset, "regrad_icl")
        base = table.rows_of(dataset, "closed_book") + table.rows_of(dataset, "rag")
        last = f"cpt after chunk {stream[-1].chunk}"
        if meta and base:
            out.append(general_change(meta[0], base[0], "meta", f"{dataset}: meta-trained (ReGrad's) − base",
                                      table.articles))
        out.append(general_change(stream[-1], stream[0], "cpt", f"{dataset}: {last} − before", table.articles))
        if base and stream[0].from_base_rel:            # a stream that did not start at the base model
            out.append(general_change(stream[-1], base[0], "from_base", f"{dataset}: {last} − base", table.articles))
        if meta:
            out.append(general_change(stream[-1], meta[0], "versus", f"{dataset}: {last} − ReGrad's", table.articles))
    return out


@dataclass(frozen=True)
class ChangeCall:
    """The direction of a general change's two NLL measures (+1 worse, -1 better, 0 not significant) with their
    Holm-adjusted p-values (one family: every text and answer test of the study)."""
    change: GeneralChange
    text: int
    answer: int
    text_p: float
    answer_p: float

    @property
    def direction(self) -> str:
        found = {d for d in (self.text, self.answer) if d}
        if found == {1}:
            return "degraded"
        if found == {-1}:
            return "improved"
        return "mixed (text and questions disagree)" if found else "showed no significant change"


def holm_calls(changes: Sequence[GeneralChange], alpha: float = ALPHA) -> list[ChangeCall]:
    """Each change's text and answer NLL tested (normal p of mean / SE) and Holm-corrected together."""
    tests = [c.text for c in changes] + [c.answer for c in changes]
    adjusted = holm([nll_p(t) if t is not None else 1.0 for t in tests])
    n = len(changes)

    def direction(t: PairedDifference | None, p: float) -> int:
        return 0 if t is None or not p < alpha or not t.mean else (1 if t.mean > 0 else -1)
    return [ChangeCall(c, direction(c.text, adjusted[i]), direction(c.answer, adjusted[n + i]), adjusted[i],
                       adjusted[n + i]) for i, c in enumerate(changes)]


def describe_change(c: GeneralChange, call: ChangeCall | None = None) -> str:
    holm_t = "" if call is None else f", Holm p = {format_p(call.text_p)}"
    holm_a = "" if call is None else f", Holm p = {format_p(call.answer_p)}"
    answer = "" if c.answer is None else f"; general answer NLL {c.answer.mean:+.3g} ± {c.answer.se:.2g}{holm_a}"
    acc = "" if c.acc_a is None else (f"; general acc {c.acc_a:.1f} vs {c.acc_b:.1f} ({c.acc_only[0]} / "
                                      f"{c.acc_only[1]} by one only, McNemar p = {format_p(c.acc_p)})")
    em = "" if c.em_a is None else f"; EM {c.em_a:.1f} vs {c.em_b:.1f} (McNemar p = {format_p(c.em_p)})"
    return f"{c.label}: held-out text NLL {c.text.mean:+.3g} ± {c.text.se:.2g} nats{holm_t}{answer}{acc}{em}"


# --- the verdict ---------------------------------------------------------------------------------------------

def verdict(paired_effects: EffectTable | Missing, table: DriftTable | Missing,
            changes: list[GeneralChange] | Missing) -> str:
    """The drift study in words, from the numbers alone: ReGrad's persistent weights against the base model first,
    then CPT's drift (over its stream, from the base, against ReGrad's), then each paired comparison."""
    parts = []
    if isinstance(table, Missing) or isinstance(changes, Missing):
        parts.append(f"No drift measures: {(table if isinstance(table, Missing) else changes).message}")
    else:
        calls = {id(c.change): c for c in holm_calls(changes)}
        said_meta = False
        for dataset in dict.fromkeys(r.dataset for r in table):
            by_kind = {c.kind: c for c in changes if c.dataset == dataset}
            regrad = table.rows_of(dataset, "regrad") or table.rows_of(dataset, "regrad_icl")
            if regrad and "meta" in by_kind and not said_meta:
                said_meta = True       # the meta-trained weights are the same for every dataset
                call = calls[id(by_kind["meta"])]
                checked = regrad[0].persistent.startswith("unchanged")
                verified = "verified unchanged, bit for bit, after its whole evaluation" if checked else "not checked"
                parts.append(f"ReGrad's persistent weights (the meta-trained LoRA; {verified}) "
                             f"carry meta-training's drift from the base model: "
                             f"‖Δθ‖/‖θ‖ = {regrad[0].from_base_rel:.3g} "
                             f"({_sci(regrad[0].from_base_rel_trained)} of the adapted modules' weights); general "
                             f"ability {call.direction} ({describe_change(by_kind['meta'], call)}).")
            last = table.rows_of(dataset, "cpt")[-1]
            call = calls[id(by_kind["cpt"])]
            parts.append(f"{dataset}: CPT moved its persistent weights by ‖Δθ‖/‖θ‖ = {last.delta_rel:.3g} "
                         f"({_sci(last.delta_rel_trained)} of the trained modules' weights) over {last.chunk} chunks "
                         f"({last.documents} documents; knowledge acc {_num(last.knowledge_acc, 1)}, EM "
                         f"{_num(last.knowledge_em, 1)}); general ability {call.direction} "
                         f"({describe_change(by_kind['cpt'], call)}).")
            for kind, text in (("from_base", "against the base model"), ("versus", "against ReGrad's weights")):
                if kind in by_kind:
                    call = calls[id(by_kind[kind])]
                    parts.append(f"After the stream, CPT's weights {text}: general ability {call.direction} "
                                 f"({describe_change(by_kind[kind], call)}).")
        parts.append(f"(General ability: held-out text NLL with its SE clustered by article and general answer NLL "
                     f"± SE, each tested two-sided and Holm-corrected across the {2 * len(changes)} tests above at "
                     f"p < {ALPHA:g}; a higher NLL is worse.)")
    if isinstance(paired_effects, Missing):
        parts.append(f"No paired comparison: {paired_effects.message}")
    else:
        parts.append(verdicts(paired_effects, PAIRS))
    return " ".join(parts)
