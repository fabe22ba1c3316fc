"""Transformed copies of an image, as a copy-detection query would see them (the Copydays idea).

Each transform is a named, deterministic function of a PIL image, so a benchmark or a demo can say
exactly which edit a query went through. `DEMO_TRANSFORMS` are the demo's three edits; `COPY_FAMILIES`
are the copy-detection benchmark's query families (crop, scale, rotation, JPEG, colour, blur, overlaid
text), four strengths each.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Transform = Callable[[Image.Image], Image.Image]


def central_crop(image: Image.Image, keep: float = 0.7) -> Image.Image:
    """Keep the central `keep` fraction of each side."""
    w, h = image.size
    cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def mirror(image: Image.Image) -> Image.Image:
    """Flip left to right."""
    return ImageOps.mirror(image)


def recolour(image: Image.Image, saturation: float = 0.4, brightness: float = 1.25) -> Image.Image:
    """Wash the colours out and brighten."""
    return ImageEnhance.Brightness(ImageEnhance.Color(image.convert("RGB")).enhance(saturation)).enhance(brightness)


DEMO_TRANSFORMS: dict[str, Transform] = {"crop 70%": central_crop, "mirror": mirror, "recolour": recolour}


# -- copy-detection families (the Copydays idea) -------------------------------------------------------
#
# Each edit below is deterministic: anything random (a crop's position, where text goes) is drawn from
# `random.Random(seed)`, where the caller passes a seed naming the image and the edit, so the same call
# always gives the same pixels. Sizes are relative to the image (fractions of its sides), so an edit has
# the same strength on a 640 px photo and on a 2560 px one.


def crop_area(image: Image.Image, removed: float, seed: object = 0) -> Image.Image:
    """Remove the fraction `removed` of the area: keep a window with the image's aspect ratio and sides
    scaled by sqrt(1 - removed), at a position drawn uniformly (seeded)."""
    if not 0.0 <= removed < 1.0:
        raise ValueError(f"removed must be in [0, 1), got {removed}")
    w, h = image.size
    side = math.sqrt(1.0 - removed)
    cw, ch = max(1, round(w * side)), max(1, round(h * side))
    rng = random.Random(f"crop:{seed}")
    left, top = round(rng.random() * (w - cw)), round(rng.random() * (h - ch))
    return image.crop((left, top, left + cw, top + ch))


def rescale(image: Image.Image, factor: float) -> Image.Image:
    """Resize both sides by `factor` (Lanczos), as a thumbnail or a re-upload at lower resolution."""
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    w, h = image.size
    return image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.LANCZOS)


def rotate(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate counter-clockwise. Multiples of 90 are exact (lossless transposes); other angles keep the
    largest centred rectangle with the image's aspect ratio inside the rotated image (no filled corners,
    as an editor's "straighten" tool does)."""
    turns = degrees / 90.0
    if turns == round(turns):
        ops = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}
        op = ops.get(int(round(turns)) % 4)
        return image.copy() if op is None else image.transpose(op)
    from offshelf.images import inscribed_scale

    w, h = image.size
    k = inscribed_scale(w, h, degrees)
    turned = image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False)
    cw, ch = max(1, math.floor(w * k)), max(1, math.floor(h * k))
    left, top = (w - cw) // 2, (h - ch) // 2
    return turned.crop((left, top, left + cw, top + ch))


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    """The image encoded as JPEG at `quality` (1-95; Pillow's libjpeg, 4:2:0 subsampling)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """Re-encode as JPEG at `quality` and decode again."""
    with Image.open(io.BytesIO(jpeg_bytes(image, quality))) as decoded:
        return decoded.convert("RGB")


def shift_hue(image: Image.Image, turn: float) -> Image.Image:
    """Rotate every pixel's hue by `turn` of the colour circle (HSV; 0.5 = complementary colours)."""
    hsv = np.asarray(image.convert("RGB").convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(turn * 256)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def colour_change(image: Image.Image, saturation: float = 1.0, brightness: float = 1.0,
                  hue: float = 0.0) -> Image.Image:
    """Saturation and brightness factors (Pillow's ImageEnhance; 0 saturation is grey), then a hue shift."""
    out = ImageEnhance.Brightness(ImageEnhance.Color(image.convert("RGB")).enhance(saturation)).enhance(brightness)
    return shift_hue(out, hue) if hue else out


def blur(image: Image.Image, radius: float) -> Image.Image:
    """Gaussian blur with a radius of `radius` times the image's long side."""
    return image.filter(ImageFilter.GaussianBlur(radius * max(image.size)))


_CAPTIONS = (
    "SALE -50%", "www.example.com", "Photo: J. Doe", "Copyright 2014", "best deals today", "do not copy",
    "Summer holidays", "#throwback", "LOL", "sample image", "visit us online", "breaking news",
)


def overlay_text(image: Image.Image, lines: int = 1, size: float = 0.08, seed: object = 0) -> Image.Image:
    """Write `lines` captions in Pillow's default font (FreeType, `size` times the image height), each at a
    seeded position and colour, with a contrasting outline (as memes and watermarks do)."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    w, h = out.size
    font = ImageFont.load_default(size=max(8, round(size * h)))
    rng = random.Random(f"text:{seed}")
    for _ in range(lines):
        text = rng.choice(_CAPTIONS)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = rng.random() * max(0, w - (right - left)) - left
        y = rng.random() * max(0, h - (bottom - top)) - top
        fill = rng.choice([(255, 255, 255), (0, 0, 0), (255, 220, 0), (230, 30, 30)])
        stroke = (0, 0, 0) if sum(fill) > 382 else (255, 255, 255)
        draw.text((x, y), text, font=font, fill=fill, stroke_width=max(1, round(size * h / 12)), stroke_fill=stroke)
    return out


@dataclass(frozen=True)
class CopyEdit:
    """One family at one strength: `apply(image, seed)` makes the copy; `level` 1 is the mildest.
    `jpeg_quality` is set for the JPEG family: such a copy is best stored as `jpeg_bytes(image, quality)`
    itself (one compression), not re-encoded."""

    family: str
    level: int
    strength: str
    apply: Callable[[Image.Image, object], Image.Image]
    jpeg_quality: int | None = None

    @property
    def key(self) -> str:
        """A file-name-safe name, e.g. `crop-2`."""
        return f"{self.family}-{self.level}"


def _edits(family: str, strengths: list[tuple[str, Callable[[Image.Image, object], Image.Image]]]) -> list[CopyEdit]:
    return [CopyEdit(family, level, name, fn) for level, (name, fn) in enumerate(strengths, start=1)]


#: The copy-detection query families, four strengths each, mildest first.
COPY_FAMILIES: dict[str, tuple[CopyEdit, ...]] = {
    family: tuple(edits)
    for family, edits in {
        "crop": _edits("crop", [
            (f"{r:.0%} of the area removed", lambda im, s, r=r: crop_area(im, r, s)) for r in (0.1, 0.3, 0.5, 0.8)
        ]),
        "scale": _edits("scale", [(f"x{f:g}", lambda im, s, f=f: rescale(im, f)) for f in (0.75, 0.5, 0.3, 0.2)]),
        "rotation": _edits("rotation", [(f"{d:g} deg", lambda im, s, d=d: rotate(im, d)) for d in (2, 5, 10, 90)]),
        "jpeg": tuple(
            CopyEdit("jpeg", level, f"quality {q}", lambda im, s, q=q: jpeg(im, q), jpeg_quality=q)
            for level, q in enumerate((75, 50, 20, 10), start=1)
        ),
        "colour": _edits("colour", [
            (f"saturation {sat:g}, brightness {bri:g}, hue {hue:+g}",
             lambda im, s, sat=sat, bri=bri, hue=hue: colour_change(im, sat, bri, hue))
            for sat, bri, hue in ((0.75, 1.1, 0.03), (0.4, 1.3, 0.08), (1.7, 0.7, -0.15), (0.0, 0.6, 0.0))
        ]),
        "blur": _edits("blur", [
            (f"gaussian radius {r:.2%} of the long side", lambda im, s, r=r: blur(im, r))
            for r in (0.0025, 0.005, 0.01, 0.02)
        ]),
        "text": _edits("text", [
            (f"{n} caption(s), {z:.0%} of the height", lambda im, s, n=n, z=z: overlay_text(im, n, z, s))
            for n, z in ((1, 0.05), (2, 0.08), (4, 0.10), (6, 0.14))
        ]),
    }.items()
}
