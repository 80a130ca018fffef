"""Figures for the notebooks: each function takes tidy data and returns a matplotlib Figure; one save_figure.

Figures are built with the object API (``matplotlib.figure.Figure``), so nothing depends on an interactive
backend and nothing is ever shown from here; Jupyter displays a returned Figure inline.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib
from matplotlib.figure import Figure

from .artifacts import atomic_path

log = logging.getLogger(__name__)

DPI = 120
_STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
          "xtick.labelsize": 8, "ytick.labelsize": 8}


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
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train loss")
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
            ev.plot(steps, [r.get("eval_loss", math.nan) for r in evals], "o-", lw=1, ms=3, color="C1",
                    label="eval loss")
            ev.set_ylabel("eval loss")
        if any(_finite(r.get("eval_f1")) for r in evals):
            tw = ev.twinx()
            tw.plot(steps, [r.get("eval_f1", math.nan) for r in evals], "s--", lw=1, ms=3, color="C2",
                    label="eval F1")
            tw.set_ylabel("eval F1")
            best = [r for r in evals if r.get("best")]
            if best:
                tw.plot([best[-1]["step"]], [best[-1].get("eval_f1", math.nan)], "*", ms=10, color="C3",
                        label="best")
            handles = ev.get_legend_handles_labels()[0] + tw.get_legend_handles_labels()[0]
            ev.legend(handles=handles, loc="best")
        ev.set_title("Validation")
        ev.grid(alpha=0.3)
        axes[-1].set_xlabel("step")
    else:
        ax.set_xlabel("step")
    return fig


@_styled
def alpha_per_tensor(alpha: dict[str, float]) -> Figure:
    """One bar per LoRA tensor with its learned step size (tie mode; one bar for fix/same)."""
    names = list(alpha)
    values = [float(alpha[n]) for n in names]
    fig = _figure(max(4.0, min(16.0, 0.22 * len(names) + 2)), 3.4)
    ax = fig.subplots()
    ax.bar(range(len(names)), values, color=["C0" if n.endswith("A") else "C1" for n in map(short_tensor_name, names)])
    ax.set_xticks(range(len(names)), [short_tensor_name(n) for n in names], rotation=90)
    ax.set_title("Learned step size per LoRA tensor")
    ax.set_ylabel("alpha")
    ax.set_xlabel("LoRA tensor (layer.module.A|B)")
    ax.grid(axis="y", alpha=0.3)
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


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
