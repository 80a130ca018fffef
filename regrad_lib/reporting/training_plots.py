"""03_train's and 06_analyze's figures of meta-training: the loss and validation curves and the learned step sizes
(per LoRA tensor, and over the steps)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from matplotlib.figure import Figure

from regrad_lib.reporting.figure_style import finite, new_figure, num, styled

__all__ = ["alpha_grid", "alpha_over_steps", "alpha_per_tensor", "short_tensor_name", "training_curves",
           "learning_curve"]


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


@styled
def training_curves(log_rows: Sequence[dict]) -> Figure:
    """Train loss vs step; a second panel with eval_loss and eval_f1 when the log has eval rows."""
    train = [r for r in log_rows if r.get("kind", "train") == "train" and finite(r.get("loss"))]
    evals = [r for r in log_rows if r.get("kind") == "eval"]
    fig = new_figure(6.4, 3.4 if not evals else 5.6)
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
        if any(finite(r.get("eval_loss")) for r in evals):
            ev.plot(steps, [num(r.get("eval_loss")) for r in evals], "o-", lw=1, ms=3, color="C1",
                    label="eval loss")
            ev.set_ylabel("eval loss")
        if any(finite(r.get("eval_f1")) for r in evals):
            tw = ev.twinx()
            tw.plot(steps, [num(r.get("eval_f1")) for r in evals], "s--", lw=1, ms=3, color="C2",
                    label="eval F1")
            tw.set_ylabel("eval F1")
            best = [r for r in evals if r.get("best")]
            if best:
                tw.plot([best[-1]["step"]], [num(best[-1].get("eval_f1"))], "*", ms=10, color="C3",
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


@styled
def alpha_per_tensor(alpha: dict[str, float]) -> Figure:
    """The learned step size of every LoRA tensor as a heatmap: layer × (module, A|B), values written in."""
    rows, columns, grid = alpha_grid(alpha)
    fig = new_figure(min(9.0, 0.75 * len(columns) + 2.2), min(9.0, 0.28 * len(rows) + 1.4))
    ax = fig.subplots()
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label="alpha", shrink=0.9)
    if len(rows) * len(columns) <= 400:
        shown = [v for row in grid for v in row if finite(v)]
        middle = (min(shown) + max(shown)) / 2 if shown else 0.0
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if finite(v):
                    ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=6,
                            color="black" if v > middle else "white")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title("Learned step size per LoRA tensor")
    ax.set_xlabel("module . A|B")
    ax.set_ylabel("layer")
    return fig


@styled
def alpha_over_steps(log_rows: Sequence[dict]) -> Figure:
    """The learned step sizes during meta-training: per (module, A|B) group, the mean alpha over its layers at
    every logged step (log scale), with the initial value dashed."""
    rows = [r for r in log_rows if r.get("kind", "train") == "train" and r.get("alpha")]
    fig = new_figure(6.4, 3.6)
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


@styled
def learning_curve(curve) -> Figure:
    """One panel per evaluated split: answer accuracy of each method against meta-training tasks (log axis, ± binomial
    SE; the main run's points joined, other seeds' as open markers), and a last panel with the accuracy gap
    regrad − rag (± paired SE) and its fitted trend (:mod:`regrad_lib.reporting.learning_curve`)."""
    splits = list(dict.fromkeys((s.dataset, s.split) for s in curve.scores))
    main = curve.scores[0].run if curve.scores else None
    fig = new_figure(4.2 * min(3, len(splits) + 1), 3.2 * math.ceil((len(splits) + 1) / 3))
    axes = fig.subplots(math.ceil((len(splits) + 1) / 3), min(3, len(splits) + 1), squeeze=False).ravel()
    methods = ("rag", "rag_sft", "regrad", "regrad_icl", "no_update")
    for ax, (dataset, split) in zip(axes, splits):
        rows = [s for s in curve.scores if (s.dataset, s.split) == (dataset, split)]
        for i, method in enumerate(m for m in methods if any(s.method == m for s in rows)):
            for run in dict.fromkeys(s.run for s in rows):
                pts = sorted((s for s in rows if s.method == method and s.run == run), key=lambda s: s.tasks)
                if not pts:
                    continue
                se = [100 * math.sqrt(max(s.acc / 100 * (1 - s.acc / 100), 0) / s.n) for s in pts]
                ax.errorbar([s.tasks for s in pts], [s.acc for s in pts], yerr=se, color=f"C{i}", capsize=2,
                            marker="o", mfc=None if run == main else "none", ls="-" if run == main else "none",
                            label=method if run == main else None)
        ax.set_xscale("log")
        ax.set_title(f"{dataset} ({split})")
        ax.set_xlabel("meta-training tasks")
        ax.set_ylabel("answer accuracy (×100)")
        ax.grid(alpha=0.3)
    ax = axes[len(splits)]
    for i, (dataset, split) in enumerate(splits):
        gaps = sorted((g for g in curve.gaps if (g.dataset, g.split, g.a, g.b) == (dataset, split, "regrad", "rag")
                       and g.run == main), key=lambda g: g.tasks)
        if not gaps:
            continue
        ax.errorbar([g.tasks for g in gaps], [g.acc for g in gaps], yerr=[g.acc_se for g in gaps], marker="o",
                    capsize=2, color=f"C{i}", ls="none", label=f"{dataset} ({split})")
        found = next((t for t in curve.trends if (t.dataset, t.split, t.a, t.b) == (dataset, split, "regrad", "rag")),
                     None)
        if found is not None:
            xs = [gaps[0].tasks, 1e5]
            at = {x: found.at[100000][0] + found.slope * (math.log10(x) - 5) for x in xs}
            ax.plot(xs, [at[x] for x in xs], color=f"C{i}", ls=":", lw=1)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_title("regrad − rag, accuracy (dotted: trend)")
    ax.set_xlabel("meta-training tasks")
    ax.set_ylabel("Δ accuracy (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    for extra in axes[len(splits) + 1:]:
        extra.axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, ncols=len(handles), loc="outside lower center", frameon=False)
    return fig
