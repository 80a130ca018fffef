"""Figures for the notebooks: each function takes tidy data and returns a matplotlib Figure; one save_figure.

Figures are built with the object API (``matplotlib.figure.Figure``), so nothing depends on an interactive
backend and nothing is ever shown from here; Jupyter displays a returned Figure inline.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import matplotlib
from matplotlib.figure import Figure

from .analysis import METHODS, BankSize, Missing, Score, ScoreTable
from .effects import PairedDifference
from .artifacts import atomic_path

log = logging.getLogger(__name__)

T = TypeVar("T")

DPI = 120
_STYLE = {"font.size": 9, "axes.titlesize": 10, "figure.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
          "xtick.labelsize": 8, "ytick.labelsize": 8}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _show_inline_in_jupyter() -> None:
    """Let IPython display a returned Figure as a PNG even though pyplot (and its inline backend) is never used."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "display_formatter"):
        shell.display_formatter.formatters["image/png"].for_type(Figure, _png)


_show_inline_in_jupyter()


def _styled(fn):
    """Build the figure under the house style without touching the caller's global rcParams."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_STYLE):
            return fn(*args, **kwargs)
    return wrapper


def _figure(width: float = 6.4, height: float = 3.6) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders made, written atomically); returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        path = path.with_suffix(".png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    log.info("wrote %s", path)
    return path


def short_tensor_name(name: str) -> str:
    """``model.layers.15.mlp.gate_proj.lora_A`` (or its ``__`` / ``alpha.`` forms) -> ``L15.gate.A``."""
    n = name.replace("__", ".")
    if n.startswith("alpha."):
        n = n[len("alpha."):]
    layer = re.search(r"layers\.(\d+)\.", n)
    module = re.search(r"\.([A-Za-z0-9]+?)(?:_proj)?\.lora_([AB])$", n)
    if module is None:
        return n
    head = f"L{layer.group(1)}." if layer else ""
    return f"{head}{module.group(1)}.{module.group(2)}"


@_styled
def training_curves(log_rows: Sequence[dict]) -> Figure:
    """Train loss vs step; a second panel with eval_loss and eval_f1 when the log has eval rows."""
    train = [r for r in log_rows if r.get("kind", "train") == "train" and _finite(r.get("loss"))]
    evals = [r for r in log_rows if r.get("kind") == "eval"]
    fig = _figure(6.4, 3.4 if not evals else 5.6)
    axes = fig.subplots(2 if evals else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], "." if len(train) <= 50 else "",
                ls="-", lw=1, label="train loss")
    else:
        ax.text(0.5, 0.5, "no train rows", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Meta-training loss")
    ax.set_ylabel("outer loss")
    ax.grid(alpha=0.3)
    if evals:
        ax.set_xlabel("")
        ev = axes[1]
        steps = [r["step"] for r in evals]
        if any(_finite(r.get("eval_loss")) for r in evals):
            ev.plot(steps, [_num(r.get("eval_loss")) for r in evals], "o-", lw=1, ms=3, color="C1",
                    label="eval loss")
            ev.set_ylabel("eval loss")
        if any(_finite(r.get("eval_f1")) for r in evals):
            tw = ev.twinx()
            tw.plot(steps, [_num(r.get("eval_f1")) for r in evals], "s--", lw=1, ms=3, color="C2",
                    label="eval F1")
            tw.set_ylabel("eval F1")
            best = [r for r in evals if r.get("best")]
            if best:
                tw.plot([best[-1]["step"]], [_num(best[-1].get("eval_f1"))], "*", ms=10, color="C3",
                        label="best")
            handles = ev.get_legend_handles_labels()[0] + tw.get_legend_handles_labels()[0]
            ev.legend(handles=handles, loc="best")
        ev.set_title("Validation")
        ev.grid(alpha=0.3)
        axes[-1].set_xlabel("step")
    else:
        ax.set_xlabel("step")
    return fig


def alpha_grid(alpha: dict[str, float]) -> tuple[list[str], list[str], list[list[float]]]:
    """Step sizes as a grid: rows = layers (``L15``), columns = (module, A|B) (``gate.A``), NaN where absent.
    Names without a layer or module (``all``: alpha_mode fix/same) fall into row and column ``all``."""
    cells: dict[tuple[str, str], float] = {}
    for name, value in alpha.items():
        short = short_tensor_name(name)
        layer, _, column = short.partition(".") if short.startswith("L") and "." in short else ("all", "", short)
        cells[(layer, column)] = float(value)
    rows = sorted({r for r, _ in cells}, key=lambda r: (r == "all", int(r[1:]) if r[1:].isdigit() else 0, r))
    columns = list(dict.fromkeys(c for _, c in cells))
    return rows, columns, [[cells.get((r, c), math.nan) for c in columns] for r in rows]


@_styled
def alpha_per_tensor(alpha: dict[str, float]) -> Figure:
    """The learned step size of every LoRA tensor as a heatmap: layer × (module, A|B), values written in."""
    rows, columns, grid = alpha_grid(alpha)
    fig = _figure(min(9.0, 0.75 * len(columns) + 2.2), min(9.0, 0.28 * len(rows) + 1.4))
    ax = fig.subplots()
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label="alpha", shrink=0.9)
    if len(rows) * len(columns) <= 400:
        finite = [v for row in grid for v in row if _finite(v)]
        middle = (min(finite) + max(finite)) / 2 if finite else 0.0
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if _finite(v):
                    ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=6,
                            color="black" if v > middle else "white")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title("Learned step size per LoRA tensor")
    ax.set_xlabel("module . A|B")
    ax.set_ylabel("layer")
    return fig


@_styled
def group_em(table) -> Figure:
    """EM of each method per group of questions (an :class:`effects.GroupTable`), grouped bars."""
    fig = _figure(max(5.0, 0.9 * len(table.groups) + 2), 3.4)
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


@_styled
def alpha_over_steps(log_rows: Sequence[dict]) -> Figure:
    """The learned step sizes during meta-training: per (module, A|B) group, the mean alpha over its layers at
    every logged step (log scale), with the initial value dashed."""
    rows = [r for r in log_rows if r.get("kind", "train") == "train" and r.get("alpha")]
    fig = _figure(6.4, 3.6)
    ax = fig.subplots()
    if not rows:
        ax.text(0.5, 0.5, "no step sizes in the training log", ha="center", va="center", transform=ax.transAxes)
        return fig
    groups: dict[str, list[str]] = {}
    for name in rows[0]["alpha"]:
        short = short_tensor_name(name)
        groups.setdefault(short.split(".", 1)[1] if re.match(r"L\d+\.", short) else short, []).append(name)
    steps = [r["step"] for r in rows]
    for i, (key, names) in enumerate(sorted(groups.items())):
        values = [sum(float(r["alpha"][n]) for n in names) / len(names) for r in rows]
        ax.plot(steps, values, lw=1.2, color=f"C{i // 2 % 10}", ls="-" if key.endswith("A") else "--",
                label=f"{key} ({len(names)} tensor{'s' if len(names) > 1 else ''})")
    first = [float(v) for v in rows[0]["alpha"].values()]
    if all(v > 0 for r in rows for v in r["alpha"].values()):
        ax.set_yscale("log")
    ax.axhline(sum(first) / len(first), color="grey", lw=0.8, ls=":", label="first logged step")
    ax.set_title("Learned step size alpha during meta-training (mean over layers)")
    ax.set_xlabel("step")
    ax.set_ylabel("alpha")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", ncol=2)
    return fig


@_styled
def histogram(values: Iterable[float], title: str, xlabel: str, bins: int = 30) -> Figure:
    """A plain histogram of finite ``values``."""
    vals = [float(v) for v in values if _finite(v)]
    fig = _figure(5.0, 3.2)
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


def _num(v) -> float:
    """A log value as a float; None (a non-finite value the trainer logged as null) becomes NaN."""
    return float(v) if _finite(v) else math.nan


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --- 06_analyze figures -----------------------------------------------------------------------------------

def publish(make: Callable[[T], Figure], data: T | Missing, path: str | os.PathLike) -> Figure | Missing:
    """``make(data)`` saved as a PNG at ``path`` and returned for inline display; a Missing note passes through."""
    if isinstance(data, Missing):
        log.warning("%s skipped: %s", Path(path).name, data.message)
        return data
    fig = make(data)
    save_figure(fig, path)
    return fig


@_styled
def score_table(table: ScoreTable) -> Figure:
    """The datasets × methods EM/F1 table drawn as a figure (for the PNG; notebooks also show it as HTML)."""
    header, rows = table.header(), table.rows() or [["(no rows)"] + [""] * (len(table.header()) - 1)]
    fig = _figure(max(4.0, 0.85 * len(header) + 1.0), 0.35 * (len(rows) + 1) + 0.6)
    ax = fig.subplots()
    ax.axis("off")
    t = ax.table(cellText=rows, colLabels=[h.replace(" ", "\n") for h in header], loc="center", cellLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.scale(1.0, 1.5)
    t.auto_set_column_width([0])  # dataset names are longer than the numbers
    ax.set_title("EM / F1 (×100) by dataset and method")
    return fig


@_styled
def f1_bars(rows: Sequence[Score], metric: str = "f1") -> Figure:
    """Grouped bars: one group per dataset, one bar per method (``metric``: f1 or em)."""
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    methods = [m for m in METHODS if any(r.method == m for r in rows)] + \
        list(dict.fromkeys(r.method for r in rows if r.method not in METHODS))
    value = {(r.dataset, r.method): getattr(r, metric) for r in rows}
    fig = _figure(max(5.0, 1.2 * len(datasets) * max(1, len(methods)) / 3 + 2), 3.6)
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(datasets))]
        ax.bar(xs, [value.get((d, m), math.nan) for d in datasets], width, label=m, color=f"C{j % 10}")
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_title(f"{metric.upper()} by dataset and method")
    ax.set_ylabel(f"{metric.upper()} (×100)")
    ax.set_xlabel("dataset")
    ax.grid(axis="y", alpha=0.3)
    if methods:
        fig.legend(ncols=min(4, len(methods)), loc="outside lower center", frameon=False)
    return fig


@_styled
def sweep_curve(rows: Sequence[Score], vary: str = "gamma") -> Figure:
    """F1 (left) and the gold answer's NLL (right) against ``vary`` (gamma or topk), one line per dataset
    (rows from :func:`analysis.sweep`): an update that overshoots shows as F1 falling while the NLL climbs."""
    fig = _figure(8.4, 3.4)
    ax, nll = fig.subplots(1, 2)
    for i, d in enumerate(dict.fromkeys(r.dataset for r in rows)):
        pts = sorted((getattr(r, vary), r.f1, r.nll) for r in rows if r.dataset == d)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, lw=1, color=f"C{i % 10}", label=d)
        nll.plot([p[0] for p in pts], [p[2] for p in pts], "o-", ms=3, lw=1, color=f"C{i % 10}", label=d)
    methods = sorted({r.method for r in rows})
    ax.set_title(f"F1 vs {vary} ({', '.join(methods)})")
    ax.set_ylabel("F1 (×100)")
    nll.set_title(f"Gold answer NLL vs {vary}")
    nll.set_ylabel("mean answer NLL (nats)")
    for a in (ax, nll):
        a.set_xlabel(vary)
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


@_styled
def bank_bytes(sizes: Sequence[BankSize]) -> Figure:
    """Bytes per passage of each Gradient Bank, one bar per dataset/scheme, labelled in KiB/MiB."""
    fig = _figure(max(4.0, 0.9 * len(sizes) + 2), 3.4)
    ax = fig.subplots()
    labels = [f"{s.dataset}\n{s.scheme}" for s in sizes]
    values = [s.bytes_per_passage for s in sizes]
    bars = ax.bar(range(len(sizes)), values, color=[f"C{i % 10}" for i in range(len(sizes))])
    ax.bar_label(bars, labels=[_human(v) for v in values], fontsize=7)
    ax.set_xticks(range(len(sizes)), labels)
    ax.set_title("Gradient Bank: bytes per passage")
    ax.set_ylabel("bytes per passage")
    ax.set_xlabel("dataset / storage scheme")
    ax.grid(axis="y", alpha=0.3)
    return fig


@_styled
def paired_differences(diffs: Iterable[PairedDifference]) -> Figure:
    """Mean paired answer-NLL difference ± SE per dataset, one bar per pair, share lower annotated (``diffs``:
    paired differences, or the effects of an :class:`effects.EffectTable`)."""
    diffs = [getattr(d, "nll", d) for d in diffs]
    datasets = list(dict.fromkeys(d.dataset for d in diffs))
    pairs = list(dict.fromkeys(d.label for d in diffs))
    by = {(d.dataset, d.label): d for d in diffs}
    fig = _figure(max(5.0, 1.3 * len(datasets) + 2.5), 3.8)
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


@_styled
def frontier(points: Iterable) -> Figure:
    """Storage schemes: bytes per passage (log x) against the paired answer-NLL difference to the reference bank
    (mean ± SE; and mean |Δ| against a tenth of |regrad − no_update|, dashed) and against EM and F1; one point
    per scheme and dataset (:class:`regrad_lib.frontier.FrontierTable`)."""
    points = list(points)
    datasets = list(dict.fromkeys(p.dataset for p in points))
    fig = _figure(9.0, 6.2)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    panels = [(axes[0], "mean Δ NLL ± SE (nats)"), (axes[1], "mean |Δ NLL| (nats)"), (axes[2], "EM (×100)"),
              (axes[3], "F1 (×100)")]
    for i, d in enumerate(datasets):
        mine = sorted((p for p in points if p.dataset == d), key=lambda p: p.bytes_per_passage)
        x, color = [p.bytes_per_passage for p in mine], f"C{i % 10}"
        with_delta = [p for p in mine if p.delta is not None]
        axes[0].errorbar([p.bytes_per_passage for p in with_delta], [p.delta.mean for p in with_delta],
                         yerr=[0 if math.isnan(p.delta.se) else p.delta.se for p in with_delta], fmt="o-", ms=3,
                         lw=1, capsize=2, color=color, label=d)
        positive = [p for p in with_delta if p.mean_abs_delta > 0]
        axes[1].plot([p.bytes_per_passage for p in positive], [p.mean_abs_delta for p in positive], "o-", ms=3, lw=1,
                     color=color)
        effect = next((p.effect for p in mine if p.effect is not None), None)
        if effect is not None and effect.mean:
            axes[1].axhline(abs(effect.mean) / 10, color=color, lw=0.8, ls="--")
        axes[2].plot(x, [p.em for p in mine], "o-", ms=3, lw=1, color=color)
        axes[3].plot(x, [p.f1 for p in mine], "o-", ms=3, lw=1, color=color)
    first = sorted((p for p in points if datasets and p.dataset == datasets[0] and p.delta is not None),
                   key=lambda p: p.bytes_per_passage)
    for i, p in enumerate(first):   # scheme names once, on the first dataset's points, staggered (close sizes)
        axes[0].annotate(p.scheme, (p.bytes_per_passage, p.delta.mean), textcoords="offset points",
                         xytext=(3, 4 + 10 * (i % 2)), fontsize=7)
    axes[0].axhline(0, color="black", lw=0.8)
    if any(p.delta is not None and p.mean_abs_delta > 0 for p in points):
        axes[1].set_yscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    decimal = FuncFormatter(lambda v, _: f"{v / 1e6:g} MB" if v >= 1e6 else f"{v / 1e3:g} kB" if v >= 1e3
                            else f"{v:g} B")
    for ax, label in panels:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(decimal)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[2:]:
        ax.set_xlabel("stored bytes per passage (log)")
    reference = next((p.delta.method_b for p in points if p.delta is not None), "the reference")
    fig.suptitle(f"Gradient Bank schemes: size against quality (Δ = scheme − {reference}, per question; dashed: "
                 "a tenth of |regrad − no_update|)")
    if datasets:
        fig.legend(ncols=min(4, len(datasets)), loc="outside lower center", frameon=False)
    return fig


def _human(n: float) -> str:
    if not _finite(n):
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@_styled
def token_probabilities(tokens: Sequence[str], series: dict[str, Sequence[float]], title: str = "") -> Figure:
    """One group of bars per answer token: its probability under each weight set (e.g. before / after)."""
    fig = _figure(max(4.0, min(12.0, 0.55 * len(tokens) + 2)), 3.2)
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
