"""Hand-crafted image features, the baselines that off-the-shelf CNN features beat (Razavian et al. 2014).

Each baseline maps a list of images (file paths, or PIL images) to a float32 matrix, one row per image:

=================  ======  ==============================================================================
name               dim     what
=================  ======  ==============================================================================
`raw_pixels`       3072    RGB resized to 32x32, values in [0, 1], flattened (row-major, H x W x C)
`color_histogram`  512     joint RGB histogram, 8 bins per channel, of the image resized to 128x128;
                           L1-normalized (sums to 1)
`hog`              8100    `skimage.feature.hog` on grey 128x128: 9 orientations, 8x8-pixel cells,
                           2x2-cell blocks, L2-Hys (the Dalal-Triggs parameters)
`lbp`              448     uniform `local_binary_pattern` on grey 128x128 at (P, R) = (8, 1) and (16, 2);
                           a histogram of the P + 2 codes in each cell of a 4x4 grid, each L1-normalized
=================  ======  ==============================================================================

Every baseline resizes the whole image to a square (aspect not kept, as the CNN views in
`offshelf.images`) with Pillow's bilinear filter; grey is Pillow's "L" (ITU-R 601-2 luma) taken before
resizing. Files are decoded with `offshelf.images.decode_image` (transparency on white; JPEGs
DCT-downscaled towards the working size). PIL images are used as given (`convert("RGB")` if in another
mode: decode RGBA with `decode_image` first to get the same white background).

If any file cannot be read or decoded, `BaselineError` is raised listing them: baselines are for
benchmarks, where a silently missing row would misalign the labels.

`extract_baseline(name, paths, workers)` runs a thread pool. Decoding, resizing, histograms and LBP run in
C code and scale with threads; skimage's HOG normalizes blocks in a Python loop and scales little.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import feature
from tqdm import tqdm

from offshelf.errors import OffshelfError
from offshelf.images import RESAMPLE_REDUCING_GAP, ImageDecodeError, decode_image

__all__ = [
    "BASELINES",
    "Baseline",
    "BaselineError",
    "ImageInput",
    "color_histogram",
    "extract_baseline",
    "hog",
    "lbp",
    "raw_pixels",
]

ImageInput = str | Path | Image.Image

RAW_SIZE = 32
HIST_SIZE = 128
HIST_BINS = 8
HOG_SIZE = 128
HOG_PARAMS = {"orientations": 9, "pixels_per_cell": (8, 8), "cells_per_block": (2, 2), "block_norm": "L2-Hys"}
LBP_SIZE = 128
LBP_SCALES: tuple[tuple[int, int], ...] = ((8, 1), (16, 2))
LBP_GRID = 4
_MAX_LISTED = 5


class BaselineError(OffshelfError):
    """Some images could not be read or decoded; `failures` lists (input, reason)."""

    def __init__(self, failures: list[tuple[str, str]], total: int) -> None:
        listed = "; ".join(f"{item}: {reason}" for item, reason in failures[:_MAX_LISTED])
        more = f"; and {len(failures) - _MAX_LISTED} more" if len(failures) > _MAX_LISTED else ""
        super().__init__(f"{len(failures)} of {total} images could not be decoded: {listed}{more}")
        self.failures = failures


def _resized(image: Image.Image, size: int) -> Image.Image:
    return image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=RESAMPLE_REDUCING_GAP)


def _gray(image: Image.Image, size: int) -> np.ndarray:
    """Grey uint8 array of shape (size, size)."""
    return np.asarray(_resized(image.convert("L"), size))


def _raw_pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(_resized(image, RAW_SIZE), dtype=np.float32).ravel() / 255.0


def _color_histogram(image: Image.Image) -> np.ndarray:
    levels = np.asarray(_resized(image, HIST_SIZE)).astype(np.intp) * HIST_BINS // 256
    bins = (levels[..., 0] * HIST_BINS + levels[..., 1]) * HIST_BINS + levels[..., 2]
    counts = np.bincount(bins.ravel(), minlength=HIST_BINS**3)
    return counts / counts.sum()


def _hog(image: Image.Image) -> np.ndarray:
    return feature.hog(_gray(image, HOG_SIZE), **HOG_PARAMS)


def _lbp(image: Image.Image) -> np.ndarray:
    gray = _gray(image, LBP_SIZE)
    cell = LBP_SIZE // LBP_GRID
    rows, cols = np.indices(gray.shape) // cell
    cells = rows * LBP_GRID + cols
    parts = []
    for points, radius in LBP_SCALES:
        codes = feature.local_binary_pattern(gray, points, radius, method="uniform").astype(np.intp)
        n_codes = points + 2
        counts = np.bincount((cells * n_codes + codes).ravel(), minlength=LBP_GRID**2 * n_codes)
        parts.append(counts / cell**2)
    return np.concatenate(parts)


def _decode(item: ImageInput, min_size: int) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    try:
        data = Path(item).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"unreadable file: {exc.strerror or exc}") from None
    return decode_image(data, min_size=min_size)


@dataclass(frozen=True)
class Baseline:
    """A hand-crafted feature: `vector` maps an RGB image to a 1-D array; `size` is its working size."""

    name: str
    size: int
    vector: Callable[[Image.Image], np.ndarray]

    @property
    def dim(self) -> int:
        """Length of the feature vector."""
        return len(self.vector(Image.new("RGB", (self.size, self.size))))

    def _row(self, item: ImageInput) -> np.ndarray | str:
        """The feature vector, or the reason the image could not be decoded."""
        try:
            image = _decode(item, self.size)
        except ImageDecodeError as exc:
            return exc.reason
        return np.asarray(self.vector(image), dtype=np.float32)

    def __call__(
        self, images: Sequence[ImageInput], *, workers: int = 1, progress: bool = False
    ) -> np.ndarray:
        """Features of `images` as an (n, dim) float32 matrix; raises `BaselineError` if any fails."""
        with ThreadPoolExecutor(max(1, workers)) as pool:
            results = pool.map(self._row, images)
            rows = list(tqdm(results, total=len(images), desc=self.name, disable=not progress))
        failures = [(str(item), row) for item, row in zip(images, rows) if isinstance(row, str)]
        if failures:
            raise BaselineError(failures, len(images))
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)


raw_pixels = Baseline("raw_pixels", RAW_SIZE, _raw_pixels)
color_histogram = Baseline("color_histogram", HIST_SIZE, _color_histogram)
hog = Baseline("hog", HOG_SIZE, _hog)
lbp = Baseline("lbp", LBP_SIZE, _lbp)

#: The baselines by name.
BASELINES: dict[str, Baseline] = {b.name: b for b in (raw_pixels, color_histogram, hog, lbp)}


def extract_baseline(
    name: str, paths: Sequence[ImageInput], workers: int = 2, progress: bool = False
) -> np.ndarray:
    """Features of the images at `paths` (or PIL images) by baseline `name`: an (n, dim) float32 matrix."""
    if name not in BASELINES:
        raise OffshelfError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return BASELINES[name](paths, workers=workers, progress=progress)
