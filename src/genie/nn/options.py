"""Nested option groups (a quantiser's settings, a model's aids) from themselves or the mapping YAML gives."""

from __future__ import annotations

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
