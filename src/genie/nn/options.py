"""Config values from what YAML gives: nested option groups (a quantiser's settings, a model's aids) from
themselves or a mapping; sizes from one number or a pair."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def options_from(cls: type[T], value: Any, what: str, **defaults: Any) -> T:
    """``cls`` (a dataclass) from an instance of it or a mapping, ``defaults`` under the mapping's values; an
    unknown key is one clear error naming the group ``what`` and its valid options."""
    if isinstance(value, cls):
        return value
    values = {**defaults, **dict(value or {})}
    known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; valid options are {sorted(known)}")
    return cls(**values)


def size_pair(value: Any, what: str) -> tuple[int, int]:
    """``(h, w)`` from ``[h, w]`` or one number ``n`` (a square: ``(n, n)``), positive whole numbers; anything
    else is one clear error naming the setting ``what``."""
    try:
        h, w = (value, value) if not isinstance(value, Iterable) else value
        if isinstance(h, bool) or isinstance(w, bool):
            raise TypeError
        h, w = operator.index(h), operator.index(w)
    except (TypeError, ValueError):
        h = w = 0
    if h < 1 or w < 1:
        raise ValueError(
            f"{what} must be [height, width] or one size for a square, positive whole numbers; got {value!r}"
        )
    return h, w
