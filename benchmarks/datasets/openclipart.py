"""Open Clip Art as an object-classification task: a fixed list of leaf categories, a fixed seeded split.

Source: Debian's `openclipart-png` (release 0.18), PNG renderings of public-domain clip art under
`/usr/share/openclipart/png/<category>/...`. Nothing is copied: the paths point into that tree.

What counts as an image of a category: the regular `*.png` files directly in its folder. Symbolic links
are left out: the package uses them to cross-list one drawing in several categories (22 of `recreation/party`
are links to `food/desserts`), so following them would put one image in two classes. Files that
`offshelf.images.decode_image` would refuse are skipped, decided from the PNG header alone: empty files,
non-PNG data and images above `DEFAULT_MAX_PIXELS` (three ~10,500 x 16,000 renderings in the chosen
categories: two in `food/fruit`, one in `food/desserts`).

The split: within each class, files are ordered by ``sha256(f"{seed}/{file name}")`` and the first
``round(test_fraction * n)`` go to "test" (stratified, and independent of numpy's RNG).
"""

from __future__ import annotations

import struct
from pathlib import Path

from benchmarks.datasets.labeled import LabeledSet, seeded_order
from offshelf.errors import OffshelfError
from offshelf.images import DEFAULT_MAX_PIXELS

__all__ = ["OPENCLIPART_CATEGORIES", "OPENCLIPART_DIR", "MIN_IMAGES", "openclipart", "openclipart_categories"]

OPENCLIPART_DIR = Path("/usr/share/openclipart/png")

#: Fewest usable images a class may have.
MIN_IMAGES = 30

#: The classes (label = last path component), chosen by looking at every leaf category with >= 30 files.
#: Kept: categories whose images each show one kind of object, drawn by many artists in many styles.
#: Left out although they have >= 30 files:
#: - icon themes, rendered from one template per set: computer/icons/{flat,lemon}-theme/*;
#: - symbols, signs and abstract shapes: shapes/{arrows,jigsaw,stars}, signs_and_symbols/{map_symbols,led},
#:   transportation/roadsigns, flags (signs_and_symbols/flags/{africa,asia,europe/france,semaphore}),
#:   computer/buttons (GUI buttons and arrows), special/patterns;
#: - one drawing set in several styles, where the class would be the style: recreation/games/cards/*
#:   (the same 54 playing cards four times), people/stickmen (one artist's blue stick figures),
#:   people/smilies (variations of two emoticon templates);
#: - not objects: transportation/boating (sailing diagrams and knots); tools/weapons (a third are tiny
#:   "bullet hole" marks);
#: - under 30 usable files: food/meats_and_eggs (30 files, two above the pixel limit).
OPENCLIPART_CATEGORIES: tuple[str, ...] = (
    "animals/bugs",
    "buildings/homes",
    "computer/hardware",
    "food/desserts",
    "food/fruit",
    "recreation/sports",
)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_usable(path: Path) -> bool:
    """A non-empty PNG whose header size is within the decoder's pixel limit."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return False
    width, height = struct.unpack(">II", head[16:24])
    return 0 < width * height <= DEFAULT_MAX_PIXELS


def _category_files(root: Path, category: str) -> list[Path]:
    """The usable images of one leaf category, sorted by file name; a clear error if it changed."""
    folder = root / category
    if not folder.is_dir():
        raise OffshelfError(
            f"Open Clip Art category {category!r} not found under {root}: "
            "install it with `apt-get install openclipart-png` (release 0.18 expected)"
        )
    if any(entry.is_dir() for entry in folder.iterdir()):
        raise OffshelfError(f"Open Clip Art category {category!r} has subfolders: not the expected package")
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file() and not p.is_symlink()
    )
    usable = [p for p in files if _is_usable(p)]
    if len(usable) < MIN_IMAGES:
        raise OffshelfError(
            f"Open Clip Art category {category!r} has {len(usable)} usable images, "
            f"expected >= {MIN_IMAGES}: not the expected package"
        )
    return usable


def _files_by_category(root: str | Path | None) -> dict[str, list[Path]]:
    folder = Path(root) if root is not None else OPENCLIPART_DIR
    return {category: _category_files(folder, category) for category in OPENCLIPART_CATEGORIES}


def openclipart_categories(root: str | Path | None = None) -> dict[str, int]:
    """The fixed categories with their numbers of usable images (checks that each exists with >= 30)."""
    return {category: len(files) for category, files in _files_by_category(root).items()}


def openclipart(
    root: str | Path | None = None, seed: int = 0, test_fraction: float = 0.3
) -> LabeledSet:
    """The fixed Open Clip Art categories as a labelled set with a stratified seeded train/test split.

    `root` is the package's `png` folder (default `OPENCLIPART_DIR`). Labels are the categories' last
    path component ("bugs", "homes", ...). Items are ordered by category, then file name.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    paths: list[Path] = []
    labels: list[str] = []
    split: list[str] = []
    for category, files in _files_by_category(root).items():
        n_test = max(1, round(test_fraction * len(files)))
        test = set(seeded_order([p.name for p in files], seed)[:n_test])
        paths.extend(files)
        labels.extend([category.rsplit("/", 1)[-1]] * len(files))
        split.extend("test" if i in test else "train" for i in range(len(files)))
    return LabeledSet(name="openclipart", paths=paths, labels=labels, split=split)
