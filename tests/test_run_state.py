"""run_state: the training log's one reader, used alike by 03_train's figure cell and 06_analyze's, and what it does
with a damaged log (a last line cut short by a kill is dropped; damage before it is refused naming the line)."""

import ast
import json

import pytest
import torch
from matplotlib.figure import Figure
from safetensors.torch import save_file
from test_analysis import write_run

from regrad_lib.io import paths, run_state
from regrad_lib.reporting import analysis


@pytest.fixture()
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    write_run("r", datasets=("popqa",))
    return "r"


def _cut_short(run: str) -> list[dict]:
    """Append a row cut off mid-line (as a kill during the append leaves it); the rows before it."""
    whole = [json.loads(line) for line in paths.training_log_file(run).read_text().splitlines()]
    with paths.training_log_file(run).open("a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": "train", "step": 6, "loss": 2.0})[:17])
    return whole


def test_a_cut_short_last_line_is_dropped_and_every_row_before_it_kept(run, caplog):
    whole = _cut_short(run)
    assert run_state.read_training_log(run) == whole
    assert "dropped its last line, cut short" in caplog.text


def test_damage_before_the_last_line_is_refused_naming_the_line(run):
    log = paths.training_log_file(run)
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"training_log.jsonl: line 2 is not valid JSON"):
        run_state.read_training_log(run)


def test_the_writer_appends_rows_the_reader_returns(run):
    row = {"kind": "train", "step": 6, "loss": 1.5}
    run_state.append_training_log(paths.training_log_file(run), row)
    assert run_state.read_training_log(run)[-1] == row


def _cell(notebook: str, needle: str) -> str:
    cells = [c for c in json.loads((paths.notebooks_dir() / f"{notebook}.ipynb").read_text())["cells"]
             if c["cell_type"] == "code"]
    [source] = ["".join(c["source"]) for c in cells if needle in "".join(c["source"])]
    return source


def _imports(notebook: str) -> str:
    """The import statements of a notebook's set-up cell (its one import cell)."""
    setup = ast.parse(_cell(notebook, "notebook.setup_logging()"))
    return "\n".join(ast.unparse(n) for n in setup.body if isinstance(n, (ast.Import, ast.ImportFrom)))


def _run_cell(notebook: str, needle: str, namespace: dict) -> dict:
    exec(_imports(notebook) + "\n" + _cell(notebook, needle), namespace)     # noqa: S102 - the notebook's own code
    return namespace


def test_03_and_06_draw_the_training_curves_of_a_cut_short_log_alike(run, tmp_path):
    """Both notebooks read the log through the one reader: neither fails on a cut-short log, both draw its rows."""
    whole = _cut_short(run)
    train = _run_cell("03_train", "training_curves", {"run": run})
    cfg = analysis.AnalyzeConfig(run=run, datasets=["popqa"])
    analyze = _run_cell("06_analyze", "training_curves", {"cfg": cfg, "figures": tmp_path / "figures"})
    assert train["rows"] == analyze["log_rows"] == whole
    assert isinstance(train["fig"], Figure)
    assert (paths.figures_dir(run) / "training_curves.png").is_file()
    assert (tmp_path / "figures" / "training_curves.png").is_file()


def test_alpha_is_read_in_natural_tensor_order_and_refused_without_alpha(run):
    alpha = run_state.read_alpha(run)
    assert list(alpha)[1:3] == ["model.layers.2.self_attn.q_proj.lora_B", "model.layers.10.mlp.gate_proj.lora_A"]
    save_file({"phi.x": torch.zeros(2)}, str(paths.meta_state_file(run)))
    with pytest.raises(ValueError, match="holds no 'alpha.\\*' tensors"):
        run_state.read_alpha(run)
