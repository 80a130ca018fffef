"""What the numbered notebooks share in their set-up cell: quiet logging and list parameters as papermill gives them.

- :func:`setup_logging`: library INFO lines ("wrote …/figures/x.png") would show as red stderr blocks between
  cells; notebooks show results, progress bars and warnings only (pass ``"INFO"`` to see everything).
- :func:`as_list`: papermill's ``-p datasets '["popqa"]'`` or ``-p datasets popqa,hotpotqa`` passes a *string*
  (only ``-y`` parses YAML); a list parameter accepts a list, a JSON list or a comma-separated string.
- :func:`as_counts`: the same for a dataset → count mapping (``-p limit_per_dataset probe=60``).
- :func:`flag`: a boolean parameter used by the notebook itself (``-p probe false`` arrives as the text "false").

Scalar parameters given to a library call (a settings dataclass, ``retrieval.build``) are typed there, by
:mod:`regrad_lib.io.params`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from regrad_lib.io import params

__all__ = ["as_counts", "as_list", "setup_logging"]

FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | int = "WARNING") -> None:
    """Log to the notebook at ``level`` (WARNING: warnings and errors only), replacing earlier handlers."""
    logging.basicConfig(level=level, format=FORMAT, force=True)


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
