"""plots: every function returns a Figure with the expected bars/lines; save_figure and publish write PNGs."""

import math

import pytest
from matplotlib.figure import Figure
from test_analysis import write_run

from regrad_lib.io import run_state
from regrad_lib.reporting import (
    analysis,
    bank_plots,
    effects,
    figure_style,
    plots,
    training_plots,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    write_run("r", datasets=("popqa", "hotpotqa"))
    return "r"


def _bars(ax):
    return [p for p in ax.patches if p.get_height() == p.get_height()]  # NaN-height bars excluded


def test_save_figure_writes_png(tmp_path):
    fig = plots.histogram([1, 2, 2, 3], "t", "x")
    out = figure_style.save_figure(fig, tmp_path / "deep" / "er" / "hist")
    assert out == tmp_path / "deep" / "er" / "hist.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in out.parent.iterdir()] == ["hist.png"]  # no temporary left behind


def test_histogram_bins_and_labels():
    fig = plots.histogram([0.1, 0.2, math.nan, 0.3, float("inf")], "Gradient norms", "norm", bins=5)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and len(ax.patches) == 5
    assert sum(p.get_height() for p in ax.patches) == 3
    assert (ax.get_title(), ax.get_xlabel()) == ("Gradient norms", "norm")
    assert isinstance(plots.histogram([], "empty", "x"), Figure)


def test_training_curves_panels(run):
    rows = run_state.read_training_log(run)
    fig = training_plots.training_curves(rows)
    loss_ax, eval_ax, f1_ax = fig.axes
    assert len(loss_ax.lines) == 1 and list(loss_ax.lines[0].get_xdata()) == [1, 2, 3, 4, 5]
    assert list(eval_ax.lines[0].get_ydata()) == [2.5, 2.6]
    assert list(f1_ax.lines[0].get_ydata()) == [4.0, 3.0] and len(f1_ax.lines) == 2  # + best marker
    only_train = training_plots.training_curves([r for r in rows if r["kind"] == "train"])
    assert len(only_train.axes) == 1 and only_train.axes[0].get_xlabel() == "step"


def test_alpha_heatmap_is_layer_by_module_and_side(run):
    alpha = run_state.read_alpha(run)
    rows, columns, grid = training_plots.alpha_grid(alpha)
    assert rows == ["L2", "L10"] and columns == ["q.A", "q.B", "gate.A", "gate.B"]
    by_short = {training_plots.short_tensor_name(n): v for n, v in alpha.items()}
    assert grid[1][2] == pytest.approx(by_short["L10.gate.A"]) and grid[0][1] == pytest.approx(by_short["L2.q.B"])
    assert math.isnan(grid[0][2]) and math.isnan(grid[1][0])          # L2 has no gate, L10 no q
    fig = training_plots.alpha_per_tensor(alpha)
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (2, 4)
    assert [t.get_text() for t in ax.get_xticklabels()] == columns
    assert [t.get_text() for t in ax.get_yticklabels()] == rows
    assert len(ax.texts) == 4                                          # each present value written in its cell
    assert training_plots.alpha_grid({"all": 0.02}) == (["all"], ["all"], [[0.02]])   # alpha_mode fix / same
    assert training_plots.short_tensor_name("alpha.model__layers__15__mlp__down_proj__lora_B") == "L15.down.B"
    assert training_plots.short_tensor_name("all") == "all"


def test_token_probabilities_bars():
    fig = plots.token_probabilities([" Paris", "\n"], {"before": [0.1, 0.5], "after": [0.4, 0.6]}, "t")
    ax = fig.axes[0]
    assert [round(p.get_height(), 3) for p in ax.patches] == [0.1, 0.5, 0.4, 0.6]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["␣Paris", "\\n"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["before", "after"]


def test_score_table_figure(run):
    table = analysis.score_table(analysis.read_summary(run))
    fig = plots.score_table(table)
    mpl_table = fig.axes[0].tables[0]
    cells = mpl_table.get_celld()
    assert max(r for r, _ in cells) == 2 and max(c for _, c in cells) == 15  # 2 datasets; 1 + 5 methods × (acc, EM, F1)
    assert cells[(1, 0)].get_text().get_text() == "popqa"


def test_f1_bars_groups(run):
    rows = analysis.read_summary(run)
    fig = plots.f1_bars(rows)
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * 5 and len(_bars(ax)) == 7  # 5 methods × 2 datasets, 7 measured
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["closed_book", "rag", "regrad", "shift",
                                                                   "no_update"]


def test_sweep_curves(run):
    sweeps = analysis.read_sweeps(run)
    gamma = plots.gamma_sweep(analysis.sweep_series(sweeps, "gamma", topk=3))
    lines = gamma.axes[0].lines
    assert len(lines) == 2 and list(lines[1].get_xdata()) == [0.5, 1.0, 2.0]
    assert list(lines[1].get_ydata()) == [7.0, 8.5, 4.0]
    topk = plots.topk_sweep(analysis.sweep_series(sweeps, "topk", gamma=1.0))
    assert len(topk.axes[0].lines) == 1 and topk.axes[0].get_xlabel() == "topk"


def test_bank_bytes(run):
    fig = bank_plots.bank_bytes(analysis.bank_sizes(3, run, ["popqa", "hotpotqa"], "dev"))
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [36, 64]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["popqa\nbf16", "hotpotqa\nfp32"]
    assert [t.get_text() for t in ax.texts] == ["36 B", "64 B"]


def test_paired_differences_figure(run):
    diffs = effects.effect_table(run, ["popqa", "hotpotqa"])
    fig = plots.paired_differences(diffs)
    ax = fig.axes[0]
    assert len(ax.patches) == 4
    assert sorted(p.get_height() for p in ax.patches) == pytest.approx(sorted([-1 / 3, -0.5] * 2))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["regrad − shift", "regrad − no_update"]
    notes = [t.get_text() for t in ax.texts]
    assert "67% lower\nn=3" in notes and "75% lower\nn=4" in notes


def test_publish_saves_or_passes_missing(run, tmp_path):
    fig = figure_style.publish(plots.f1_bars, analysis.read_summary(run), tmp_path / "fig" / "f1.png")
    assert isinstance(fig, Figure) and (tmp_path / "fig" / "f1.png").read_bytes()[:8] == PNG_MAGIC
    note = analysis.Missing("nothing here")
    assert figure_style.publish(plots.gamma_sweep, note, tmp_path / "fig" / "gamma.png") is note
    assert not (tmp_path / "fig" / "gamma.png").exists()


def test_figures_render_inline_as_png(monkeypatch):
    registered = {}

    class Formatter:
        def for_type(self, cls, fn):
            registered[cls] = fn

    class Shell:
        display_formatter = type("DF", (), {"formatters": {"image/png": Formatter()}})()

    import IPython
    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    figure_style._show_inline_in_jupyter()
    assert registered[Figure](plots.histogram([1.0], "t", "x"))[:8] == PNG_MAGIC


def test_training_curves_tolerate_null_values():
    rows = [{"kind": "train", "step": 1, "loss": None}, {"kind": "train", "step": 2, "loss": 2.0},
            {"kind": "eval", "step": 2, "eval_loss": None, "eval_em": None, "eval_f1": None, "n": 3, "best": True},
            {"kind": "eval", "step": 4, "eval_loss": 1.5, "eval_em": None, "eval_f1": None, "n": 3, "best": False}]
    fig = training_plots.training_curves(rows)
    assert list(fig.axes[0].lines[0].get_xdata()) == [2]
    assert len(fig.axes) == 2  # no F1 axis: every eval_f1 is null
    assert math.isnan(fig.axes[1].lines[0].get_ydata()[0])


def test_sweep_shows_f1_and_nll(run):
    fig = plots.gamma_sweep(analysis.sweep_series(analysis.read_sweeps(run), "gamma", topk=3))
    left, right = fig.axes[:2]
    assert list(right.lines[1].get_ydata()) == [3.0, 2.9, 3.5]        # popqa's NLL at gamma 0.5, 1, 2
    assert "NLL" in right.get_title() and "F1" in left.get_title()


def test_alpha_over_steps_groups_modules_across_layers(run):
    rows = run_state.read_training_log(run)
    fig = training_plots.alpha_over_steps(rows)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.lines]
    assert labels[:4] == ["gate.A (1 tensor)", "gate.B (1 tensor)", "q.A (1 tensor)", "q.B (1 tensor)"]
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3, 4, 5] and ax.get_yscale() == "log"
    empty = training_plots.alpha_over_steps([{"kind": "eval", "step": 1}])
    assert "no step sizes" in empty.axes[0].texts[0].get_text()


def test_group_em_bars(tmp_path, monkeypatch):
    from regrad_lib.reporting.effects import GroupTable

    table = GroupTable(["city", "sport (held out)"], ["regrad", "shift"],
                       {("city", "regrad"): (50.0, 2), ("city", "shift"): (0.0, 2),
                        ("sport (held out)", "regrad"): (100.0, 1), ("sport (held out)", "shift"): (0.0, 1)})
    fig = plots.group_em(table)
    ax = fig.axes[0]
    assert sorted(p.get_height() for p in ax.patches) == [0.0, 0.0, 50.0, 100.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["city", "sport (held out)"]
