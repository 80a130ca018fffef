"""The results figures of 05 and 06 (scores, sweeps, paired effects, answer tokens): each function takes tidy data and
returns a matplotlib Figure. House style and saving (``save_figure``, ``publish``) are
:mod:`regrad_lib.reporting.figure_style`; meta-training's figures :mod:`regrad_lib.reporting.training_plots`, the
bank's :mod:`regrad_lib.reporting.bank_plots`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import matplotlib
from matplotlib.figure import Figure

from regrad_lib.answering.specs import METHODS
from regrad_lib.reporting.analysis import Score, ScoreTable
from regrad_lib.reporting.effects import PairedDifference
from regrad_lib.reporting.figure_style import (
    finite,
    new_figure,
    num,
    styled,
)

__all__ = ["f1_bars", "gamma_sweep", "group_em", "histogram", "knowledge_vs_general", "mixed_sweep",
           "paired_differences", "score_table", "token_probabilities", "topk_sweep", "accuracy_bars", "cpt_frontier"]


@styled
def group_em(table) -> Figure:
    """EM of each method per group of questions (an :class:`effects.GroupTable`), grouped bars."""
    fig = new_figure(max(5.0, 0.9 * len(table.groups) + 2), 3.4)
    ax = fig.subplots()
    width = 0.8 / max(1, len(table.methods))
    for j, method in enumerate(table.methods):
        xs = [i + (j - (len(table.methods) - 1) / 2) * width for i in range(len(table.groups))]
        ax.bar(xs, [table.cells.get((g, method), (math.nan, 0))[0] for g in table.groups], width,
               color=f"C{j % 10}", label=method)
    ax.set_xticks(range(len(table.groups)), table.groups, rotation=20, ha="right")
    ax.set_ylabel("EM (×100)")
    ax.set_title("Exact match per group of questions")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", ncol=2)
    return fig


@styled
def histogram(values: Iterable[float], title: str, xlabel: str, bins: int = 30) -> Figure:
    """A plain histogram of finite ``values``."""
    vals = [float(v) for v in values if finite(v)]
    fig = new_figure(5.0, 3.2)
    ax = fig.subplots()
    if vals:
        ax.hist(vals, bins=bins, color="C0", edgecolor="white", linewidth=0.5)
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.grid(axis="y", alpha=0.3)
    return fig


@styled
def score_table(table: ScoreTable) -> Figure:
    """The datasets × methods acc/EM/F1 table drawn as a figure (for the PNG; notebooks also show it as HTML)."""
    header, rows = table.header(), table.rows() or [["(no rows)"] + [""] * (len(table.header()) - 1)]
    fig = new_figure(max(4.0, 0.85 * len(header) + 1.0), 0.35 * (len(rows) + 1) + 0.6)
    ax = fig.subplots()
    ax.axis("off")
    t = ax.table(cellText=rows, colLabels=[h.replace(" ", "\n") for h in header], loc="center", cellLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.scale(1.0, 1.5)
    t.auto_set_column_width([0])  # dataset names are longer than the numbers
    ax.set_title("answer accuracy / EM / F1 (×100) by dataset and method")
    return fig


def accuracy_bars(rows: Sequence[Score]) -> Figure:
    """:func:`f1_bars` of answer accuracy (a gold answer contained: robust to the answer's format)."""
    return f1_bars(rows, "acc")


@styled
def f1_bars(rows: Sequence[Score], metric: str = "f1") -> Figure:
    """Grouped bars: one group per dataset, one bar per method (``metric``: f1, em or acc)."""
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    methods = [m for m in METHODS if any(r.method == m for r in rows)] + \
        list(dict.fromkeys(r.method for r in rows if r.method not in METHODS))
    value = {(r.dataset, r.method): getattr(r, metric) for r in rows}
    fig = new_figure(max(5.0, 1.2 * len(datasets) * max(1, len(methods)) / 3 + 2), 3.6)
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(datasets))]
        ax.bar(xs, [value.get((d, m), math.nan) for d in datasets], width, label=m, color=f"C{j % 10}")
    ax.set_xticks(range(len(datasets)), datasets)
    name = {"acc": "answer accuracy"}.get(metric, metric.upper())
    ax.set_title(f"{name} by dataset and method")
    ax.set_ylabel(f"{name} (×100)")
    ax.set_xlabel("dataset")
    ax.grid(axis="y", alpha=0.3)
    if methods:
        fig.legend(ncols=min(4, len(methods)), loc="outside lower center", frameon=False)
    return fig


@styled
def sweep_curve(rows: Sequence[Score], vary: str = "gamma", metric: str = "f1") -> Figure:
    """``metric`` (F1 or EM, left) and the gold answer's NLL (right) against ``vary`` (gamma, topk or mixed), one
    line per dataset (rows from :func:`analysis.sweep`): an update that overshoots shows as F1 falling while the NLL
    climbs."""
    label = {"f1": "F1", "em": "EM"}[metric]
    fig = new_figure(8.4, 3.4)
    ax, nll = fig.subplots(1, 2)
    for i, d in enumerate(dict.fromkeys(r.dataset for r in rows)):
        pts = sorted((getattr(r, vary), getattr(r, metric), r.nll) for r in rows if r.dataset == d)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, lw=1, color=f"C{i % 10}", label=d)
        nll.plot([p[0] for p in pts], [p[2] for p in pts], "o-", ms=3, lw=1, color=f"C{i % 10}", label=d)
    methods = sorted({r.method for r in rows})
    ax.set_title(f"{label} vs {vary} ({', '.join(methods)})")
    ax.set_ylabel(f"{label} (×100)")
    nll.set_title(f"Gold answer NLL vs {vary}")
    nll.set_ylabel("mean answer NLL (nats)")
    for a in (ax, nll):
        a.set_xlabel({"mixed": "share of top-k replaced by another question's passages"}.get(vary, vary))
        a.grid(alpha=0.3)
    if rows:
        ax.legend(loc="best")
    return fig


def gamma_sweep(rows: Sequence[Score]) -> Figure:
    """F1 vs gamma for regrad, one line per dataset."""
    return sweep_curve(rows, "gamma")


def topk_sweep(rows: Sequence[Score]) -> Figure:
    """F1 vs top-k for regrad, one line per dataset."""
    return sweep_curve(rows, "topk")


def mixed_sweep(rows: Sequence[Score]) -> Figure:
    """EM and answer NLL of regrad against the share of each question's top-k replaced by the next question's
    passages (the mixed-documents ablation), one line per dataset."""
    return sweep_curve(rows, "mixed", metric="em")


@styled
def paired_differences(diffs: Iterable[PairedDifference]) -> Figure:
    """Mean paired answer-NLL difference ± SE per dataset, one bar per pair, share lower annotated (``diffs``:
    paired differences, or the effects of an :class:`effects.EffectTable`)."""
    diffs = [getattr(d, "nll", d) for d in diffs]
    datasets = list(dict.fromkeys(d.dataset for d in diffs))
    pairs = list(dict.fromkeys(d.label for d in diffs))
    by = {(d.dataset, d.label): d for d in diffs}
    fig = new_figure(max(5.0, 1.3 * len(datasets) + 2.5), 3.8)
    ax = fig.subplots()
    width = 0.8 / max(1, len(pairs))
    labelled: set[str] = set()
    for j, p in enumerate(pairs):
        for i, ds in enumerate(datasets):
            d = by.get((ds, p))
            if d is None:
                continue
            x = i + (j - (len(pairs) - 1) / 2) * width
            ax.bar([x], [d.mean], width, yerr=[0 if math.isnan(d.se) else d.se], capsize=3,
                   color=f"C{j % 10}", label=None if p in labelled else p)
            labelled.add(p)
            ax.text(x, 0.98, f"{100 * d.share_lower:.0f}% lower\nn={d.n}", transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=7)  # a row along the top, clear of bars and error bars
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(datasets)), datasets)
    fig.suptitle("Paired answer-NLL difference (below 0: the first method is lower)")  # clear of a 1e-5 multiplier
    ax.set_ylabel("mean Δ NLL ± SE (nats)")
    ax.set_xlabel("dataset")
    ax.margins(y=0.35)
    ax.grid(axis="y", alpha=0.3)
    if pairs:
        fig.legend(ncols=len(pairs), loc="outside lower center", frameon=False)
    return fig


@styled
def token_probabilities(tokens: Sequence[str], series: dict[str, Sequence[float]], title: str = "") -> Figure:
    """One group of bars per answer token: its probability under each weight set (e.g. before / after)."""
    fig = new_figure(max(4.0, min(12.0, 0.55 * len(tokens) + 2)), 3.2)
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    for j, (label, values) in enumerate(series.items()):
        ax.bar([i + (j - (len(series) - 1) / 2) * width for i in range(len(tokens))], list(values), width,
               label=label, color=f"C{j % 10}")
    labels = [repr(t)[1:-1].replace(" ", "␣") for t in tokens]        # spaces and newlines made visible
    ax.set_xticks(range(len(tokens)), labels, rotation=45 if len(tokens) > 8 else 0)
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("probability")
    ax.set_xlabel("answer token (␣ = space)")
    ax.set_title(title or "Answer-token probabilities")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncols=max(1, len(series)), frameon=False)
    return fig


@styled
def knowledge_vs_general(table) -> Figure:
    """Knowledge gained against general ability kept (a :class:`drift_report.DriftTable`), one row of panels per
    dataset: knowledge accuracy against the held-out text NLL and against the general questions' answer NLL (CPT's
    curve chunk by chunk, numbered, from the closed-book point when it started from the base model; every other
    method a point), and ‖Δθ‖/‖θ‖ of the persistent weights per chunk."""
    datasets = list(dict.fromkeys(r.dataset for r in table))
    fig = new_figure(12.0, 3.4 * len(datasets) + 0.4)
    axes = fig.subplots(len(datasets), 3, squeeze=False)
    colour = {m: f"C{i % 10}" for i, m in enumerate(METHODS)}
    for row, dataset in zip(axes, datasets):
        rows = [r for r in table if r.dataset == dataset]
        stream = [r for r in rows if r.method == "cpt"]
        start = next((r.knowledge_acc for r in rows if r.method == "closed_book"), math.nan)
        xs = [(start if r.chunk == 0 and not r.from_base_rel else math.nan) if r.knowledge_acc is None
              else r.knowledge_acc for r in stream]
        for ax, field, label in ((row[0], "general_text_nll", "held-out text NLL (nats; lower keeps more)"),
                                 (row[1], "general_nll", "general answer NLL (nats; lower keeps more)")):
            ys = [num(getattr(r, field)) for r in stream]
            ax.plot(xs, ys, "o-", ms=4, lw=1.2, color=colour["cpt"], label="cpt (per chunk)")
            for x, y, r in zip(xs, ys, stream):
                ax.annotate(str(r.chunk), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            for r in rows:
                if r.method != "cpt":
                    ax.plot([num(r.knowledge_acc)], [num(getattr(r, field))], "s" if r.method.startswith("regrad")
                            else "D", ms=7, color=colour.get(r.method, "black"), label=r.method, ls="none")
            ax.set_xlabel("knowledge acc (questions whose documents arrived)")
            ax.set_ylabel(label)
            ax.set_title(f"{dataset}: knowledge gained vs general ability kept", fontsize=9)
            ax.grid(alpha=0.3)
        drift = row[2]
        drift.plot([r.chunk for r in stream], [num(r.delta_rel) for r in stream], "o-", ms=4, color=colour["cpt"],
                   label="cpt")
        if any(r.method.startswith("regrad") for r in rows):
            drift.axhline(0, color=colour["regrad"], ls="--", lw=1.2, label="regrad (unchanged)")
        drift.set_xlabel("chunks injected")
        drift.set_ylabel("‖Δθ‖ / ‖θ‖ of the persistent weights")
        drift.set_title(f"{dataset}: persistent weight drift", fontsize=9)
        drift.grid(alpha=0.3)
        drift.legend(loc="best", fontsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, ncols=min(6, len(labels)), loc="outside lower center", frameon=False)
    return fig


@styled
def cpt_frontier(table) -> Figure:
    """The knowledge-against-drift frontier (a :class:`cpt_frontier.FrontierTable`): per dataset, knowledge injected
    (answer accuracy, and answer NLL, on the injected questions) against the drift of the persistent weights from
    the base model (general-text NLL and general answer NLL, ± SE). One line per CPT setting through its chunks
    (its last chunk filled; cpt_rag after the last chunk as a triangle), every fixed-weight method a point; the dashed
    lines mark ReGrad's own drift, the ceiling of "at equal drift"."""
    datasets = list(dict.fromkeys(p.dataset for p in table))
    fig = new_figure(14.0, 3.3 * len(datasets) + 0.6)
    axes = fig.subplots(len(datasets), 4, squeeze=False)
    fixed = {"closed_book": ("D", "C7"), "rag": ("D", "C2"), "rag_sft": ("P", "C4"), "regrad": ("s", "C3"),
             "regrad_icl": ("s", "C1")}
    settings = list(dict.fromkeys(p.setting for p in table if p.setting))
    palette = matplotlib.colormaps["tab20"]
    cmap = {s: palette((2 * i + 1) % 20 if i >= 10 else (2 * i) % 20) for i, s in enumerate(settings)}
    panels = (("text", "knowledge_acc", "Δ general-text NLL from base (nats)", "knowledge acc (×100)"),
              ("answer", "knowledge_acc", "Δ general answer NLL from base (nats)", "knowledge acc (×100)"),
              ("text", "knowledge_nll", "Δ general-text NLL from base (nats)", "knowledge answer NLL (nats)"),
              ("answer", "knowledge_nll", "Δ general answer NLL from base (nats)", "knowledge answer NLL (nats)"))
    for row, dataset in zip(axes, datasets):
        mine = [p for p in table if p.dataset == dataset]
        regrad = next((p for p in mine if p.method == "regrad"), None)
        for ax, (drift, know, xlabel, ylabel) in zip(row, panels):
            def x_of(p, drift=drift):
                d = getattr(p, drift)
                return (num(d.mean), num(d.se)) if d is not None else (math.nan, math.nan)
            for setting in settings:
                line = [p for p in mine if p.setting == setting and p.method == "cpt"]
                if not line:
                    continue
                xs = [x_of(p)[0] for p in line]
                ax.plot(xs, [num(getattr(p, know)) for p in line], "-", lw=1, color=cmap[setting], alpha=0.7)
                for p in line:
                    x, se = x_of(p)
                    ax.errorbar([x], [num(getattr(p, know))], xerr=[se], fmt="o", ms=5 if p.final else 3,
                                color=cmap[setting], mfc=cmap[setting] if p.final else "white", lw=0.8,
                                label=f"cpt {setting}" if p.final else None)
                for p in (q for q in mine if q.setting == setting and q.method == "cpt_rag"):
                    x, se = x_of(p)
                    ax.errorbar([x], [num(getattr(p, know))], xerr=[se], fmt="^", ms=6, color=cmap[setting],
                                lw=0.8, label=f"cpt_rag {setting}")
            for p in mine:
                if p.method in fixed:
                    marker, colour = fixed[p.method]
                    x, se = x_of(p)
                    ax.errorbar([x], [num(getattr(p, know))], xerr=[se], fmt=marker, ms=8, color=colour, lw=0.8,
                                label=p.method)
            if regrad is not None and getattr(regrad, drift) is not None:
                ax.axvline(max(getattr(regrad, drift).mean, 0.0), color=fixed["regrad"][1], ls="--", lw=1)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_title(dataset, fontsize=9)
            ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, ncols=min(4, len(labels)), loc="outside lower center", frameon=False, fontsize=7)
    return fig
