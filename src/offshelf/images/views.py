"""Views of a decoded image for the backbone: the whole image, or the 16 views of Razavian et al. 2014.

Razavian et al. 2014). With ``augment="paper"`` the 16 views are, in this order::

    0 full image
    1 top-left crop      2 top-right crop    3 bottom-left crop   4 bottom-right crop   5 centre crop
    6 rotated +ROTATION_DEGREES (counter-clockwise)             7 rotated -ROTATION_DEGREES
    8..15  horizontal mirrors of views 0..7 (view k + 8 == view k[:, ::-1])

Crops have sides 2/3 of the image's sides (4/9 of its area). Rotations: the paper does not give the angle
in a form we could check here, so ``ROTATION_DEGREES = 5`` is *our* choice. A rotated view is the largest
centred rectangle with the image's aspect ratio that fits entirely inside the rotated image (so there are no
filled corners), resized to ``size x size`` (see ``_rotated_views``).

Resampling: ``Image.BILINEAR`` (Pillow's bilinear is a proper antialiasing triangle filter when
downscaling) with ``reducing_gap=RESAMPLE_REDUCING_GAP`` (a fast integer box reduction first when the
image is much larger than the target).

A model may bring its own recipe instead (Hugging Face checkpoints do, in their image-processor config):
``fit_image`` applies it as transformers' PIL image processors do (a named Pillow filter, no box
pre-reduction; the shorter side to ``resize`` and a centre crop, or the whole image to ``size x size``), and
the views are then taken from that ``size x size`` image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image

from offshelf.images.decode import RESAMPLE, RESAMPLE_REDUCING_GAP, to_rgb

Augment = Literal["none", "flip", "paper"]

VIEW_COUNTS: dict[str, int] = {"none": 1, "flip": 2, "paper": 16}

#: Rotation angle of the two rotated "paper" views (our choice, see module docstring).
ROTATION_DEGREES: float = 5.0

_CROP_FRACTION = 2.0 / 3.0

#: Pillow filters by the names a model's recipe may use (``Preprocessing.resample``).
RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def views_min_size(size: int, augment: Augment, resample: str = "") -> int | None:
    """Decode resolution (both sides) at which every view of ``augment`` keeps full detail at ``size``.

    "none"/"flip": ``size``; "paper": ``ceil(size * 3 / 2)`` because the crops span 2/3 of each side
    (the rotated views need less: ``size / 0.92`` at 5 degrees for a square image). None (decode at full
    resolution) with a ``resample`` filter: a model's own recipe, which must see the pixels transformers sees.
    """
    _check_augment(augment)
    if resample:  # a model's own recipe starts from the full image, as transformers decodes it
        return None
    if augment == "paper":
        return math.ceil(size / _CROP_FRACTION - 1e-9)
    return int(size)


def _check_augment(augment: str) -> None:
    if augment not in VIEW_COUNTS:
        raise ValueError(f"augment must be one of {sorted(VIEW_COUNTS)}, got {augment!r}")


def _resize(im: Image.Image, size: int, box: tuple[float, float, float, float] | None = None) -> Image.Image:
    return im.resize((size, size), RESAMPLE, box=box, reducing_gap=RESAMPLE_REDUCING_GAP)


def crop_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The 5 "paper" crop boxes (left, top, right, bottom): TL, TR, BL, BR, centre; sides 2/3 of the image."""
    cw = max(1, round(width * _CROP_FRACTION))
    ch = max(1, round(height * _CROP_FRACTION))
    x1, y1 = width - cw, height - ch
    xc, yc = x1 // 2, y1 // 2
    return [
        (0, 0, cw, ch),
        (x1, 0, width, ch),
        (0, y1, cw, height),
        (x1, y1, width, height),
        (xc, yc, xc + cw, yc + ch),
    ]


def inscribed_scale(width: float, height: float, degrees: float) -> float:
    """Largest k such that a centred (k*width x k*height) rectangle fits in the image rotated by ``degrees``."""
    t = math.radians(abs(degrees))
    c, s = abs(math.cos(t)), abs(math.sin(t))
    return min(width / (width * c + height * s), height / (width * s + height * c))


def _rotated_views(im: Image.Image, degrees: Sequence[float], size: int) -> list[Image.Image]:
    """Views rotated by each angle (counter-clockwise, about the centre), with no filled corners.

    Each view is the centred rectangle of the image's aspect ratio, scaled by ``inscribed_scale`` (the
    largest that stays inside the rotated image, inset by ~1 output pixel), resized to ``size x size``.
    Done in two resampling steps that never alias: (1) an antialiased resize of the whole image such that
    that rectangle becomes exactly ``size x size`` pixels (anisotropic; shared by all angles); (2) one affine
    warp producing the ``size x size`` output directly. In working coordinates the warp is ``A R A^-1``
    (``A`` the anisotropic scale, ``R`` the rotation), a near-rotation whose singular values stay close
    to 1 for small angles, so bilinear sampling needs no antialiasing there.
    """
    width, height = im.size
    k = min(inscribed_scale(width, height, d) for d in degrees) * (1.0 - 2.0 / max(size, 4))
    rw, rh = k * width, k * height  # rectangle in original pixels
    ax, ay = size / rw, size / rh  # original -> working scale
    work_w, work_h = max(1, round(width * ax)), max(1, round(height * ay))
    ax, ay = work_w / width, work_h / height  # the exact scale after rounding
    work = im if (work_w, work_h) == im.size else im.resize(
        (work_w, work_h), RESAMPLE, reducing_gap=RESAMPLE_REDUCING_GAP
    )
    views = []
    half = size / 2.0
    for deg in degrees:
        t = math.radians(deg)
        c, s = math.cos(t), math.sin(t)
        # output pixel (centred, in units of output pixels) -> original pixels (D = rect/size) -> rotate
        # (Pillow's rotate convention: source = R @ dest, R = [[c, -s], [s, c]]) -> working pixels (A)
        dx, dy = rw / size, rh / size
        g00, g01 = ax * c * dx, -ax * s * dy
        g10, g11 = ay * s * dx, ay * c * dy
        cx, cy = work_w / 2.0, work_h / 2.0
        coeffs = (g00, g01, cx - (g00 + g01) * half, g10, g11, cy - (g10 + g11) * half)
        views.append(
            work.transform((size, size), Image.Transform.AFFINE, coeffs, resample=RESAMPLE,
                           fillcolor=(255, 255, 255))
        )
    return views


def fit_image(image: Image.Image, size: int, resize: int = 0, resample: str = "bilinear") -> Image.Image:
    """A model's own recipe, as transformers' PIL image processors apply it: with ``resize`` the shorter side
    becomes ``resize`` pixels (the longer one ``int(resize * long / short)``), then the centre ``size x size``
    is cut out; without it the whole image is resized to ``size x size``. ``resample`` names the Pillow filter.
    """
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"unknown resample {resample!r}; choose from {sorted(RESAMPLE_FILTERS)}")
    if resize and resize < size:
        raise ValueError(f"cannot crop {size} px from an image resized to {resize} px")
    width, height = image.size
    if not resize:
        new = (size, size)
    elif width <= height:
        new = (resize, int(resize * height / width))
    else:
        new = (int(resize * width / height), resize)
    fitted = image.resize(new, RESAMPLE_FILTERS[resample])
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return fitted if new == (size, size) else fitted.crop((left, top, left + size, top + size))


def make_views(image: Image.Image, size: int, augment: Augment = "none", *, resize: int = 0,
               resample: str = "") -> np.ndarray:
    """Views of ``image`` as a ``(V, size, size, 3)`` uint8 RGB array, V = ``VIEW_COUNTS[augment]``.

    "none": the whole image; "flip": + its horizontal mirror; "paper": the 16 views listed in the module
    docstring (mirrors are views ``k + V/2``). Every view is resized to ``size x size`` as a whole. With a
    ``resample`` filter name (a model's own recipe, see ``fit_image``) the views are taken from
    ``fit_image(image, size, resize, resample)``.
    """
    _check_augment(augment)
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if image.mode != "RGB":
        image = to_rgb(image)
    if resample:
        image = fit_image(image, size, resize, resample)
    n = VIEW_COUNTS[augment]
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    base: list[Image.Image] = [_resize(image, size)]
    if augment == "paper":
        width, height = image.size
        base.extend(_resize(image, size, box=b) for b in crop_boxes(width, height))
        base.extend(_rotated_views(image, (ROTATION_DEGREES, -ROTATION_DEGREES), size))
    for i, view in enumerate(base):
        out[i] = np.asarray(view)
    if augment in ("flip", "paper"):
        half = n // 2
        out[half:] = out[:half, :, ::-1]
    return out

