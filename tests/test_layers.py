"""The library's import graph has no circles and only points down the layers of docs/design.md ("Layers"), read
from the source with ``ast``.

Every import of a ``regrad_lib`` module counts, also one inside a function (it is still a dependency, only a
later one), and so does one under ``if TYPE_CHECKING:`` (a type that points up the layers is a dependency too).
"""

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "regrad_lib"


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """The regrad_lib modules a module's source imports (relative or absolute)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 or base.startswith("regrad_lib"):
                base = base.removeprefix("regrad_lib").lstrip(".")
                if base:
                    found.add(base.split(".")[0])
                else:                                    # from . import a, b
                    found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("regrad_lib.") and a.name.split(".")[1] in modules)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found & modules


def import_graph(folder: Path = LIB) -> dict[str, set[str]]:
    """``{module: the library modules it imports}`` for every module of ``folder`` (``__init__`` left out)."""
    files = {p.stem: p for p in folder.glob("*.py") if p.stem != "__init__"}
    return {name: _imports(ast.parse(file.read_text(encoding="utf-8")), set(files)) - {name}
            for name, file in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (depth-first search, modules in sorted order)."""
    state: dict[str, int] = {}         # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node], _ = 2, path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


# docs/design.md, "Layers": a module may import modules of its own layer (no circle) and of the layers below.
LAYERS = {
    0: "paths artifacts config checkpoint run_state schemes metrics distributed notebook pipeline tolerance "
       "params ownership runlock tensorfile",
    1: "corpus qa_records pubmedqa datasets retriever retrieval_es retrieval probe probe_binding probe_transfer corpora augment prompts",
    2: "lora tiny_model modeling regrad tasks generation bank_format bank bank_writer methods adapters learner",
    3: "analysis effects binding transfer forgetting figure_style training_plots bank_plots plots reference_tables reference_render "
       "reference_compare reference",
    4: "harness results lazy_learner sweeps train_data schedule run_folder train encode drift cpt evaluate frontier explore "
       "launch",
    5: "testing",
}
LAYER = {m: n for n, names in LAYERS.items() for m in names.split()}


def test_every_module_has_a_layer():
    assert sorted(set(import_graph()) - set(LAYER)) == [], "place new modules in LAYERS (and docs/design.md)"
    assert sorted(set(LAYER) - set(import_graph())) == [], "LAYERS names a module that no longer exists"


def test_imports_point_down_the_layers():
    upward = [f"{m} (layer {LAYER[m]}) imports {d} (layer {LAYER[d]})"
              for m, deps in sorted(import_graph().items()) for d in sorted(deps) if LAYER[d] > LAYER[m]]
    assert upward == []


def test_the_library_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle in regrad_lib: " + " -> ".join(cycle)


def test_the_cycle_finder_names_a_planted_circle(tmp_path):
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .c import x\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import d\n"
                                   "import regrad_lib.a\n")
    (tmp_path / "d.py").write_text("from . import c\n")
    graph = import_graph(tmp_path)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"c"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import d\n")
    assert find_cycle(import_graph(tmp_path)) == ["c", "d", "c"]     # a type-only import closes a circle too
    (tmp_path / "c.py").write_text("x = 1\n")
    assert find_cycle(import_graph(tmp_path)) is None


@pytest.mark.parametrize("module", ["testing"])
def test_no_library_module_imports_the_test_helpers(module):
    importers = sorted(m for m, deps in import_graph().items() if module in deps)
    assert importers == [], f"{importers} import regrad_lib.{module}, which is for tests and benchmarks only"
