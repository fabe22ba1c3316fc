"""Real photographs that ship inside installed wheels: scikit-image's `skimage/data/` and scikit-learn's two.

They are the embedded default of `offshelf demo`, the photos the tests embed, and a calibration set that
needs no download. Which files count as photographs is a fixed list (looked at one by one), never guessed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: Colour photographs in scikit-image's `skimage/data/` (file names, in the order returned).
#: Left out on purpose: chessboard_*.png, color.png (colour wheel), logo.png, horse.png (silhouette),
#: phantom.png, page.png and text.png (text), cell.png, ihc.png and microaneurysms.png (microscopy /
#: medical crops), multipage*.tif, no_time_for_that_tiny.gif, lfw_subset.npy, motorcycle_disp.npz.
#: motorcycle_left/right are a stereo pair (near-duplicates of each other); retina.jpg is a fundus
#: photograph and hubble_deep_field.jpg an astronomical one: real photos, if unusual.
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)

#: Grayscale photographs in `skimage/data/` (returned by `real_photos(grayscale=True)` after the colour ones).
SKIMAGE_GRAY_PHOTOS: tuple[str, ...] = (
    "camera.png",
    "coins.png",
    "moon.png",
    "clock_motion.png",
    "brick.png",
    "grass.png",
    "gravel.png",
)

#: scikit-learn's `load_sample_images()` files in `sklearn/datasets/images/`.
SKLEARN_PHOTOS: tuple[str, ...] = ("china.jpg", "flower.jpg")


def _package_dir(package: str, *parts: str) -> Path | None:
    """The directory `parts` inside an installed package, located without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_dir() else None


def real_photos(grayscale: bool = False) -> list[Path]:
    """The real photographs shipped in scikit-image's wheel, then scikit-learn's two, if installed.

    Only files physically present are returned, in a fixed order: `SKIMAGE_PHOTOS`, then (with
    `grayscale=True`) `SKIMAGE_GRAY_PHOTOS`, then `SKLEARN_PHOTOS`. The colour set is 8 + 2 photos of
    300..1411 px; all decode with Pillow.
    """
    found: list[Path] = []
    names = SKIMAGE_PHOTOS + (SKIMAGE_GRAY_PHOTOS if grayscale else ())
    skimage_dir = _package_dir("skimage", "data")
    if skimage_dir is not None:
        found += [skimage_dir / name for name in names if (skimage_dir / name).is_file()]
    sklearn_dir = _package_dir("sklearn", "datasets", "images")
    if sklearn_dir is not None:
        found += [sklearn_dir / name for name in SKLEARN_PHOTOS if (sklearn_dir / name).is_file()]
    return found

