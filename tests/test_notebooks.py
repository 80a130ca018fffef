"""The numbered notebooks as files: one parameters cell first, no outputs stored, quiet logging, and every list
(mapping) parameter read through notebook.as_list (as_counts): papermill's -p passes them as strings."""

import ast
import json
import subprocess
import sys

import pytest

from regrad_lib.io import params, paths
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


def _set_up(name, **injected):
    """The namespace after a notebook's parameters cell, papermill's injected values and its set-up cell: what a
    kernel holds after ``papermill notebooks/<name>.ipynb out.ipynb -p key value`` ran those cells."""
    namespace: dict = {}
    cells = _cells(name)
    exec("".join(cells[0]["source"]), namespace)
    namespace.update(injected)
    exec("".join(cells[1]["source"]), namespace)
    return namespace


def _papermill(text):
    """A value as papermill's command line makes it of ``-p key text`` (True/False/None, numbers, else the text)."""
    from papermill.cli import _resolve_type
    return _resolve_type(text)


@pytest.mark.parametrize("name", pipeline.NOTEBOOKS)
def test_each_set_up_cell_types_its_parameters_first(name):
    source = "".join(_cells(name)[1]["source"])
    # the first statement after the imports (an import may run over several lines)
    first = next(n for n in ast.parse(source).body if not isinstance(n, (ast.Import, ast.ImportFrom))).lineno - 1
    setup = source.splitlines()
    assert setup[first:first + 2] == ["notebook.setup_logging()", f'notebook.type_parameters("{name}", globals())']


def test_booleans_passed_by_papermill_directly_are_typed_in_01(tiny_model_dir):
    """`papermill notebooks/01_index.ipynb out.ipynb -p probe false` indexed the probe's passages too;
    `-p transfer false` was refused with a message saying transfer = True."""
    ns = _set_up("01_index", probe=_papermill("false"), probe_binding=_papermill("false"),
                 transfer=_papermill("false"))
    assert (ns["probe"], ns["probe_binding"], ns["transfer"]) == (False, False, False)
    assert ns["corpus_path"] == paths.sample_corpus()          # the corpus alone: no probe added
    with pytest.raises(ValueError, match=r"parameter probe = 'no' \(str\) is not a boolean"):
        _set_up("01_index", probe=_papermill("no"))


@pytest.mark.parametrize("key, text, message", [
    ("probe", "yes", r"parameter probe = 'yes' \(str\) is not a boolean"),
    ("limit", "-1", r"parameter limit = -1 must be >= 1"),
    ("train_limit", "-2", r"parameter train_limit = -2 must be >= 1"),
    ("topk", "0", r"parameter topk = 0 must be >= 1"),
    ("seed", str(2**70), r"parameter seed = 1180591620717411303424 must be <= 4294967295"),
    ("limit", "2.5", r"parameter limit = 2.5 \(float\) is not an integer"),
])
def test_the_notebooks_and_the_runner_refuse_alike(key, text, message):
    """One rule: the runner's typing of -p key text and a notebook's of papermill's value give the same error."""
    with pytest.raises(params.ParameterError, match=message):
        notebook.typed_parameters({key: pipeline.parse_value(text)})
    owner = next(n for n in pipeline.NOTEBOOKS if key in notebook.parameters_cell(paths.notebooks_dir() / f"{n}.ipynb"))
    namespace = {key: _papermill(text)}
    with pytest.raises(params.ParameterError, match=message):
        notebook.type_parameters(owner, namespace)


def test_text_parameters_keep_the_text_papermill_made_a_number_of():
    """05 `-p question 5` failed with an AttributeError; the runner passes the text "5"."""
    namespace = {"question": _papermill("5"), "index": _papermill("2024"), "limit": _papermill("3"), "gamma": None}
    notebook.type_parameters("05_evaluate", namespace)
    assert namespace == {"question": "5", "index": "2024", "limit": 3, "gamma": None}
    assert notebook.typed_parameters({"question": "5", "index": "2024", "limit": 3}) == \
        {"question": "5", "index": "2024", "limit": 3}


def test_05_applies_its_cpt_parameters_before_it_checks_them():
    """`-p methods cpt -p general_datasets popqa` was refused naming data/augmented/hotpotqa/train_all.json: the
    settings were checked with the default general_datasets before the cpt parameters were applied."""
    import dataclasses

    from regrad_lib.evaluation import evaluate

    setup = ast.parse("".join(_cells("05_evaluate")[1]["source"]))
    [call] = [n for n in ast.walk(setup)
              if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "EvaluateSettings"]
    declared = set(notebook.parameters_cell(paths.notebooks_dir() / "05_evaluate.ipynb"))
    fields = {f.name for f in dataclasses.fields(evaluate.EvaluateSettings) if f.init}
    assert declared & fields <= {k.arg for k in call.keywords}, "settings built without some of their parameters"


def test_01s_sample_query_is_searched_by_the_library_that_names_it():
    """`-p query ''` failed with a bare AssertionError in 01's cell `assert len(hits) == topk`."""
    source = "".join(c for cell in _cells("01_index") for c in cell["source"])
    assert "retrieval.search_one(bm25, query, topk)" in source and "assert len(hits)" not in source


@pytest.mark.parametrize("name", pipeline.NOTEBOOKS)
def test_each_notebooks_defaults_pass_its_own_typing_unchanged(name):
    """Run All in JupyterLab: the set-up cell's typing keeps every default as it is."""
    defaults = notebook.parameters_cell(paths.notebooks_dir() / f"{name}.ipynb")
    namespace = dict(defaults)
    notebook.type_parameters(name, namespace)
    assert namespace == defaults
