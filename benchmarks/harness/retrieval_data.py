"""The data of the retrieval benchmark: a copy-detection set built from the real photos available offline
(the Copydays idea), distractors, and the Open Clip Art classes for class-level retrieval.

Everything derived is written once under `bench_home()/retrieval-data/v{VERSION}` and reused: each file
is a deterministic function of its sources (seeded edits), written atomically, so a later run (or the
quick run, whose files are a subset of the full run's) only writes what is missing.

- Originals: the colour photographs of `real_photos()` minus `motorcycle_right` (the stereo twin of
  `motorcycle_left`), then the Plasma wallpaper photographs, each resized (Lanczos) to a long side of at
  most `ORIGINAL_LONG_SIDE` px and stored as PNG: these canonical files are the database's originals and
  the sources of the queries.
- Queries: every original under every edit of `offshelf.images.copies.COPY_FAMILIES` (7 families x 4
  strengths), stored losslessly as PNG, except the JPEG family, stored as the JPEG at its quality.
- Distractors: Open Clip Art PNGs outside the class-retrieval categories (regular files, no symlinks, at
  most `MAX_CLIPART_PIXELS` pixels, a seeded sample), Fashion-MNIST training images (the class-balanced
  seeded sample of `fashion_mnist`), and the Plasma/GNOME wallpapers that are renders rather than photos
  (resized like the originals; the dark variants of photo themes are left out, being near-copies).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from benchmarks.datasets import fashion_mnist, openclipart, wallpapers
from benchmarks.datasets.labeled import seeded_order
from benchmarks.datasets.openclipart import OPENCLIPART_CATEGORIES, OPENCLIPART_DIR
from benchmarks.datasets.photos import PLASMA_PHOTO_THEMES
from benchmarks.harness.stores import bench_home
from offshelf.images import DEFAULT_MAX_PIXELS, real_photos
from offshelf.images.copies import COPY_FAMILIES, CopyEdit, jpeg_bytes
from offshelf.io import atomic_write_bytes

VERSION = 1
ORIGINAL_LONG_SIDE = 1024
MAX_CLIPART_PIXELS = 8_000_000
STEREO_TWIN = "motorcycle_right"


@dataclass(frozen=True)
class Sizes:
    """How much data a run uses; `quick` is a tiny subset of the full run's files."""

    n_photo_originals: int | None  # None: all
    n_wallpaper_originals: int | None
    levels: tuple[int, ...]  # which strengths of each family
    n_clipart: int
    fashion_per_class: int
    n_wall_art: int | None
    class_per_category: int | None


FULL = Sizes(None, None, (1, 2, 3, 4), 2000, 300, None, None)
QUICK = Sizes(3, 1, (1, 4), 30, 2, 2, 8)


@dataclass
class CopyDetectionSet:
    originals: list[Path]
    queries: list[Path]
    query_original: list[int]  # index into originals
    query_edit: list[CopyEdit]
    distractors: dict[str, list[Path]] = field(default_factory=dict)  # source -> files

    @property
    def all_distractors(self) -> list[Path]:
        return [p for paths in self.distractors.values() for p in paths]


def data_root() -> Path:
    return bench_home() / "retrieval-data" / f"v{VERSION}"


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _exists(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _canonical(source: Path, target: Path) -> Path:
    """`source` as RGB, long side at most ORIGINAL_LONG_SIDE, stored as PNG at `target` (once)."""
    if not _exists(target):
        with Image.open(source) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                image = Image.new("RGB", rgba.size, (255, 255, 255))
                image.paste(rgba, mask=rgba.getchannel("A"))
            else:
                image = im.convert("RGB")
        scale = ORIGINAL_LONG_SIDE / max(image.size)
        if scale < 1:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        atomic_write_bytes(target, _png_bytes(image))
    return target


def _original_sources(sizes: Sizes) -> list[tuple[str, Path]]:
    photos = [p for p in real_photos() if p.stem != STEREO_TWIN]
    walls = wallpapers()
    photos = photos if sizes.n_photo_originals is None else photos[: sizes.n_photo_originals]
    walls = walls if sizes.n_wallpaper_originals is None else walls[: sizes.n_wallpaper_originals]
    named = [(f"photo-{p.stem}", p) for p in photos]
    named += [(f"wall-{p.parents[2].name}", p) for p in walls]  # .../<Theme>/contents/images/WxH.jpg
    return named


def copy_detection_set(sizes: Sizes = FULL) -> CopyDetectionSet:
    """Originals, queries (written on first use) and distractor files for `sizes`."""
    root = data_root()
    originals, queries, query_original, query_edit = [], [], [], []
    edits = [edit for family in COPY_FAMILIES.values() for edit in family if edit.level in sizes.levels]
    for i, (name, source) in enumerate(_original_sources(sizes)):
        original = _canonical(source, root / "originals" / f"{name}.png")
        originals.append(original)
        image: Image.Image | None = None
        for edit in edits:
            suffix = "jpg" if edit.jpeg_quality else "png"
            target = root / "queries" / f"{name}__{edit.key}.{suffix}"
            if not _exists(target):
                if image is None:
                    with Image.open(original) as im:
                        image = im.convert("RGB")
                if edit.jpeg_quality:
                    data = jpeg_bytes(image, edit.jpeg_quality)
                else:
                    data = _png_bytes(edit.apply(image, f"{name}/{edit.key}"))
                atomic_write_bytes(target, data)
            queries.append(target)
            query_original.append(i)
            query_edit.append(edit)
    distractors = {
        "openclipart": clipart_distractors(sizes.n_clipart),
        "fashion-mnist": fashion_distractors(sizes.fashion_per_class),
        "wallpaper-art": wall_art(sizes.n_wall_art),
    }
    return CopyDetectionSet(originals, queries, query_original, query_edit, distractors)


def _png_pixels(path: Path) -> int:
    """Pixel count from a PNG header; 0 if the file is not a readable PNG."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(24)
    except OSError:
        return 0
    if len(head) < 24 or not head.startswith(b"\x89PNG\r\n\x1a\n") or head[12:16] != b"IHDR":
        return 0
    width, height = struct.unpack(">II", head[16:24])
    return width * height


def clipart_distractors(n: int, root: Path = OPENCLIPART_DIR) -> list[Path]:
    """A seeded sample of `n` Open Clip Art PNGs outside the class-retrieval categories (regular files,
    not symlinks; at most MAX_CLIPART_PIXELS pixels); a smaller `n` gives a prefix of a larger one."""
    excluded = {root / category for category in OPENCLIPART_CATEGORIES}
    candidates = sorted(
        p for p in root.rglob("*.png")
        if p.is_file() and not p.is_symlink() and p.parent not in excluded
        and 0 < _png_pixels(p) <= min(MAX_CLIPART_PIXELS, DEFAULT_MAX_PIXELS)
    )
    order = seeded_order([str(p.relative_to(root)) for p in candidates], 0)
    return [candidates[i] for i in order[:n]]


def fashion_distractors(per_class: int) -> list[Path]:
    """Fashion-MNIST training images, `per_class` of each class (seeded; smaller is a subset of larger)."""
    data = fashion_mnist(per_class_train=per_class, per_class_test=1)
    return [p for p, split in zip(data.paths, data.split) if split == "train"]


def wall_art(n: int | None) -> list[Path]:
    """The rendered (not photographic) wallpapers, resized like the originals (written on first use)."""
    sources = [p for p in wallpapers(include_art=True) if not any(t in p.parts for t in PLASMA_PHOTO_THEMES)]
    sources = sources if n is None else sources[:n]
    out = []
    for p in sources:
        theme = p.parents[2].name if "wallpapers" in p.parts else p.stem
        variant = p.parent.name if "wallpapers" in p.parts else "gnome"
        out.append(_canonical(p, data_root() / "wallpaper-art" / f"{theme}-{variant}.png"))
    return out


def class_retrieval_set(sizes: Sizes = FULL) -> tuple[list[Path], list[str]]:
    """The Open Clip Art classes (`openclipart()`, all splits): paths and labels; `class_per_category`
    keeps the first images of each class."""
    data = openclipart()
    if sizes.class_per_category is None:
        return list(data.paths), list(data.labels)
    kept: dict[str, int] = {}
    paths, labels = [], []
    for path, label in zip(data.paths, data.labels):
        if kept.get(label, 0) < sizes.class_per_category:
            kept[label] = kept.get(label, 0) + 1
            paths.append(path)
            labels.append(label)
    return paths, labels
