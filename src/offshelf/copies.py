"""Transformed copies of an image, as a copy-detection query would see them (the Copydays idea).

Each transform is a named, deterministic function of a PIL image, so a benchmark or a demo can say
exactly which edit a query went through.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image, ImageEnhance, ImageOps

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
