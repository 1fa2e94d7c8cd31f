"""Checking decoded input values against parameter annotations.

Only what a caller can send is checked: plain classes, unions and Optional, Literal,
and list/tuple/dict containers with their element types. No value is converted. Anything else (type
variables, protocols, callables, ...) is accepted as is.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Check = Callable[[object], str | None]
"""Returns None when the value fits, else what was expected ("list[int]")."""

_MAX_ITEMS_CHECKED = 10_000


def _accept(value: object) -> str | None:
    return None


def _name(annotation: object) -> str:
    # A generic alias such as list[int] passes isinstance(..., type) on Python 3.10.
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "")


def checker(annotation: object) -> Check:
    """A function that checks values against ``annotation``."""
    if annotation is Any or annotation is object or annotation is typing.Any:
        return _accept
    if annotation is None or annotation is type(None):
        return lambda v: None if v is None else "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        options = [checker(a) for a in args]
        name = _name(annotation)
        return lambda v: None if any(c(v) is None for c in options) else name
    if origin is typing.Literal:
        allowed = args
        return lambda v: (
            None
            if any(v == a and type(v) is type(a) for a in allowed)
            else (f"one of {', '.join(map(repr, allowed))}")
        )
    if origin in (list, Sequence, tuple) and args:
        return _sequence_checker(annotation, origin, args)
    if origin in (dict, Mapping) and len(args) == 2:
        return _mapping_checker(annotation, args)
    if origin is not None:
        annotation = origin
    if isinstance(annotation, type):
        return _class_checker(annotation)
    return _accept


def _class_checker(cls: type) -> Check:
    name = cls.__qualname__
    if cls is float:
        # JSON has one number type: an int is a fine float.
        return lambda v: None if type(v) in (float, int) else name
    if cls is int:
        return lambda v: None if type(v) is int else name
    if cls is tuple:
        return lambda v: None if isinstance(v, (tuple, list)) else name
    return lambda v: None if isinstance(v, cls) else name


def _sequence_checker(annotation: object, origin: object, args: tuple[object, ...]) -> Check:
    name = _name(annotation)
    # JSON has no tuples: a list is a fine tuple (and is passed as a list).
    container: type | tuple[type, ...] = list if origin is list else (list, tuple)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        fixed = [checker(a) for a in args]

        def check_fixed(v: object) -> str | None:
            if not isinstance(v, (list, tuple)) or len(v) != len(fixed):
                return name
            return None if all(c(x) is None for c, x in zip(fixed, v, strict=True)) else name

        return check_fixed
    element = checker(args[0])

    def check(v: object) -> str | None:
        if not isinstance(v, container) or isinstance(v, (str, bytes)):
            return name
        if element is _accept:
            return None
        for i, x in enumerate(typing.cast("list[object]", v)):
            if i >= _MAX_ITEMS_CHECKED:
                break
            if element(x) is not None:
                return name
        return None

    return check


def _mapping_checker(annotation: object, args: tuple[object, ...]) -> Check:
    name = _name(annotation)
    key, value = checker(args[0]), checker(args[1])

    def check(v: object) -> str | None:
        if not isinstance(v, dict):
            return name
        for i, (k, x) in enumerate(v.items()):
            if i >= _MAX_ITEMS_CHECKED:
                break
            if key(k) is not None or value(x) is not None:
                return name
        return None

    return check


def describe(value: object) -> str:
    """A short name for the type of a value, for error messages."""
    return "None" if value is None else type(value).__qualname__
