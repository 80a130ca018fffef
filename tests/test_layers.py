"""The library's import graph has no circles and only points down the layers of docs/design.md ("Layers"), read
from the source with ``ast``.

The layers are made of packages (``regrad_lib/<package>/``) and the two top-level modules ``config`` and
``testing``. Every import of a ``regrad_lib`` module counts, also one inside a function (it is still a dependency,
only a later one), and so does one under ``if TYPE_CHECKING:`` (a type that points up the layers is a dependency too).
"""

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "regrad_lib"


def module_names(folder: Path = LIB) -> dict[str, Path]:
    """``{dotted name below regrad_lib: file}``; a package's ``__init__`` is the package's own name."""
    out = {}
    for p in sorted(folder.rglob("*.py")):
        parts = list(p.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = p
    return out


def _imports(tree: ast.AST, here: str, is_package: bool, modules: set[str]) -> set[str]:
    """The regrad_lib modules a module's source imports (absolute or relative)."""
    found: set[str] = set()

    def target(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".") if is_package else here.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                base = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("regrad_lib"):
                base = node.module.removeprefix("regrad_lib").lstrip(".")
            else:
                continue
            for a in node.names:
                full = f"{base}.{a.name}" if base else a.name
                hit = full if full in modules else target(base)
                if hit:
                    found.add(hit)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("regrad_lib."):
                    hit = target(a.name.removeprefix("regrad_lib."))
                    if hit:
                        found.add(hit)
    return found - {here}


def import_graph(folder: Path = LIB) -> dict[str, set[str]]:
    """``{module: the library modules it imports}`` for every module of ``folder`` (the root ``__init__`` left out)."""
    files = module_names(folder)
    return {name: _imports(ast.parse(file.read_text(encoding="utf-8")), name, file.name == "__init__.py", set(files))
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


# docs/design.md, "Layers": a package may import packages of its own layer (never in a circle) and of the layers below.
LAYERS = {
    0: "io config",
    1: "data",
    2: "retrieval core",
    3: "bank",
    4: "answering reporting",
    5: "training",
    6: "cpt",
    7: "evaluation",
    8: "runner",
    9: "testing",
}
LAYER = {unit: n for n, names in LAYERS.items() for unit in names.split()}


def unit(module: str) -> str:
    """The package (or top-level module) a module belongs to."""
    return module.split(".")[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        out.setdefault(unit(m), set()).update(unit(d) for d in deps if unit(d) != unit(m))
    return out


def test_every_package_has_a_layer():
    units = {unit(m) for m in import_graph()}
    assert sorted(units - set(LAYER)) == [], "place new packages in LAYERS (and docs/design.md)"
    assert sorted(set(LAYER) - units) == [], "LAYERS names a package that no longer exists"


def test_imports_point_down_the_layers():
    upward = [f"{m} (layer {LAYER[unit(m)]}) imports {d} (layer {LAYER[unit(d)]})"
              for m, deps in sorted(import_graph().items()) for d in sorted(deps) if LAYER[unit(d)] > LAYER[unit(m)]]
    assert upward == []


def test_the_library_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle in regrad_lib: " + " -> ".join(cycle)


def test_packages_of_one_layer_have_no_circle():
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "packages import each other: " + " -> ".join(cycle)


def test_the_cycle_finder_names_a_planted_circle(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "__init__.py").write_text("")
    (tmp_path / "a.py").write_text("from regrad_lib.p import b\n")
    (tmp_path / "p" / "b.py").write_text("def f():\n    from .c import x\n")
    (tmp_path / "p" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import d\n"
                                         "import regrad_lib.a\n")
    (tmp_path / "p" / "d.py").write_text("from ..p import c\n")
    graph = import_graph(tmp_path)
    assert graph == {"a": {"p.b"}, "p": set(), "p.b": {"p.c"}, "p.c": {"a", "p.d"}, "p.d": {"p.c"}}
    assert find_cycle(graph) == ["a", "p.b", "p.c", "a"]
    assert find_cycle(package_graph(graph)) == ["a", "p", "a"]
    (tmp_path / "p" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import d\n")
    assert find_cycle(import_graph(tmp_path)) == ["p.c", "p.d", "p.c"]     # a type-only import closes a circle too
    (tmp_path / "p" / "c.py").write_text("x = 1\n")
    assert find_cycle(import_graph(tmp_path)) is None


@pytest.mark.parametrize("module", ["testing"])
def test_no_library_module_imports_the_test_helpers(module):
    importers = sorted(m for m, deps in import_graph().items() if module in deps)
    assert importers == [], f"{importers} import regrad_lib.{module}, which is for tests and benchmarks only"
