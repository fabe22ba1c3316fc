"""What the vectors of a store are, and the one check that two descriptions agree.

Vectors are comparable only when they were made the same way: same model, layer, pooling, views and dim.
Stores, indexes, probes and alignment maps all record this identity and refuse vectors of another; they all
compare and describe it here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from offshelf.errors import StoreError

# Fields of a manifest that must agree for two sets of features to share a store.
IDENTITY_FIELDS = ("model", "layer", "pool", "augment", "dim")


def describe_identity(identity: Mapping[str, Any] | None) -> str:
    """`model=..., layer=..., ...` in the canonical order (extra fields last)."""
    if not identity:
        return "unspecified features"
    order = [k for k in IDENTITY_FIELDS if k in identity] + [k for k in identity if k not in IDENTITY_FIELDS]
    return ", ".join(f"{k}={identity[k]}" for k in order)


def identity_differences(found: Mapping[str, Any] | None, expected: Mapping[str, Any] | None) -> list[str]:
    """The identity fields in which two descriptions differ (all of them if either is missing)."""
    if not found or not expected:
        return list(IDENTITY_FIELDS)
    return [name for name in IDENTITY_FIELDS if found.get(name) != expected.get(name)]


def check_identity(found: Mapping[str, Any] | None, expected: Mapping[str, Any] | None, message: str,
                   error: type[Exception] = StoreError) -> None:
    """Raise `error(message)` unless the two descriptions agree. `message` may name `{found}`, `{expected}`
    (described) and `{differ}` (the differing fields); nothing else in it is read as a placeholder, so a path
    with braces in it stays as it is."""
    differ = identity_differences(found, expected)
    if differ:
        values = {"{found}": describe_identity(found), "{expected}": describe_identity(expected),
                  "{differ}": ", ".join(differ)}
        for placeholder, value in values.items():
            message = message.replace(placeholder, value)
        raise error(message)


@dataclass(frozen=True)
class StoreConfig:
    """What the vectors in a store are: they are comparable only with vectors made the same way."""

    model: str
    layer: str
    pool: str
    augment: str
    dim: int
    model_spec: dict[str, Any] = field(default_factory=dict, compare=False)

    def identity(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in IDENTITY_FIELDS}

    def describe(self) -> str:
        return describe_identity(self.identity())
