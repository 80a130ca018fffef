"""What the numbered notebooks share in their set-up cell: quiet logging, their parameters typed, and list parameters
as papermill gives them.

- :func:`setup_logging`: library INFO lines ("wrote …/figures/x.png") would show as red stderr blocks between
  cells; notebooks show results, progress bars and warnings only (pass ``"INFO"`` to see everything).
- :func:`type_parameters`: every parameter of the notebook's ``parameters`` cell checked and converted by the type of
  its defaults in all the numbered notebooks (:func:`typed`), in the notebook's own namespace: ``papermill
  notebooks/01_index.ipynb out.ipynb -p probe false`` passes the text "false", which must not be read as True. The
  runner (:mod:`regrad_lib.runner.pipeline`) types its parameters with the same :func:`typed_parameters` before it
  runs any notebook, so papermill called directly and the runner behave alike.
- :func:`as_list`: papermill's ``-p datasets '["popqa"]'`` or ``-p datasets popqa,hotpotqa`` passes a *string*
  (only ``-y`` parses YAML); a list parameter accepts a list, a JSON list or a comma-separated string.
- :func:`as_counts`: the same for a dataset → count mapping (``-p limit_per_dataset probe=60``).
- :func:`flag`: a boolean parameter used by the notebook itself (``-p probe false`` arrives as the text "false").

Scalar parameters given to a library call (a settings dataclass, ``retrieval.build``) are typed there, by
:mod:`regrad_lib.io.params`.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from regrad_lib.io import params, paths

__all__ = ["as_counts", "as_list", "parameter_defaults", "parameters_cell", "setup_logging", "type_parameters",
           "typed_parameters"]

FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | int = "WARNING") -> None:
    """Log to the notebook at ``level`` (WARNING: warnings and errors only), replacing earlier handlers."""
    logging.basicConfig(level=level, format=FORMAT, force=True)


# --- typed parameters: one rule for the notebooks' set-up cells and the runner ------------------------------------

# The integer parameters and their bounds (a name means the same in every notebook; those whose defaults are all
# None are integers too): a negative limit would be a Python slice (questions [0:-1]), a seed beyond 32 bits
# overflows numpy's generator.
BOUNDS: dict[str, tuple[int, int | None]] = {
    "topk": (1, None), "limit": (1, None), "train_limit": (1, None), "max_train_tasks": (1, None),
    "max_steps": (1, None), "start": (0, None), "batch_size": (1, None), "num_processes": (1, None),
    "seed": (0, 2**32 - 1), "cpt_epochs_per_chunk": (1, None), "cpt_chunks": (1, None),
}


def parameters_cell(source: str | Path) -> dict[str, Any]:
    """The parameters a notebook's ``parameters`` cell declares, each with its default (``...`` where the default
    is no literal); ``source``: a notebook file."""
    nb = json.loads(Path(source).read_text(encoding="utf-8"))
    cell = next((c for c in nb.get("cells", []) if c.get("cell_type") == "code"
                 and "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        return {}
    text = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    out: dict[str, Any] = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                out[node.targets[0].id] = ...
    return out


def parameter_defaults() -> dict[str, list[Any]]:
    """Each parameter's literal defaults in the ``parameters`` cells of all the numbered notebooks."""
    out: dict[str, list[Any]] = {}
    for source in sorted(paths.notebooks_dir().glob("[0-9][0-9]_*.ipynb")):
        for name, default in parameters_cell(source).items():
            if default is not ...:
                out.setdefault(name, []).append(default)
    return out


def typed(key: str, value: Any, defaults: Any = ()) -> Any:
    """``value`` of the parameter ``key`` checked against the type of its defaults (:mod:`regrad_lib.io.params`):
    a boolean default takes true/false only, an integer one an integer (within :data:`BOUNDS`), a number one a
    number, a list one a list or its text, a text one text (a number papermill made of ``-p index 5`` is its text
    again, as the runner keeps it); None passes (each notebook decides what None means), other kinds are left to
    the notebook."""
    kinds = {type(d) for d in defaults if d is not None} or ({int} if key in BOUNDS else set())
    if value is None or not kinds:
        return value
    if kinds == {bool}:
        return params.flag(key, value)
    if kinds == {int}:
        low, high = BOUNDS.get(key, (None, None))
        number = params.integer(key, value, minimum=low)
        if high is not None and number > high:
            raise params.ParameterError(f"parameter {key} = {number!r} must be <= {high}")
        return number
    if kinds <= {int, float}:
        return params.number(key, value)
    if kinds == {list}:
        return value if isinstance(value, str) else params.listing(key, value)
    if kinds == {str}:
        return str(value) if isinstance(value, (int, float)) else params.text(key, value)
    return value


def typed_parameters(shared: dict[str, Any]) -> dict[str, Any]:
    """``shared`` with every value checked against its defaults in all the notebooks (a parameter name means
    the same everywhere: 02's ``limit = 30`` types 05's ``limit = None``), so a wrong type fails before any
    notebook runs, naming the parameter (not "05_evaluate failed in cell 5")."""
    defaults = parameter_defaults()
    return {k: typed(k, v, defaults.get(k, ())) for k, v in shared.items()}


def type_parameters(notebook: str, namespace: dict[str, Any]) -> None:
    """In ``namespace`` (the set-up cell's ``globals()``), every parameter the notebook ``notebook`` (e.g.
    ``"01_index"``) declares, typed as the runner types it (:func:`typed_parameters`); a wrong one fails here,
    naming the parameter."""
    declared = parameters_cell(paths.notebooks_dir() / f"{notebook}.ipynb")
    if not declared:
        raise FileNotFoundError(f"{paths.relative(paths.notebooks_dir() / f'{notebook}.ipynb')} has no parameters "
                                "cell: give the name of a numbered notebook, e.g. '01_index'")
    namespace.update(typed_parameters({k: namespace[k] for k in declared if k in namespace}))


def as_list(name: str, value: Any, kind: Callable[[Any], Any] = str) -> list | None:
    """The list parameter ``name``: a list, a JSON list string (``'["a","b"]'``) or ``"a,b"``; items made ``kind``
    (float and int items by :mod:`regrad_lib.io.params`: True is no number).

    None stays None (parameters where None means "the default"). A scalar (``5``: papermill turns ``-p gammas 5``
    into a number) and anything else fail naming the parameter and the forms that pass a list.
    """
    example = f"-y '{name}: [...]' (papermill) or -p {name} a,b"
    if value is None:
        return None
    items = params.listing(name, value)
    typed = {float: lambda n, v: float(params.number(n, v)), int: params.integer}.get(kind)
    try:
        return [typed(f"{name}[{i}]", item) if typed else kind(item) for i, item in enumerate(items)]
    except (TypeError, ValueError) as e:
        raise ValueError(f"parameter {name} = {value!r}: an item is not {getattr(kind, '__name__', kind)} ({e}); "
                         f"pass {example}") from None


def flag(name: str, value: Any) -> bool:
    """A boolean parameter: True/False or the text true/false (``bool("false")`` would be True)."""
    return params.flag(name, value)


def as_counts(name: str, value: Any) -> dict[str, int | None]:
    """The mapping parameter ``name`` (dataset → count or None): a dict, a JSON object string
    (``'{"probe": 60}'``), ``"probe=60,popqa=None"``, or None / ``""`` for none.
    """
    example = f"-y '{name}: {{probe: 60}}' (papermill) or -p {name} probe=60"
    if value is None:
        return {}
    if isinstance(value, str):
        parsed = _json_or_parts(name, value, "{", "a JSON object", example)
        if isinstance(parsed, list):
            if any("=" not in part for part in parsed):
                raise ValueError(f"parameter {name} = {value!r} is not name=count pairs; pass {example}")
            parsed = {k.strip(): (None if v.strip() in ("None", "null") else v.strip())
                      for k, v in (part.split("=", 1) for part in parsed)}
        value = parsed
    if not isinstance(value, dict):
        raise ValueError(f"parameter {name} = {value!r} ({type(value).__name__}) is not a mapping; pass {example}")
    counts: dict[str, int | None] = {}
    for key, count in value.items():
        if isinstance(count, str) and count.strip().isdigit():
            count = int(count)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise ValueError(f"parameter {name}: {key} = {count!r} is not a count (a whole number ≥ 0 or None)")
        counts[str(key)] = count
    return counts


def _json_or_parts(name: str, value: str, opener: str, what: str, example: str) -> Any:
    """``value`` parsed as JSON when it starts with ``opener``, else its non-empty comma-separated parts."""
    text = value.strip()
    if not text.startswith(opener):
        return [part.strip() for part in text.split(",") if part.strip()]
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"parameter {name} = {value!r} is not {what} ({e.msg}); pass {example}") from None
