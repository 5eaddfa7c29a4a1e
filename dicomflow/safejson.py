"""JSON from clients with bounded nesting: a clear ValueError instead of a RecursionError deep in a handler.

Python's ``json`` parser recurses once per level and raises ``RecursionError`` near 1 000 levels;
code that walks or re-encodes a decoded value recurses too. Every entry point that decodes
client JSON uses :func:`loads` (or :func:`check_depth` on a value something else decoded), so
hostile nesting becomes an ordinary bad-input error.
"""

from __future__ import annotations

import json
from typing import Any

#: Deeper than any request, event or answer of this project needs (they nest 3-6 levels).
MAX_DEPTH = 64


class JsonDepthError(ValueError):
    """The JSON value nests deeper than allowed."""


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), counted without recursion up to ``limit + 1``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        stack.extend((child, level) for child in children if isinstance(child, dict | list | tuple))
    return deepest


def check_depth(value: Any, what: str = "the JSON value", limit: int = MAX_DEPTH) -> Any:
    """``value`` unchanged, or :class:`JsonDepthError` if it nests deeper than ``limit``."""
    if depth(value, limit) > limit:
        raise JsonDepthError(f"{what} nests deeper than {limit} levels; send a flat object")
    return value


def loads(raw: str | bytes | bytearray, what: str = "the JSON value", limit: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises :class:`JsonDepthError` (a ValueError) for nesting deeper than ``limit``."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise JsonDepthError(f"{what} nests deeper than {limit} levels; send a flat object") from None
    return check_depth(value, what, limit)
