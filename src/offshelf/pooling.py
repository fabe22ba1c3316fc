"""Global pooling of conv feature maps into one vector per image: GAP, GMP and GeM.

A pooling is named by a short string so that it can be stored in a manifest and typed on a command line:
`gap` (average), `gmp` (max), `gem` (generalized mean, p = 3) or `gem:P` for another exponent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GEM_DEFAULT_P = 3.0
GEM_EPS = 1e-6
POOL_CHOICES = ("gap", "gmp", "gem")


@dataclass(frozen=True)
class Pooling:
    """A parsed pooling: `method` in POOL_CHOICES and, for GeM, its exponent `p`."""

    method: str
    p: float = GEM_DEFAULT_P

    @classmethod
    def parse(cls, text: str) -> Pooling:
        """Parse `gap`, `gmp`, `gem` or `gem:P` (P > 0); ValueError on anything else."""
        method, _, arg = text.strip().lower().partition(":")
        if method not in POOL_CHOICES:
            raise ValueError(f"unknown pooling {text!r}; choose from gap, gmp, gem, gem:P")
        if arg and method != "gem":
            raise ValueError(f"pooling {method!r} takes no parameter (got {text!r})")
        if not arg:
            return cls(method)
        try:
            p = float(arg)
        except ValueError:
            raise ValueError(f"GeM exponent must be a number, got {arg!r}") from None
        if not np.isfinite(p) or p <= 0:
            raise ValueError(f"GeM exponent must be finite and > 0, got {p}")
        return cls(method, p)

    @property
    def name(self) -> str:
        """Canonical text form, e.g. `gap` or `gem:3`."""
        return f"gem:{self.p:g}" if self.method == "gem" else self.method

    def __call__(self, maps: np.ndarray) -> np.ndarray:
        """Pool `(N, C, H, W)` maps to `(N, C)` float32."""
        if maps.ndim != 4:
            raise ValueError(f"pooling expects (N, C, H, W) maps, got shape {maps.shape}")
        x = maps.astype(np.float32, copy=False)
        if self.method == "gap":
            return x.mean(axis=(2, 3))
        if self.method == "gmp":
            return x.max(axis=(2, 3))
        clamped = np.maximum(x, GEM_EPS, dtype=np.float64)
        return (np.power(clamped, self.p).mean(axis=(2, 3)) ** (1.0 / self.p)).astype(np.float32)
