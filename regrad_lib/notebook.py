"""What the numbered notebooks share in their set-up cell: quiet logging and list parameters as papermill gives them.

- :func:`setup_logging`: library INFO lines ("wrote …/figures/x.png") would show as red stderr blocks between
  cells; notebooks show results, progress bars and warnings only (pass ``"INFO"`` to see everything).
- :func:`as_list`: papermill's ``-p datasets '["popqa"]'`` or ``-p datasets popqa,hotpotqa`` passes a *string*
  (only ``-y`` parses YAML); a list parameter accepts a list, a JSON list or a comma-separated string.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | int = "WARNING") -> None:
    """Log to the notebook at ``level`` (WARNING: warnings and errors only), replacing earlier handlers."""
    logging.basicConfig(level=level, format=FORMAT, force=True)


def as_list(name: str, value: Any, kind: Callable[[Any], Any] = str) -> list | None:
    """The list parameter ``name``: a list, a JSON list string (``'["a","b"]'``) or ``"a,b"``; items made ``kind``.

    None stays None (parameters where None means "the default"). Anything else fails naming the parameter and the
    ``-y`` form that passes a real list.
    """
    example = f"-y '{name}: [...]' (papermill) or -p {name} a,b"
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"parameter {name} = {value!r} is not a JSON list ({e.msg}); pass {example}") from None
        else:
            items = [part.strip() for part in text.split(",") if part.strip()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and kind is not str:
        items = [value]
    else:
        raise ValueError(f"parameter {name} = {value!r} ({type(value).__name__}) is not a list; pass {example}")
    try:
        return [kind(item) for item in items]
    except (TypeError, ValueError) as e:
        raise ValueError(f"parameter {name} = {value!r}: an item is not {getattr(kind, '__name__', kind)} ({e}); "
                         f"pass {example}") from None
