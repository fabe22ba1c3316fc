"""What the vectors of a store are, and the one check that two descriptions agree.

Vectors are comparable only when they were made the same way: same model, layer, pooling, views and dim, and the
same precision (an int8 graph's vectors also name the photos it was calibrated on).
Stores, indexes, probes and alignment maps all record this identity and refuse vectors of another; they all
compare and describe it here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from offshelf.errors import StoreError

# Fields of a manifest that must agree for two sets of features to share a store.
IDENTITY_FIELDS = ("model", "layer", "pool", "augment", "dim")
# Identity fields that older records lack, and the value that their absence means: fp32 features.
DEFAULTED_FIELDS: dict[str, str] = {"precision": "fp32", "calibration": ""}


def full_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """Every identity field of `identity` (KeyError if a required one is missing), the defaulted ones filled in."""
    return {**{name: identity[name] for name in IDENTITY_FIELDS},
            **{name: identity.get(name, default) for name, default in DEFAULTED_FIELDS.items()}}


def describe_identity(identity: Mapping[str, Any] | None, always: Sequence[str] = ()) -> str:
    """`model=..., layer=..., ...` in the canonical order (extra fields last; a defaulted field is left out when it
    has its default, unless named in `always`)."""
    if not identity:
        return "unspecified features"
    identity = {**{k: v for k, v in DEFAULTED_FIELDS.items() if k in always}, **identity}
    shown = {k: v for k, v in identity.items() if k not in DEFAULTED_FIELDS or v != DEFAULTED_FIELDS[k] or k in always}
    order = [k for k in IDENTITY_FIELDS if k in shown] + [k for k in shown if k not in IDENTITY_FIELDS]
    return ", ".join(f"{k}={shown[k]}" for k in order)


def identity_differences(found: Mapping[str, Any] | None, expected: Mapping[str, Any] | None) -> list[str]:
    """The identity fields in which two descriptions differ (all of them if either is missing)."""
    if not found or not expected:
        return list(IDENTITY_FIELDS)
    differ = [name for name in IDENTITY_FIELDS if found.get(name) != expected.get(name)]
    return differ + [name for name, default in DEFAULTED_FIELDS.items()
                     if found.get(name, default) != expected.get(name, default)]


def check_identity(found: Mapping[str, Any] | None, expected: Mapping[str, Any] | None, message: str,
                   error: type[Exception] = StoreError) -> None:
    """Raise `error(message)` unless the two descriptions agree. `message` may name `{found}`, `{expected}`
    (described) and `{differ}` (the differing fields); nothing else in it is read as a placeholder, so a path
    with braces in it stays as it is."""
    differ = identity_differences(found, expected)
    if differ:
        values = {"{found}": describe_identity(found, differ), "{expected}": describe_identity(expected, differ),
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
    precision: str = "fp32"
    calibration: str = ""  # an int8 store's calibration set (sha256), see offshelf.models.quantize

    def identity(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (*IDENTITY_FIELDS, *DEFAULTED_FIELDS)}

    def describe(self) -> str:
        return describe_identity(self.identity())
