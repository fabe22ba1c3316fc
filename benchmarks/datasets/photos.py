"""Real photographs that are available offline, and reproducible photo sets built from them.

Where the photos come from (nothing is downloaded):

- scikit-image ships a few real photographs inside its wheel (`skimage/data/`); scikit-learn ships two
  (`sklearn/datasets/images/`). scikit-learn is optional: without it there are two photos fewer.
- Debian's `plasma-workspace-wallpapers` (`/usr/share/wallpapers/<Theme>/contents/images/WxH.jpg`) has
  eleven real photographs up to 2560x1600 among many rendered abstract wallpapers up to 5120x2880.
  Debian's `gnome-backgrounds` (`/usr/share/backgrounds/gnome/`) in the version packaged with bookworm
  ships only rendered/abstract art (4096x4096 WebP) and SVGs. Either package may be absent.

Which files count as photographs is decided by the fixed lists below (looked at one by one), never
guessed from pixels. A wallpaper name that is in none of the lists (a newer package version) counts as
art, so that `wallpapers()` stays "only real photos" by default.

Public API:

- `real_photos(grayscale=False)`: the scikit-image / scikit-learn photographs present on this machine.
- `wallpapers(include_art=False)`: the wallpaper photographs (one file per theme, its largest size).
- `build_photo_set(out_dir, n=300, long_side=(1024, 1600), seed=0, quality=90)`: n distinct JPEG photos
  of a chosen size range, made reproducibly from the real photos by random crops and resizing.
- `build_wallpaper_set(out_dir, n=None, min_long_side=3000, include_art=True, quality=90)`: full-
  resolution (4K-ish) wallpapers re-encoded as JPEG, for decoding-bound benchmarks.

Both builders are idempotent: the parameters, the sources and a sha256 per file are recorded in
`manifest.json` in `out_dir`; a later call with the same parameters reuses the files if they are intact.
Every file is written atomically (temporary file + rename). Output bytes are identical for identical
inputs on the same Pillow/libjpeg build.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from offshelf.images import real_photos
from offshelf.io import atomic_write_bytes, atomic_write_json

__all__ = [
    "GNOME_DIR",
    "PLASMA_DIR",
    "build_photo_set",
    "build_wallpaper_set",
    "wallpapers",
]

# --- the fixed lists ------------------------------------------------------------------------------------


PLASMA_DIR = Path("/usr/share/wallpapers")
GNOME_DIR = Path("/usr/share/backgrounds/gnome")

#: Plasma themes (directory names) whose images are real photographs (plasma-workspace-wallpapers 5.27).
PLASMA_PHOTO_THEMES: frozenset[str] = frozenset(
    {
        "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
        "Grey", "Kite", "OneStandsOut", "Path", "summer_1am",
    }
)
#: Plasma themes that are renders, illustrations or abstract art (for the record; unknown names are art too).
PLASMA_ART_THEMES: frozenset[str] = frozenset(
    {
        "Altai", "Autumn", "Canopee", "Cascade", "Cluster", "Elarun", "Flow", "FlyingKonqui", "Honeywave",
        "IceCold", "Kay", "Kokkini", "MilkyWay", "Opal", "PastelHills", "Patak", "SafeLanding", "Shell",
        "Volna",
    }
)
#: GNOME background names (file stem without a -d/-l suffix) that are photographs. The bookworm
#: package (43.x) has none: adwaita, grid, licorice, pixels, symbolic, truchet, wood are renders.
GNOME_PHOTO_NAMES: frozenset[str] = frozenset()

_RASTER = (".jpg", ".jpeg", ".png", ".webp")
_MIN_WALLPAPER_SIDE = 1000  # skips placeholders such as gnome's 256x256 vnc-*.webp
_BUILD_VERSION = 1  # bump when the recipe below changes, so cached sets are rebuilt


# --- listing --------------------------------------------------------------------------------------------



def _pixels_from_name(path: Path) -> int:
    match = re.fullmatch(r"(\d+)x(\d+)", path.stem)
    return int(match.group(1)) * int(match.group(2)) if match else 0


def _plasma_wallpapers(include_art: bool) -> list[Path]:
    if not PLASMA_DIR.is_dir():
        return []
    found = []
    for theme in sorted(PLASMA_DIR.iterdir(), key=lambda p: p.name):
        if not theme.is_dir() or not (include_art or theme.name in PLASMA_PHOTO_THEMES):
            continue
        folders = ("images", "images_dark") if include_art else ("images",)
        for folder in folders:
            files = [
                p for p in (theme / "contents" / folder).glob("*")
                if p.suffix.lower() in _RASTER and _pixels_from_name(p) > 0
            ]
            if files:  # the largest size of this theme (names are WxH)
                found.append(max(files, key=lambda p: (_pixels_from_name(p), p.name)))
    return found


def _gnome_wallpapers(include_art: bool) -> list[Path]:
    if not GNOME_DIR.is_dir():
        return []
    found = []
    for path in sorted(GNOME_DIR.iterdir(), key=lambda p: p.name):
        if path.suffix.lower() not in _RASTER or not path.is_file():
            continue
        stem = re.sub(r"-[dl]$", "", path.stem)
        if include_art or stem in GNOME_PHOTO_NAMES:
            found.append(path)
    return found


def _long_side(path: Path) -> int:
    with Image.open(path) as im:
        return max(im.size)


def wallpapers(include_art: bool = False) -> list[Path]:
    """Raster wallpapers from Debian's `plasma-workspace-wallpapers` and `gnome-backgrounds`.

    By default only the real photographs (`PLASMA_PHOTO_THEMES`, `GNOME_PHOTO_NAMES`): one file per
    Plasma theme, its largest size (2560x1600 for all eleven photo themes). With `include_art=True`,
    every raster wallpaper (JPEG/PNG/WebP; SVG and XML are never returned) with a long side of at least
    1000 px, including each theme's dark variant. Order: Plasma themes by name, then GNOME files by name.
    An empty list if neither package is installed.
    """
    found = _plasma_wallpapers(include_art) + _gnome_wallpapers(include_art)
    return [p for p in found if _long_side(p) >= _MIN_WALLPAPER_SIDE]


# --- building sets --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_record(path: Path) -> dict[str, Any]:
    return {"path": str(path), "bytes": path.stat().st_size}


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            out = Image.new("RGB", rgba.size, (255, 255, 255))
            out.paste(rgba, mask=rgba.getchannel("A"))
            return out
        return im.convert("RGB")


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buffer.getvalue()


def _reuse(out_dir: Path, params: dict[str, Any]) -> list[Path] | None:
    """The recorded files if `out_dir/manifest.json` has exactly `params` and every file is intact."""
    manifest_path = out_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("params") != params:
        return None
    files = manifest.get("files", {})
    paths = [out_dir / name for name in files]
    for path, digest in zip(paths, files.values()):
        if not path.is_file() or _sha256(path) != digest:
            return None
    return paths


def _publish(out_dir: Path, params: dict[str, Any], made: dict[str, bytes], prefix: str) -> list[Path]:
    """Write the files atomically, drop our stale ones, and record the set in manifest.json (last)."""
    (out_dir / "manifest.json").unlink(missing_ok=True)  # the set is not valid while being rewritten
    for stale in out_dir.glob(prefix + "*.jpg"):
        if stale.name not in made:
            stale.unlink()
    paths = []
    for name, data in made.items():
        path = out_dir / name
        if not (path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data):
            atomic_write_bytes(path, data)
        paths.append(path)
    files = {name: hashlib.sha256(data).hexdigest() for name, data in made.items()}
    atomic_write_json(out_dir / "manifest.json", {"params": params, "files": files})
    return paths


@dataclass(frozen=True)
class _Plan:
    source: int
    crop: tuple[float, float, float, float]  # left, top, right, bottom as fractions of the source
    long_side: int
    mirror: bool


def _plan_photo(seed: int, index: int, weights: Sequence[float], long_side: tuple[int, int]) -> _Plan:
    # One independent stream per image (str seeds hash with SHA-512: stable across Python versions),
    # so the first k images of a set of n are the same for every n >= k. Only random() is used.
    rng = random.Random(f"offshelf-photo-set:{seed}:{index}")
    pick, total = rng.random() * sum(weights), 0.0
    source = len(weights) - 1
    for i, weight in enumerate(weights):
        total += weight
        if pick < total:
            source = i
            break
    fw, fh = 0.5 + 0.5 * rng.random(), 0.5 + 0.5 * rng.random()  # keep >= 50% of each side
    left, top = (1.0 - fw) * rng.random(), (1.0 - fh) * rng.random()
    lo, hi = long_side
    target = min(hi, lo + int(rng.random() * (hi - lo + 1)))
    return _Plan(source, (left, top, left + fw, top + fh), target, rng.random() < 0.5)


def _render_photo(image: Image.Image, plan: _Plan, quality: int) -> bytes:
    w, h = image.size
    left, top, right, bottom = plan.crop
    box = (round(left * w), round(top * h), max(round(right * w), round(left * w) + 1),
           max(round(bottom * h), round(top * h) + 1))
    crop = image.crop(box)
    cw, ch = crop.size
    scale = plan.long_side / max(cw, ch)
    size = (plan.long_side, max(1, round(ch * scale))) if cw >= ch else (max(1, round(cw * scale)), plan.long_side)
    out = crop.resize(size, Image.Resampling.LANCZOS)
    if plan.mirror:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _encode_jpeg(out, quality)


def _default_photo_sources() -> tuple[list[Path], list[float]]:
    """Wallpaper photographs (weight 4 each: large, sharp) then the scikit-image/-learn photos (weight 1)."""
    walls, small = wallpapers(), real_photos()
    return walls + small, [4.0] * len(walls) + [1.0] * len(small)


def build_photo_set(
    out_dir: str | Path,
    n: int = 300,
    long_side: tuple[int, int] = (1024, 1600),
    seed: int = 0,
    quality: int = 90,
    *,
    sources: Sequence[str | Path] | None = None,
    workers: int | None = None,
) -> list[Path]:
    """Write `n` distinct JPEG photographs to `out_dir` (`photo_00000.jpg`, ...) and return their paths.

    Image i is made from one source photograph, chosen at random with weights (wallpaper photos 4, the
    small scikit-image/scikit-learn photos 1, unless `sources` is given; then all weigh the same), by a
    random crop that keeps 50..100% of each side, a Lanczos resize so that the long side is uniform in
    `long_side` (inclusive), a mirror with probability 1/2, and JPEG encoding at `quality`. Randomness
    comes from `seed` and i only, so the same call writes the same bytes, and a smaller `n` gives a
    prefix of a larger set. Idempotent: a valid earlier build with the same parameters and sources is
    reused without decoding anything. Raises RuntimeError if no source photo is available.
    """
    out = Path(out_dir)
    lo, hi = (int(v) for v in long_side)
    if n < 0 or not 16 <= lo <= hi or not 1 <= quality <= 100:
        raise ValueError(f"bad build_photo_set arguments: n={n}, long_side={long_side}, quality={quality}")
    if sources is None:
        paths, weights = _default_photo_sources()
    else:
        paths = [Path(p) for p in sources]
        weights = [1.0] * len(paths)
    if not paths:
        raise RuntimeError("no source photos: neither scikit-image's photos nor wallpapers are installed")
    params = {
        "kind": "photo-set", "version": _BUILD_VERSION, "n": n, "long_side": [lo, hi], "seed": seed,
        "quality": quality, "weights": weights, "sources": [_source_record(p) for p in paths],
    }
    reused = _reuse(out, params)
    if reused is not None:
        return reused
    out.mkdir(parents=True, exist_ok=True)

    plans = [_plan_photo(seed, i, weights, (lo, hi)) for i in range(n)]
    decoded: dict[int, Image.Image] = {}
    for plan in plans:
        if plan.source not in decoded:
            decoded[plan.source] = _open_rgb(paths[plan.source])
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        blobs = list(pool.map(lambda plan: _render_photo(decoded[plan.source], plan, quality), plans))
    made = {f"photo_{i:05d}.jpg": data for i, data in enumerate(blobs)}
    return _publish(out, params, made, "photo_")


_VARIANTS = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180)


def build_wallpaper_set(
    out_dir: str | Path,
    n: int | None = None,
    *,
    min_long_side: int = 3000,
    include_art: bool = True,
    quality: int = 90,
) -> list[Path]:
    """Write full-resolution wallpapers as JPEG (`wall_00000.jpg`, ...) to `out_dir`; return their paths.

    The sources are `wallpapers(include_art)` whose long side is at least `min_long_side` (with the
    defaults: the 5120x2880 / 3840x2160 Plasma renders and the 4096x4096 GNOME ones; the wallpaper
    photographs are only 2560x1600, so `include_art=False` needs `min_long_side <= 2560`). Nothing is
    upscaled. `n=None` writes each source once; a larger `n` cycles through the sources again, each
    round as a different variant (mirror, vertical flip, rotation by 180, then the same with 1% more
    trimmed off each border per further four rounds) so that no two files are the same. Deterministic
    and idempotent like `build_photo_set`. Raises RuntimeError if no wallpaper qualifies.
    """
    out = Path(out_dir)
    sources = [p for p in wallpapers(include_art=include_art) if _long_side(p) >= min_long_side]
    if not sources:
        raise RuntimeError(
            f"no wallpaper with a long side >= {min_long_side} px (install Debian's "
            "plasma-workspace-wallpapers / gnome-backgrounds, or lower min_long_side)"
        )
    count = len(sources) if n is None else int(n)
    if count < 0 or not 1 <= quality <= 100:
        raise ValueError(f"bad build_wallpaper_set arguments: n={n}, quality={quality}")
    params = {
        "kind": "wallpaper-set", "version": _BUILD_VERSION, "n": count, "min_long_side": min_long_side,
        "include_art": include_art, "quality": quality, "sources": [_source_record(p) for p in sources],
    }
    reused = _reuse(out, params)
    if reused is not None:
        return reused
    out.mkdir(parents=True, exist_ok=True)

    def render(index: int) -> bytes:
        source, cycle = index % len(sources), index // len(sources)
        image = _open_rgb(sources[source])
        trim = cycle // len(_VARIANTS) * 0.01
        if trim:
            w, h = image.size
            image = image.crop((round(trim * w), round(trim * h), round((1 - trim) * w), round((1 - trim) * h)))
        variant = _VARIANTS[cycle % len(_VARIANTS)]
        if variant is not None:
            image = image.transpose(variant)
        return _encode_jpeg(image, quality)

    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        blobs = list(pool.map(render, range(count)))
    made = {f"wall_{i:05d}.jpg": data for i, data in enumerate(blobs)}
    return _publish(out, params, made, "wall_")
