"""Typed parameters at the boundary: notebooks, the runner, ``launch`` flags, settings dataclasses, library calls.

Values arrive as text (papermill's ``-p``, command lines) or as Python values of the wrong type (a notebook
cell, a library call), and a wrong type must fail here, naming the parameter and the value, not three calls
later as ``'<' not supported between 'str' and 'int'`` — or, worse, pass: ``bool("false")`` is True.

- a boolean is ``True``/``False`` or the text ``true``/``false`` (any case); nothing else (not 0/1, not "yes");
- an integer is an ``int`` (never a bool, never a float) or its decimal text (``"8"``);
- a number is an ``int``/``float`` (never a bool) or its text;
- a list is a list/tuple, or text: a JSON list or ``a,b``; a scalar (``5``, ``True``) is refused;
- a name that becomes a folder (run, dataset, index, evaluation, adapter, preset) is a plain folder name:
  :func:`folder_name`.

:func:`coerce` applies these by a type annotation; :func:`check_fields` to every field of a dataclass (the
settings of 03/04/05, called first in their ``__post_init__``); :func:`typed` to a function's annotated
arguments (the library's entry points: ``train.train(..., overwrite="false")`` is ``overwrite=False``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from collections.abc import Sequence as AbcSequence
from typing import Any, Literal

MAX_NAME_BYTES = 255          # a file name's limit on common filesystems


class ParameterError(ValueError):
    """A parameter of the wrong type or form; the message names the parameter and the value."""


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def flag(name: str, value: Any) -> bool:
    """A boolean: True/False, or the text true/false in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ParameterError(f"parameter {name} = {_show(value)} is not a boolean: give True or False "
                         "(text: true or false)")


def integer(name: str, value: Any, *, minimum: int | None = None) -> int:
    """An integer (not a bool, not a float), or its decimal text; at least ``minimum`` when given."""
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"parameter {name} = {_show(value)} is not an integer: give a whole number "
                             "such as 3 (not True/False, not 2.5)")
    if minimum is not None and value < minimum:
        raise ParameterError(f"parameter {name} = {value!r} must be >= {minimum}")
    return value


def number(name: str, value: Any) -> int | float:
    """A number (int or float, not a bool), or its text; ints stay ints. Ranges (finite, positive) are the
    domain's to check (:func:`regrad_lib.config.check_number`)."""
    if isinstance(value, str):
        try:
            value = float(value) if not re.fullmatch(r"\s*[+-]?\d+\s*", value) else int(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(f"parameter {name} = {_show(value)} is not a number: give e.g. 1.0")
    return value


def text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ParameterError(f"parameter {name} = {_show(value)} is not text: give a string")
    return value


def listing(name: str, value: Any, item: Callable[[str, Any], Any] | None = None) -> list:
    """A list: a list/tuple, a JSON list text or ``"a,b"``; each item through ``item(name[i], value)``."""
    example = f"-y '{name}: [...]' (papermill) or -p {name} a,b"
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                items = json.loads(stripped)
            except json.JSONDecodeError as e:
                raise ParameterError(f"parameter {name} = {value!r} is not a JSON list ({e.msg}); pass "
                                     f"{example}") from None
        else:
            items = [part.strip() for part in stripped.split(",") if part.strip()]
    else:
        raise ParameterError(f"parameter {name} = {_show(value)} is not a list; pass {example}")
    return [item(f"{name}[{i}]", v) for i, v in enumerate(items)] if item else items


def folder_name(name: str, value: Any) -> str:
    """A name that becomes one folder (or file stem) inside the project's artifact folders: plain text, no path.

    Refused: not text, empty, surrounding spaces, ``.``/``..`` or any leading dot (the project's own temporary
    and hidden files start with one), a path separator, a control character, more than 255 bytes.
    """
    if not isinstance(value, str):
        raise ParameterError(f"{name} = {_show(value)} is not a name: give text such as 'demo'")
    problem = None
    if not value:
        problem = "it is empty"
    elif value != value.strip():
        problem = "it starts or ends with a space"
    elif "/" in value or "\\" in value:
        problem = "it holds a path separator"
    elif value.startswith("."):
        problem = "it starts with '.' ('.', '..' and hidden names are refused)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        problem = "it holds a control character"
    elif any(0xD800 <= ord(c) <= 0xDFFF for c in value):    # a byte that is no UTF-8, as Python decodes argv
        problem = "it is not UTF-8 text (a byte of another encoding)"
    elif len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"it is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        raise ParameterError(f"{name} = {value!r} is not a plain folder name ({problem}): it names one folder "
                             "inside the project's artifacts, e.g. 'demo' or 'my-run_2'; paths are not accepted")
    return value


# --- by annotation ----------------------------------------------------------------------------------------

_NONE_TEXT = ("None", "null")


def _arms(hint: Any) -> tuple[list, bool]:
    """(the non-None arms of a union hint, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return [a for a in args if a is not type(None)], type(None) in args
    return [hint], False


def coercer(hint: Any) -> Callable[[str, Any], Any] | None:
    """The checking function of a type annotation (bool, int, float, str, list[...], Sequence[...] and
    ``X | None`` of these), or None for any other annotation (left to the code that uses it)."""
    arms, optional = _arms(hint)
    if len(arms) != 1:
        return None
    [kind] = arms
    origin = typing.get_origin(kind)
    if kind is bool:
        inner = flag
    elif kind is int:
        inner = integer
    elif kind is float:
        inner = number
    elif kind is str:
        inner = text
    elif origin is list or origin is AbcSequence:
        item = coercer(typing.get_args(kind)[0]) if typing.get_args(kind) else None
        if origin is AbcSequence and item is text:      # a function taking names accepts one name as is
            def inner(name, value, item=item):
                return value if isinstance(value, str) else listing(name, value, item)
        else:
            def inner(name, value, item=item):
                return listing(name, value, item)
    elif origin is Literal:
        return None
    else:
        return None
    if not optional:
        return inner

    def maybe(name: str, value: Any):
        if value is None or (inner is not text and isinstance(value, str) and value.strip() in _NONE_TEXT):
            return None
        return inner(name, value)
    return maybe


def coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked (and converted from text) as the annotation ``hint`` says."""
    check = coercer(hint)
    return value if check is None else check(name, value)


def check_fields(obj: Any) -> None:
    """Check and convert every init field of the dataclass ``obj`` by its annotation (frozen ones too)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if not f.init or f.name not in hints:
            continue
        value = getattr(obj, f.name)
        checked = coerce(f.name, value, hints[f.name])
        if checked is not value:
            object.__setattr__(obj, f.name, checked)


def _hints(fn: Callable) -> dict[str, Any]:
    """The annotations of ``fn`` that resolve in its module (others, e.g. names imported late, are skipped)."""
    out = {}
    scope = inspect.unwrap(fn).__globals__      # the module of the function itself, below other decorators
    for name, annotation in getattr(fn, "__annotations__", {}).items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, scope)   # noqa: S307 - the function's own annotation
            except Exception:  # noqa: BLE001 - an annotation naming something not importable here: not checked
                continue
        out[name] = annotation
    return out


def typed(fn: Callable) -> Callable:
    """Decorator: the arguments of ``fn`` are checked and converted by their annotations before the call."""
    signature = inspect.signature(fn)
    plan: dict[str, Callable] | None = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal plan
        if plan is None:
            plan = {k: c for k, h in _hints(fn).items() if k != "return" and (c := coercer(h)) is not None}
        bound = signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            if name in plan and signature.parameters[name].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                        inspect.Parameter.VAR_KEYWORD):
                bound.arguments[name] = plan[name](name, value)
        return fn(*bound.args, **bound.kwargs)
    return wrapper
