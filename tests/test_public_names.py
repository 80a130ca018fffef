"""Every name has one home, read from the source with ``ast`` (as tests/test_layers.py reads the imports):

- a name asked of a ``regrad_lib`` module (``module.name`` or ``from module import name``) is defined in that module:
  no module re-exports another's names, so the import line says which file holds the code;
- no module uses another module's private names (``_name``): what other modules need is public and named for it
  (the library, benchmarks, experiments, tools and notebooks; tests may test a module's internals);
- the modules the notebooks import declare their public surface in ``__all__``, every name in it is defined there,
  and the notebooks use nothing else of them.

A monkeypatch (``setattr(module, "name", ...)``) is not a use: patching a name where a module looks it up is what
tests of that module do.
"""

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USERS = ("regrad_lib", "bench", "experiments", "tools")        # besides the notebooks; tests/ are checked apart


def library(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted module name: file}`` of ``root/regrad_lib`` (a package under its own name)."""
    out = {}
    for p in sorted((root / "regrad_lib").rglob("*.py")):
        parts = ["regrad_lib", *p.relative_to(root / "regrad_lib").with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def defined(tree: ast.Module) -> set[str]:
    """The names a module's own top-level code binds (functions, classes, assignments, also under if/try/with)."""
    out: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With)):
                targets = (node.targets if isinstance(node, ast.Assign) else
                           [i.optional_vars for i in node.items if i.optional_vars] if isinstance(node, ast.With)
                           else [node.target])
                out.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
            for field in ("body", "orelse", "finalbody", "handlers"):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    visit(getattr(node, field, []) or [])
    visit(tree.body)
    return out


def dunder_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


class Modules:
    """What every library module defines and declares public."""

    def __init__(self, root: Path = ROOT):
        self.files = library(root)
        self.trees = {m: ast.parse(f.read_text(encoding="utf-8")) for m, f in self.files.items()}
        self.defined = {m: defined(t) | {s.rpartition(".")[2] for s in self.files if s.rpartition(".")[0] == m}
                        for m, t in self.trees.items()}
        self.public = {m: dunder_all(t) for m, t in self.trees.items()}


def sources(root: Path = ROOT, folders=USERS, notebooks: bool = True):
    """``(where, its module name or None, code)`` of every Python file of ``folders`` and every notebook's code."""
    for folder in folders:
        for p in sorted((root / folder).rglob("*.py")):
            parts = p.relative_to(root).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield str(p.relative_to(root)), module, p.read_text(encoding="utf-8")
    if notebooks:
        for p in sorted((root / "notebooks").glob("*.ipynb")):
            cells = json.loads(p.read_text(encoding="utf-8"))["cells"]
            code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
            yield str(p.relative_to(root)), None, "\n".join(line for line in code.splitlines()
                                                           if not line.startswith(("%", "!")))


def uses(code: str, modules: Modules):
    """``(line, module, name, how)`` for every name asked of a library module in ``code``: ``module.name`` through
    a module bound by an import (in its own scope: a function's local of the same name is not the module) or
    ``from module import name``; ``how`` is "attribute" or "import"."""
    found = []

    def bound_modules(body_nodes) -> tuple[dict[str, str], set[str]]:
        """(names bound to library modules by imports of this scope, other names this scope binds)."""
        aliases, others = {}, set()
        for node in body_nodes:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("regrad_lib") and not node.level:
                for a in node.names:
                    if f"{node.module}.{a.name}" in modules.files:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                    else:
                        others.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in modules.files and a.asname:
                        aliases[a.asname] = a.name
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                others.add(node.id)
            elif isinstance(node, ast.arg):
                others.add(node.arg)
        return aliases, others - set(aliases)

    def scope_nodes(scope):
        """The nodes of a scope without those of the functions and classes nested in it."""
        todo, out = list(ast.iter_child_nodes(scope)), []
        while todo:
            node = todo.pop()
            out.append(node)
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                todo.extend(ast.iter_child_nodes(node))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                out.extend(node.args.args + node.args.kwonlyargs + node.args.posonlyargs)
        return out

    def visit(scope, outer: dict[str, str]):
        nodes = scope_nodes(scope)
        local, others = bound_modules(nodes)
        aliases = {**{k: v for k, v in outer.items() if k not in others}, **local}
        patched = {id(n.args[0]) for n in nodes if isinstance(n, ast.Call) and len(n.args) >= 2
                   and getattr(n.func, "attr", getattr(n.func, "id", None)) == "setattr"}
        for node in nodes:
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and id(node.value) not in patched):
                found.append((node.lineno, aliases[node.value.id], node.attr, "attribute"))
            elif isinstance(node, ast.ImportFrom) and node.module in modules.files and not node.level:
                found.extend((node.lineno, node.module, a.name, "import") for a in node.names
                             if f"{node.module}.{a.name}" not in modules.files)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                visit(node, aliases)

    visit(ast.parse(code), {})
    return sorted(found)


def reexports(modules: Modules, sources_) -> list[str]:
    return [f"{where}:{line}: {module}.{name} is not defined there" for where, _, code in sources_
            for line, module, name, _ in uses(code, modules)
            if name not in modules.defined[module] and not name.startswith("__")]


def private_uses(modules: Modules, sources_) -> list[str]:
    return [f"{where}:{line}: {module}.{name}" for where, own, code in sources_
            for line, module, name, _ in uses(code, modules)
            if name.startswith("_") and not name.startswith("__") and module != own]


@pytest.fixture(scope="module")
def modules():
    return Modules()


def test_every_name_is_asked_of_the_module_that_defines_it(modules):
    assert reexports(modules, sources(folders=(*USERS, "tests"))) == []


def test_no_module_uses_another_modules_private_names(modules):
    assert private_uses(modules, sources()) == []


def test_every_name_in___all___is_defined_in_its_module(modules):
    missing = [f"{m}.__all__ names {n!r}" for m, names in modules.public.items() if names
               for n in names if n not in modules.defined[m]]
    assert missing == []


def test_the_notebooks_use_only_the_public_surface_of_the_modules_they_import(modules):
    problems = []
    for where, _, code in sources(folders=()):
        for line, module, name, _ in uses(code, modules):
            if modules.public[module] is None:
                problems.append(f"{where}: imports {module}, which declares no __all__")
            elif name not in modules.public[module]:
                problems.append(f"{where}:{line}: {module}.{name} is not in its __all__")
    assert sorted(set(problems)) == []


def test_the_checks_name_a_planted_reexport_a_private_use_and_an_unknown_public_name(tmp_path):
    lib = tmp_path / "regrad_lib"
    (lib / "p").mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    (lib / "p" / "__init__.py").write_text("")
    (lib / "p" / "a.py").write_text("__all__ = ['f', 'gone']\n\ndef f():\n    pass\n\ndef _g():\n    pass\n")
    (lib / "p" / "b.py").write_text("from regrad_lib.p.a import f\n\ndef h():\n    pass\n")
    (lib / "p" / "c.py").write_text(
        "from regrad_lib.p import a, b\nfrom regrad_lib.p.b import f\n\n"
        "def k(monkeypatch):\n    a._g()\n    b.h()\n    b.f()\n    monkeypatch.setattr(b, 'f', None)\n\n"
        "def local(b):\n    return b.f()\n")
    mods = Modules(tmp_path)
    found = list(sources(tmp_path, ("regrad_lib",), notebooks=False))
    assert reexports(mods, found) == ["regrad_lib/p/c.py:2: regrad_lib.p.b.f is not defined there",
                                      "regrad_lib/p/c.py:7: regrad_lib.p.b.f is not defined there"]
    assert private_uses(mods, found) == ["regrad_lib/p/c.py:5: regrad_lib.p.a._g"]
    assert [n for n in mods.public["regrad_lib.p.a"] if n not in mods.defined["regrad_lib.p.a"]] == ["gone"]
