"""Global pooling of conv feature maps into one vector per image: GAP, GMP, GeM and R-MAC.

A pooling is named by a short string so that it can be stored in a manifest and typed on a command line:
`gap` (average), `gmp` (max), `gem` (generalized mean, p = 3) or `gem:P` for another exponent, and
`rmac` (regional maximum activations over 3 scales, Tolias et al. 2016) or `rmac:L` for L scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offshelf.vectors import l2_normalize

GEM_DEFAULT_P = 3.0
GEM_EPS = 1e-6
POOL_CHOICES = ("gap", "gmp", "gem", "rmac")
RMAC_DEFAULT_LEVELS = 3
RMAC_OVERLAP = 0.4


@dataclass(frozen=True)
class Pooling:
    """A parsed pooling: `method` in POOL_CHOICES and its parameter: GeM's exponent `p`, R-MAC's
    number of scales (stored in `p` too, as a whole number)."""

    method: str
    p: float = GEM_DEFAULT_P

    @classmethod
    def parse(cls, text: str) -> Pooling:
        """Parse `gap`, `gmp`, `gem` or `gem:P` (P > 0); ValueError on anything else."""
        method, _, arg = text.strip().lower().partition(":")
        if method not in POOL_CHOICES:
            raise ValueError(f"unknown pooling {text!r}; choose from gap, gmp, gem, gem:P, rmac, rmac:L")
        if arg and method not in ("gem", "rmac"):
            raise ValueError(f"pooling {method!r} takes no parameter (got {text!r})")
        if method == "rmac":
            if arg and not (arg.isdigit() and 1 <= int(arg) <= 6):
                raise ValueError(f"R-MAC levels must be a whole number from 1 to 6, got {arg!r}")
            return cls(method, float(arg or RMAC_DEFAULT_LEVELS))
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
        return f"{self.method}:{self.p:g}" if self.method in ("gem", "rmac") else self.method

    def __call__(self, maps: np.ndarray) -> np.ndarray:
        """Pool `(N, C, H, W)` maps to `(N, C)` float32."""
        if maps.ndim != 4:
            raise ValueError(f"pooling expects (N, C, H, W) maps, got shape {maps.shape}")
        x = maps.astype(np.float32, copy=False)
        if self.method == "gap":
            return x.mean(axis=(2, 3))
        if self.method == "gmp":
            return x.max(axis=(2, 3))
        if self.method == "rmac":
            return rmac(x, int(self.p))
        clamped = np.maximum(x, GEM_EPS, dtype=np.float64)
        return (np.power(clamped, self.p).mean(axis=(2, 3)) ** (1.0 / self.p)).astype(np.float32)


def rmac_regions(height: int, width: int, levels: int = RMAC_DEFAULT_LEVELS) -> list[tuple[int, int, int, int]]:
    """R-MAC's square regions `(top, left, side, side)` on a `height` x `width` map.

    At level l (1..levels) the side is 2*min(H, W)/(l+1); regions are spread uniformly so that consecutive
    ones overlap by about 40 %, with extra regions along the longer side chosen as in Tolias et al. 2016.
    """
    short, long = min(height, width), max(height, width)
    extra = 0
    if long > short:
        steps = np.arange(2, 8)
        step_size = (long - short) / (steps - 1)
        extra = int(np.argmin(np.abs((short**2 - short * step_size) / short**2 - RMAC_OVERLAP))) + 1
    regions = []
    for level in range(1, levels + 1):
        side = max(1, int(np.floor(2 * short / (level + 1))))
        counts = (level + (extra if height > width else 0), level + (extra if width > height else 0))
        tops, lefts = (_starts(size, side, count) for size, count in zip((height, width), counts))
        regions += [(top, left, side, side) for top in tops for left in lefts]
    return list(dict.fromkeys(regions))


def _starts(size: int, side: int, count: int) -> list[int]:
    if count <= 1 or size <= side:
        return [max(0, (size - side) // 2)]
    return sorted({int(round(i * (size - side) / (count - 1))) for i in range(count)})


def rmac(maps: np.ndarray, levels: int = RMAC_DEFAULT_LEVELS) -> np.ndarray:
    """R-MAC: max-pool each region, L2-normalize each region vector, sum, L2-normalize (no region PCA)."""
    total = np.zeros(maps.shape[:2], np.float64)
    for top, left, h, w in rmac_regions(maps.shape[2], maps.shape[3], levels):
        region = maps[:, :, top : top + h, left : left + w].max(axis=(2, 3)).astype(np.float64)
        total += l2_normalize(region, np.float64)
    return l2_normalize(total, np.float64).astype(np.float32)
