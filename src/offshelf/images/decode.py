"""Reading a file's bytes once, and decoding them to an RGB image (Pillow, and simplejpeg for JPEG pixels).

Decoding (``decode_image``) always returns an RGB image:

* only a fixed list of raster formats is tried (``DECODE_FORMATS``); notably EPS is excluded because Pillow
  runs Ghostscript to render it;
* the pixel count is checked against ``max_pixels`` from the header, before any pixel data is decoded;
* JPEGs are decoded with DCT scaling when ``min_size`` is given: the largest power-of-two reduction (1/2,
  1/4, 1/8) that keeps *both* sides >= ``min_size`` (``Image.draft``'s rule); images are never upscaled;
* the pixels of a baseline or progressive JPEG in RGB or grayscale (``jpeg_decoder="simplejpeg"``, the
  default) are decoded by simplejpeg (libjpeg-turbo's TurboJPEG API), at the same scale, into the same size as
  Pillow's; Pillow still opens the file (format, size and pixel limit, EXIF) and decodes everything else:
  CMYK/YCCK JPEGs, MPO, other formats, and any JPEG that simplejpeg refuses or warns about (corrupt or
  truncated data then fails exactly as it does in Pillow, with Pillow's reason);
* truncated or corrupt data raise (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at its default, False);
* EXIF (and XMP) orientation is applied with ``ImageOps.exif_transpose``; a broken EXIF block is ignored;
* transparency (RGBA, LA, PA, premultiplied, P or L/RGB with a ``transparency`` key) is composited on white;
* 16-bit integer images are scaled by 255/65535; 32-bit integer and float images are scaled from their value
  range (see ``_high_depth_to_l``); everything else goes through ``Image.convert("RGB")``;
* multi-frame files (GIF, APNG, TIFF, MPO) give their first frame.

The pipeline reads each file once (``read_file``: bytes, sha256, size, mtime) and decodes from those bytes,
so hashing and decoding run in the same worker thread (Pillow and hashlib release the GIL) next to ONNX
Runtime. Nothing here mutates global state (``Image.MAX_IMAGE_PIXELS`` and ``ImageFile.LOAD_TRUNCATED_IMAGES``
are read by Pillow, never written by us).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

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

#: ``reducing_gap`` passed to ``Image.resize`` (None would disable the box pre-reduction).
RESAMPLE_REDUCING_GAP: float | None = 2.0

RESAMPLE = Image.Resampling.BILINEAR

JpegDecoder = Literal["simplejpeg", "pillow"]

#: Which library decodes a JPEG's pixels (see the module docstring); both give the same picture up to rounding.
JPEG_DECODERS: tuple[str, ...] = ("simplejpeg", "pillow")

#: JPEG modes (as Pillow reports them at open) whose pixels simplejpeg decodes; CMYK/YCCK stay with Pillow.
_SIMPLEJPEG_MODES = {"RGB": "RGB", "L": "GRAY"}


class ImageDecodeError(ValueError):
    """An image could not be read or decoded; ``reason`` is a short human-readable explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason



@dataclass(frozen=True)
class FileBytes:
    """A file's bytes read once, with what identifies that version of it."""

    data: bytes
    sha256: str  # hex digest of `data`
    size: int
    mtime_ns: int


def read_file(path: str | Path) -> FileBytes:
    """Read a file's bytes once and hash them; ImageDecodeError ("unreadable file: ...") if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            data = handle.read()
    except OSError as exc:
        raise ImageDecodeError(f"unreadable file: {exc.strerror or exc}") from None
    return FileBytes(data, hashlib.sha256(data).hexdigest(), stat.st_size, stat.st_mtime_ns)


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


def to_rgb(im: Image.Image) -> Image.Image:
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


def dct_scale(width: int, height: int, min_size: int | None) -> int:
    """The JPEG DCT reduction (1, 2, 4 or 8) that keeps both sides >= ``min_size``: ``Image.draft``'s rule."""
    if min_size is None:
        return 1
    fits = min(width // min_size, height // min_size)
    return next((scale for scale in (8, 4, 2) if fits >= scale), 1)


def _simplejpeg_pixels(data: bytes, im: Image.Image, min_size: int | None) -> Image.Image | None:
    """``im``'s pixels decoded by simplejpeg at Pillow's DCT scale, with ``im``'s metadata; None if it refuses.

    ``strict=True`` turns libjpeg's warnings (corrupt or truncated data) into errors, so that such files go
    to Pillow and fail or decode exactly as they always did.
    """
    width, height = im.size
    scale = dct_scale(width, height, min_size)
    try:
        pixels = simplejpeg.decode_jpeg(
            data, colorspace=_SIMPLEJPEG_MODES[im.mode], strict=True,
            min_width=-(-width // scale), min_height=-(-height // scale),
        )
    except ValueError:
        return None
    out = Image.fromarray(pixels[..., 0] if im.mode == "L" else pixels)
    out.info = dict(im.info)  # EXIF and XMP, for the orientation
    return out


def _orient(im: Image.Image) -> None:
    """Apply the EXIF (or XMP) orientation in place; a malformed block keeps the stored orientation."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:  # noqa: BLE001 - malformed EXIF/XMP
        pass


def decode_image(
    data: bytes, *, min_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
    jpeg_decoder: JpegDecoder = "simplejpeg",
) -> Image.Image:
    """Decode encoded image bytes into an RGB ``PIL.Image`` (see the module docstring for the rules).

    ``min_size``: if given, JPEGs are DCT-downscaled by 1/2, 1/4 or 1/8 as long as both sides stay
    >= ``min_size`` (never upscaled; other formats decode at full size). ``max_pixels`` is checked on the
    header size (before orientation and downscaling). ``jpeg_decoder``: "simplejpeg" (the default; the same
    pixels, cheaper on large files) or "pillow" decodes the pixels of RGB and grayscale JPEGs. Every failure
    raises ``ImageDecodeError``.

    Caveat: Pillow itself refuses images above ``2 * Image.MAX_IMAGE_PIXELS`` (its global, ~179 MP by
    default) while opening; that is reported as "too many pixels" too, so ``max_pixels`` above that value
    has no effect unless the caller raises Pillow's global.
    """
    if not data:
        raise ImageDecodeError("empty file")
    if min_size is not None and min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    if jpeg_decoder not in JPEG_DECODERS:
        raise ValueError(f"jpeg_decoder must be one of {JPEG_DECODERS}, got {jpeg_decoder!r}")
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
    fast = None
    if jpeg_decoder == "simplejpeg" and im.format == "JPEG" and im.mode in _SIMPLEJPEG_MODES:
        fast = _simplejpeg_pixels(data, im, min_size)
    if fast is not None:
        im = fast
    else:
        if min_size is not None and im.format in ("JPEG", "MPO"):
            im.draft(None, (min_size, min_size))
        try:
            im.load()
        except Exception as exc:
            raise ImageDecodeError(_reason_for(exc)) from None
    _orient(im)
    try:
        rgb = to_rgb(im)
    except Exception as exc:
        raise ImageDecodeError(f"unsupported image mode {im.mode}: {exc}") from None
    return rgb

