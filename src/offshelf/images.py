"""Reading, decoding and multi-view preparation of images (Pillow + numpy only).

The data path is ``find_images`` -> ``load_image`` (read bytes once, sha256, ``decode_image``, ``make_views``).
``load_image`` is meant to run in a thread pool next to ONNX Runtime: the heavy parts (JPEG/PNG decoding,
resizing, rotation, hashing) run in C code that releases the GIL, and nothing here mutates global state
(no Pillow globals are touched: ``Image.MAX_IMAGE_PIXELS`` and ``ImageFile.LOAD_TRUNCATED_IMAGES`` are read by
Pillow, never written by us).

Decoding (``decode_image``) always returns an RGB image:

* only a fixed list of raster formats is tried (``DECODE_FORMATS``); notably EPS is excluded because Pillow
  runs Ghostscript to render it;
* the pixel count is checked against ``max_pixels`` from the header, before any pixel data is decoded;
* JPEGs are decoded with DCT scaling (``Image.draft``) when ``min_size`` is given: the largest power-of-two
  reduction (1/2, 1/4, 1/8) that keeps *both* sides >= ``min_size``; images are never upscaled;
* truncated or corrupt data raise (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at its default, False);
* EXIF (and XMP) orientation is applied with ``ImageOps.exif_transpose``; a broken EXIF block is ignored;
* transparency (RGBA, LA, PA, premultiplied, P or L/RGB with a ``transparency`` key) is composited on white;
* 16-bit integer images are scaled by 255/65535; 32-bit integer and float images are scaled from their value
  range (see ``_high_depth_to_l``); everything else goes through ``Image.convert("RGB")``;
* multi-frame files (GIF, APNG, TIFF, MPO) give their first frame.

Views (``make_views``) are resized to ``size x size`` as a whole (aspect not kept, no centre crop, as in
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
"""

from __future__ import annotations

import glob
import hashlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "Augment",
    "VIEW_COUNTS",
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "DECODE_FORMATS",
    "ROTATION_DEGREES",
    "RESAMPLE_REDUCING_GAP",
    "ImageDecodeError",
    "find_images",
    "decode_image",
    "make_views",
    "views_min_size",
    "crop_boxes",
    "inscribed_scale",
    "LoadedImage",
    "load_image",
]

Augment = Literal["none", "flip", "paper"]

VIEW_COUNTS: dict[str, int] = {"none": 1, "flip": 2, "paper": 16}

#: Lower-case suffixes that ``find_images`` picks up when walking folders or expanding globs.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".bmp", ".dib", ".tif", ".tiff",
        ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".avif", ".jp2", ".j2k", ".jpx", ".ico", ".tga",
        ".qoi", ".pcx", ".sgi", ".psd",
    }
)

#: Pillow formats we are willing to decode, tried in this order (JPEG also covers MPO); those missing from
#: this Pillow build are dropped. EPS is deliberately absent (Pillow renders it with Ghostscript).
DECODE_FORMATS: tuple[str, ...] = (
    "JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF", "JPEG2000", "QOI", "PSD", "PCX",
    "SGI", "ICO", "DIB", "TGA",
)

Image.init()  # register every plugin once, at import, rather than lazily from worker threads
_OPEN_FORMATS: tuple[str, ...] = tuple(f for f in DECODE_FORMATS if f in Image.OPEN)

#: Decompression-bomb guard: the same number as Pillow's default ``Image.MAX_IMAGE_PIXELS``
#: (1024**3 // 4 // 3 ~ 89.5 MP), written out so that it does not move if someone changes Pillow's global,
#: and so that with the default no Pillow ``DecompressionBombWarning`` can fire before our own check.
DEFAULT_MAX_PIXELS: int = 89_478_485

#: Rotation angle of the two rotated "paper" views (our choice, see module docstring).
ROTATION_DEGREES: float = 5.0

#: ``reducing_gap`` passed to ``Image.resize`` (None would disable the box pre-reduction).
RESAMPLE_REDUCING_GAP: float | None = 2.0

_RESAMPLE = Image.Resampling.BILINEAR
_CROP_FRACTION = 2.0 / 3.0
_GLOB_MAGIC = frozenset("*?[")


class ImageDecodeError(ValueError):
    """An image could not be read or decoded; ``reason`` is a short human-readable explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------------------
# finding files


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _has_image_suffix(path: str | Path) -> bool:
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def _walk_folder(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, skipping hidden folders and hidden files (e.g. ``._x.jpg``)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not _is_hidden(d)]
        for name in files:
            if not _is_hidden(name) and _has_image_suffix(name):
                found.append(Path(root, name))
    return found


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand folders, files and glob patterns into a sorted, de-duplicated list of absolute resolved paths.

    * a folder is walked recursively; files with a suffix in ``IMAGE_EXTENSIONS`` (case-insensitive) are kept;
      hidden sub-folders and hidden files (name starting with ".") are skipped;
    * an explicit existing file is always kept, whatever its suffix (a non-image then fails downstream and is
      recorded as an error rather than silently dropped);
    * a pattern containing ``*``, ``?`` or ``[`` (and not naming an existing path literally) is expanded with
      ``glob`` (``**`` is recursive; hidden names only match if the pattern spells the dot); matched files
      are filtered by ``IMAGE_EXTENSIONS``, matched folders are walked;
    * ``~`` is expanded. Any input that yields no file raises ``FileNotFoundError`` naming it.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: set[Path] = set()
    for raw in inputs:
        text = os.path.expanduser(os.fspath(raw))
        path = Path(text)
        hits: list[Path]
        if path.is_dir():
            hits = _walk_folder(path)
            if not hits:
                raise FileNotFoundError(f"no image files found in folder: {raw}")
        elif path.exists():
            hits = [path]
        elif any(c in _GLOB_MAGIC for c in text):
            hits = []
            for match in glob.glob(text, recursive=True):
                m = Path(match)
                if m.is_dir():
                    hits.extend(_walk_folder(m))
                elif m.is_file() and _has_image_suffix(m):
                    hits.append(m)
            if not hits:
                raise FileNotFoundError(f"no image files match pattern: {raw}")
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
        found.update(h.resolve() for h in hits)
    return sorted(found, key=lambda p: (str(p.parent), p.name))


# --------------------------------------------------------------------------------------------------------
# decoding


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """Map a single-channel 16-bit / 32-bit integer / float image to 8-bit "L".

    * ``I;16*``: fixed scale 255/65535 (65535 -> 255, 32768 -> 128);
    * ``I`` (32-bit signed): values within [0, 255] are kept, within [0, 65535] scaled as 16-bit,
      otherwise min-max normalised;
    * ``F``: values within [0, 1] times 255, within [0, 255] kept, otherwise min-max normalised
      (NaN and -inf count as the smallest finite value, +inf as the largest).
    """
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        a16 = arr.astype(np.uint32, copy=False)
        out = ((a16 * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(out, "L")
    a = arr.astype(np.float64, copy=False)
    finite = np.isfinite(a)
    if not finite.all():
        if not finite.any():
            return Image.new("L", im.size, 0)
        lo_f, hi_f = float(a[finite].min()), float(a[finite].max())
        a = np.nan_to_num(a, nan=lo_f, posinf=hi_f, neginf=lo_f)
    lo, hi = float(a.min()), float(a.max())
    if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = a
    elif im.mode == "I" and lo >= 0.0 and hi <= 65535.0:
        scaled = a * (255.0 / 65535.0)
    elif hi > lo:
        scaled = (a - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(a)
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> "RGB"; transparency is composited on white."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_l(im).convert("RGB")
    if mode in _ALPHA_MODES or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")  # handles P/L/RGB "transparency" keys and premultiplied modes
        out = Image.new("RGB", im.size, (255, 255, 255))
        out.paste(rgba, (0, 0), rgba)  # straight alpha blend: out = a*rgb + (1-a)*white
        return out
    return im.convert("RGB")


def _reason_for(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    low = msg.lower()
    if "truncated" in low or isinstance(exc, EOFError) or "premature end" in low:
        return "truncated image"
    if "could not create decoder object" in low:  # libwebp's only message for truncated or corrupt data
        return "corrupt or truncated image"
    return f"corrupt image: {msg}"


def decode_image(
    data: bytes, *, min_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode encoded image bytes into an RGB ``PIL.Image`` (see the module docstring for the rules).

    ``min_size``: if given, JPEGs are DCT-downscaled by 1/2, 1/4 or 1/8 as long as both sides stay
    >= ``min_size`` (never upscaled; other formats decode at full size). ``max_pixels`` is checked on the
    header size (before orientation and downscaling). Every failure raises ``ImageDecodeError``.

    Caveat: Pillow itself refuses images above ``2 * Image.MAX_IMAGE_PIXELS`` (its global, ~179 MP by
    default) while opening; that is reported as "too many pixels" too, so ``max_pixels`` above that value
    has no effect unless the caller raises Pillow's global.
    """
    if not data:
        raise ImageDecodeError("empty file")
    if min_size is not None and min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    try:
        im = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageDecodeError(f"too many pixels (> {limit}, Pillow's decompression-bomb limit)") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image") from None
    except Exception as exc:  # a plugin accepted the magic bytes but the header is broken
        raise ImageDecodeError(_reason_for(exc)) from None
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"empty image ({width} x {height})")
    if width * height > max_pixels:
        raise ImageDecodeError(f"too many pixels ({width} x {height} > {max_pixels})")
    if min_size is not None and im.format in ("JPEG", "MPO"):
        im.draft(None, (min_size, min_size))
    try:
        im.load()
    except Exception as exc:
        raise ImageDecodeError(_reason_for(exc)) from None
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:  # malformed EXIF/XMP: keep the stored orientation
        pass
    try:
        rgb = _to_rgb(im)
    except Exception as exc:
        raise ImageDecodeError(f"unsupported image mode {im.mode}: {exc}") from None
    return rgb


# --------------------------------------------------------------------------------------------------------
# views


def views_min_size(size: int, augment: Augment) -> int:
    """Decode resolution (both sides) at which every view of ``augment`` keeps full detail at ``size``.

    "none"/"flip": ``size``; "paper": ``ceil(size * 3 / 2)`` because the crops span 2/3 of each side
    (the rotated views need less: ``size / 0.92`` at 5 degrees for a square image).
    """
    _check_augment(augment)
    if augment == "paper":
        return math.ceil(size / _CROP_FRACTION - 1e-9)
    return int(size)


def _check_augment(augment: str) -> None:
    if augment not in VIEW_COUNTS:
        raise ValueError(f"augment must be one of {sorted(VIEW_COUNTS)}, got {augment!r}")


def _resize(im: Image.Image, size: int, box: tuple[float, float, float, float] | None = None) -> Image.Image:
    return im.resize((size, size), _RESAMPLE, box=box, reducing_gap=RESAMPLE_REDUCING_GAP)


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
        (work_w, work_h), _RESAMPLE, reducing_gap=RESAMPLE_REDUCING_GAP
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
            work.transform((size, size), Image.Transform.AFFINE, coeffs, resample=_RESAMPLE,
                           fillcolor=(255, 255, 255))
        )
    return views


def make_views(image: Image.Image, size: int, augment: Augment = "none") -> np.ndarray:
    """Views of ``image`` as a ``(V, size, size, 3)`` uint8 RGB array, V = ``VIEW_COUNTS[augment]``.

    "none": the whole image; "flip": + its horizontal mirror; "paper": the 16 views listed in the module
    docstring (mirrors are views ``k + V/2``). Every view is resized to ``size x size`` as a whole.
    """
    _check_augment(augment)
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if image.mode != "RGB":
        image = _to_rgb(image)
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


# --------------------------------------------------------------------------------------------------------
# loading


@dataclass(frozen=True)
class LoadedImage:
    path: Path
    sha256: str  # hex sha256 of the file bytes
    views: np.ndarray  # (V, size, size, 3) uint8


def load_image(
    path: str | Path, size: int, augment: Augment = "none", max_pixels: int = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Read ``path`` once, hash it, decode it (DCT-scaled to ``views_min_size``) and build its views.

    Raises ``ImageDecodeError`` for any unreadable or undecodable file ("unreadable file: ..." for
    file-system errors). Thread-safe: no shared state.
    """
    _check_augment(augment)
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"unreadable file: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    image = decode_image(data, min_size=views_min_size(size, augment), max_pixels=max_pixels)
    return LoadedImage(path=p, sha256=digest, views=make_views(image, size, augment))
