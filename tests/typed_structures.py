"""Comparing structured field values with their types spelled out.

Token("a") == "a", True == 1 and 1 == 1.0 in Python, so tests compare these forms.
"""

from __future__ import annotations

from typing import Any

from dispatchlet.core.structured_fields import Date, DisplayString, InnerList, Item, Member, Token


def typed_bare(value: Any) -> tuple[str, Any]:
    for kind in (bool, Token, DisplayString, Date, int, float, str, bytes):
        if isinstance(value, kind):
            return kind.__name__, value
    raise AssertionError(f"not a bare item: {value!r}")


def typed_params(params: dict[str, Any]) -> list[tuple[str, tuple[str, Any]]]:
    return [(key, typed_bare(value)) for key, value in params.items()]


def typed_member(member: Member) -> Any:
    if isinstance(member, InnerList):
        return ("inner", [typed_member(item) for item in member.items], typed_params(member.params))
    assert isinstance(member, Item), member
    return ("item", typed_bare(member.value), typed_params(member.params))


def typed(structure: Any) -> Any:
    if isinstance(structure, dict):
        return [(key, typed_member(member)) for key, member in structure.items()]
    if isinstance(structure, list):
        return [typed_member(member) for member in structure]
    return typed_member(structure)
