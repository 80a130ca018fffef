"""The house style of every figure: built with the object API under a shared style, shown inline in Jupyter as a
PNG (no pyplot, no interactive backend), saved atomically by one :func:`save_figure`, and :func:`publish` for the
figures 06_analyze saves (a Missing note passes through instead of a figure)."""

from __future__ import annotations

import functools
import io
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import matplotlib
from matplotlib.figure import Figure

from regrad_lib.io.artifacts import atomic_path
from regrad_lib.reporting.analysis import Missing

__all__ = ["finite", "new_figure", "num", "publish", "save_figure", "styled"]

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


def styled(fn):
    """Build the figure under the house style without touching the caller's global rcParams."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_STYLE):
            return fn(*args, **kwargs)
    return wrapper


def new_figure(width: float = 6.4, height: float = 3.6) -> Figure:
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


def num(v) -> float:
    """A log value as a float; None (a non-finite value the trainer logged as null) becomes NaN."""
    return float(v) if finite(v) else math.nan


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def publish(make: Callable[[T], Figure], data: T | Missing, path: str | os.PathLike) -> Figure | Missing:
    """``make(data)`` saved as a PNG at ``path`` and returned for inline display; a Missing note passes through."""
    if isinstance(data, Missing):
        log.warning("%s skipped: %s", Path(path).name, data.message)
        return data
    fig = make(data)
    save_figure(fig, path)
    return fig
