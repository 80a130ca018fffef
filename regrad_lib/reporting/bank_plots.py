"""06_analyze's figures of the Gradient Bank: bytes per passage per storage scheme and the size/quality frontier."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from matplotlib.figure import Figure

from regrad_lib.reporting.analysis import BankSize
from regrad_lib.reporting.figure_style import finite, new_figure, styled

__all__ = ["bank_bytes", "frontier"]


@styled
def bank_bytes(sizes: Sequence[BankSize]) -> Figure:
    """Bytes per passage of each Gradient Bank, one bar per dataset/scheme, labelled in KiB/MiB."""
    fig = new_figure(max(4.0, 0.9 * len(sizes) + 2), 3.4)
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


@styled
def frontier(points: Iterable) -> Figure:
    """Storage schemes: bytes per passage (log x) against the paired answer-NLL difference to the reference bank
    (mean ± SE; and mean |Δ| against a tenth of |regrad − no_update|, dashed) and against EM and F1; one point
    per scheme and dataset (:class:`regrad_lib.reporting.frontier_report.FrontierTable`)."""
    points = list(points)
    datasets = list(dict.fromkeys(p.dataset for p in points))
    fig = new_figure(9.0, 6.2)
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
    if not finite(n):
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
