"""The numbered notebooks as files: one parameters cell first, no outputs stored, quiet logging, and every list
(mapping) parameter read through notebook.as_list (as_counts): papermill's -p passes them as strings."""

import ast
import json
import subprocess
import sys

import pytest

from regrad_lib.io import paths
from regrad_lib.runner import notebook, pipeline


def _cells(name):
    nb = json.loads((paths.notebooks_dir() / f"{name}.ipynb").read_text(encoding="utf-8"))
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("name", pipeline.NOTEBOOKS)
def test_notebook_hygiene_and_list_parameters(name):
    cells = _cells(name)
    every = json.loads((paths.notebooks_dir() / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]
    assert all("id" in c for c in every), "every cell has an id (nbformat 4.5)"
    assert cells[0]["metadata"].get("tags") == ["parameters"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in cells), "outputs must be stripped"
    parameters = ast.parse("".join(cells[0]["source"]))
    lists = [node.targets[0].id for node in parameters.body
             if isinstance(node, ast.Assign) and isinstance(node.value, ast.List)]
    setup = "".join(cells[1]["source"])
    assert "notebook.setup_logging()" in setup and "logging.INFO" not in setup
    for parameter in lists:
        assert f'{parameter} = notebook.as_list("{parameter}", {parameter}' in setup or \
            f'notebook.as_list("{parameter}", {parameter})' in setup, f"{name}: list parameter {parameter!r}"
    for parameter in (node.targets[0].id for node in parameters.body
                      if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)):
        assert f'{parameter} = notebook.as_counts("{parameter}", {parameter})' in setup, \
            f"{name}: mapping parameter {parameter!r}"
    for cell in cells:
        tree = ast.parse("\n".join(line for line in "".join(cell["source"]).splitlines()
                                   if not line.startswith(("%", "!"))))
        assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While)) for n in ast.walk(tree))


@pytest.mark.parametrize("name", pipeline.NOTEBOOKS)
def test_the_setup_cell_is_the_one_import_cell_and_its_imports_are_sorted(name):
    """Every module a notebook uses is named in one place, in the order isort (ruff's I rules) keeps."""
    cells = _cells(name)
    importing = [i for i, c in enumerate(cells)
                 if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(ast.parse("".join(c["source"]))))]
    assert importing == [1], f"{name}: imports in code cells {importing}; only the set-up cell (1) imports"
    imports = [n for n in ast.parse("".join(cells[1]["source"])).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    modules = [n.module if isinstance(n, ast.ImportFrom) else n.names[0].name for n in imports]
    assert modules == sorted(modules), f"{name}: imports not sorted by module"
    for n in imports:
        names = [a.name for a in n.names]
        assert names == sorted(names, key=str.lower), f"{name}: names of {modules} not sorted"


def test_06_analyze_reads_its_tables_without_loading_torch():
    """06 reads files: its set-up imports (tables, figures, the frontier's reader) load no model stack."""
    setup = ast.parse("".join(_cells("06_analyze")[1]["source"]))
    imports = "\n".join(ast.unparse(n) for n in setup.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    code = f"import sys\n{imports}\nprint(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=paths.repo_root())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", pipeline.NOTEBOOKS)
def test_papermill_reads_every_parameter(name):
    """A parameter papermill cannot parse (e.g. an '=' in its comment) is not declared: -p would not reach it."""
    assigned = [node.targets[0].id for node in ast.parse("".join(_cells(name)[0]["source"])).body
                if isinstance(node, ast.Assign)]
    assert sorted(pipeline.declared_parameters(paths.notebooks_dir() / f"{name}.ipynb")) == sorted(assigned)


@pytest.mark.parametrize("value, kind, expected", [
    (["popqa", "hotpotqa"], str, ["popqa", "hotpotqa"]),
    ('["closed_book","regrad"]', str, ["closed_book", "regrad"]),
    ("closed_book, regrad", str, ["closed_book", "regrad"]),
    ("popqa", str, ["popqa"]),
    ("[]", float, []),
    ("", float, []),
    ("0,0.5, 1", float, [0.0, 0.5, 1.0]),
    ("[0, 1]", float, [0.0, 1.0]),
    (None, str, None),
])
def test_list_parameters_accept_lists_json_and_commas(value, kind, expected):
    assert notebook.as_list("p", value, kind) == expected


@pytest.mark.parametrize("value, kind, pattern", [
    ('["popqa",', str, r"parameter datasets = '\[\"popqa\",' is not a JSON list .*-y 'datasets: \[\.\.\.\]'"),
    (3, str, r"parameter datasets = 3 \(int\) is not a list; pass -y 'datasets: \[\.\.\.\]' \(papermill\) or "
             r"-p datasets a,b"),
    ("0.5,high", float, r"parameter datasets = '0.5,high': an item is not float"),
    (5, float, r"parameter datasets = 5 \(int\) is not a list"),        # a scalar, as papermill gives -p gammas 5
    ("[true]", float, r"parameter datasets\[0\] = True \(bool\) is not a number"),
])
def test_bad_list_parameters_name_the_parameter_and_the_y_form(value, kind, pattern):
    with pytest.raises(ValueError, match=pattern):
        notebook.as_list("datasets", value, kind)


@pytest.mark.parametrize("value, expected", [
    ({"probe": 60}, {"probe": 60}),
    ('{"probe": 60, "popqa": null}', {"probe": 60, "popqa": None}),
    ("probe=60, popqa=None", {"probe": 60, "popqa": None}),
    ("{}", {}), ("", {}), (None, {}),
])
def test_count_parameters_accept_dicts_json_and_pairs(value, expected):
    assert notebook.as_counts("limit_per_dataset", value) == expected


@pytest.mark.parametrize("value, pattern", [
    ("{probe: 60}", "not a JSON object"), ("probe", "name=count"), ("probe=sixty", "probe = 'sixty' is not a count"),
    ({"probe": -1}, "not a count"), ({"probe": 1.5}, "not a count"), ({"probe": True}, "not a count"),
    ([60], "not a mapping"),
])
def test_bad_count_parameters_name_the_parameter(value, pattern):
    with pytest.raises(ValueError, match="limit_per_dataset") as info:
        notebook.as_counts("limit_per_dataset", value)
    assert pattern in str(info.value)
