"""Fashion-MNIST (Xiao et al. 2017) as PNG files in a folder-per-class tree.

Source: Debian's `dataset-fashion-mnist`, the four official idx files (gzip) under
`/usr/share/datasets/fashion-mnist/`: 60,000 training and 10,000 test images, 28x28 grey, 10 classes.
They are read with numpy (no extra dependency) and written as 8-bit grey PNGs (pixel values unchanged:
0 is the black background) to::

    root/fashion-mnist/{train,test}/{class_name}/{index:05d}.png

where `index` is the image's position in its official idx file. Only the requested files are written, each
at most once: a call with a subsample writes that subsample, a later larger call adds what is missing.
`manifest.json` records the sha256 of the source files; if the installed package changes, the tree is
rebuilt. Each PNG is written to a temporary name and renamed (atomic against a killed process; a 28x28 PNG
fits in one filesystem block, and a zero-length file left by a power loss counts as missing).
Concurrent callers serialize on a lock file. Writing all 70,000 files takes 15-40 s on a 2-core VM (bound by
file creation; the PNG encoding alone is about 7 s).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.datasets.labeled import SPLITS, LabeledSet, datasets_root, indices_by_class, seeded_order
from offshelf.errors import OffshelfError
from offshelf.io import TMP_PREFIX, atomic_write_json
from offshelf.models.cache import blocking_lock, sha256_file

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "fashion_mnist"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Class names by label id, as published (`T-shirt/top` and `Ankle boot` made folder-safe).
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_FORMAT = 1
_WRITERS = 4
_CHUNK = 500


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed idx file of unsigned bytes (the MNIST format) into an array."""
    data = gzip.decompress(path.read_bytes())
    zero, dtype, ndim = struct.unpack_from(">HBB", data)
    if zero != 0 or dtype != 0x08:
        raise OffshelfError(f"{path} is not an idx file of unsigned bytes")
    shape = struct.unpack_from(f">{ndim}I", data, 4)
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise OffshelfError(f"{path} is truncated: header says {shape}, got {len(data) - offset} bytes")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def _read_labels(path: Path) -> np.ndarray:
    """Label ids from an idx labels file, checked to be class indices."""
    ids = _read_idx(path)
    if ids.ndim != 1 or (ids.size and ids.max() >= len(FASHION_MNIST_CLASSES)):
        raise OffshelfError(f"{path} does not hold Fashion-MNIST labels (shape {ids.shape})")
    return ids


def _check_source(source: Path) -> dict[str, str]:
    """sha256 of each source file; a clear error if the package is not installed."""
    names = [name for pair in _FILES.values() for name in pair]
    missing = [name for name in names if not (source / name).is_file()]
    if missing:
        raise OffshelfError(
            f"Fashion-MNIST not found in {source} (missing {', '.join(missing)}): "
            "install it with `apt-get install dataset-fashion-mnist`"
        )
    return {name: sha256_file(source / name) for name in names}


def _sample(labels: np.ndarray, per_class: int | None, seed: int, split: str) -> list[int]:
    """Sorted indices of a class-balanced seeded subsample (all indices if `per_class` is None)."""
    if per_class is None:
        return list(range(len(labels)))
    chosen: list[int] = []
    for label, members in sorted(indices_by_class(labels.tolist()).items()):
        if not 0 < per_class <= len(members):
            raise OffshelfError(
                f"per_class_{split} must be in 1..{len(members)} for class {FASHION_MNIST_CLASSES[label]}, "
                f"got {per_class}"
            )
        order = seeded_order([f"{split}/{i}" for i in members], seed)
        chosen.extend(members[k] for k in order[:per_class])
    return sorted(chosen)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_pngs(images: np.ndarray, items: Sequence[tuple[int, Path]]) -> None:
    """Write `images[index]` to `path` for each item (temporary name + rename; caller holds the lock)."""
    for index, path in items:
        tmp = path.with_name(TMP_PREFIX + path.name)
        with open(tmp, "wb") as handle:
            handle.write(_png(images[index]))
        os.replace(tmp, path)


def _load_json(path: Path) -> object:
    """The JSON in `path`, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_written(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _materialize(
    source: Path, out: Path, manifest: dict, wanted: dict[str, list[tuple[int, Path]]], workers: int
) -> None:
    """Write the missing files of `wanted` (split -> (index, path)), rebuilding the tree if stale."""
    manifest_path = out / "manifest.json"
    with blocking_lock(out / ".lock"):
        if _load_json(manifest_path) != manifest:
            for split in SPLITS:
                shutil.rmtree(out / split, ignore_errors=True)
            atomic_write_json(manifest_path, manifest)
        for split, items in wanted.items():
            todo = [(i, p) for i, p in items if not _is_written(p)]
            if not todo:
                continue
            for name in FASHION_MNIST_CLASSES:
                (out / split / name).mkdir(parents=True, exist_ok=True)
            images = _read_idx(source / _FILES[split][0])
            chunks = [todo[k : k + _CHUNK] for k in range(0, len(todo), _CHUNK)]
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda chunk: _write_pngs(images, chunk), chunks))


def fashion_mnist(
    root: str | Path | None = None,
    per_class_train: int | None = None,
    per_class_test: int | None = None,
    seed: int = 0,
    *,
    source: str | Path = FASHION_MNIST_DIR,
    workers: int = _WRITERS,
) -> LabeledSet:
    """The official Fashion-MNIST train/test split as PNG files (written on first use).

    `per_class_train` / `per_class_test`: keep that many images of each class (a seeded, deterministic
    subsample; with the same seed a smaller sample is a subset of a larger one); None keeps all
    (6,000 / 1,000 per class). Items are ordered train then test, by index within each split.
    """
    source, out = Path(source), datasets_root(root) / "fashion-mnist"
    manifest = {"format": _FORMAT, "classes": list(FASHION_MNIST_CLASSES), "source": _check_source(source)}
    per_class = {"train": per_class_train, "test": per_class_test}
    wanted: dict[str, list[tuple[int, Path]]] = {}
    for split in SPLITS:
        ids = _read_labels(source / _FILES[split][1])
        chosen = _sample(ids, per_class[split], seed, split)
        wanted[split] = [(i, out / split / FASHION_MNIST_CLASSES[ids[i]] / f"{i:05d}.png") for i in chosen]
    items = [(split, path) for split in SPLITS for _, path in wanted[split]]
    if _load_json(out / "manifest.json") != manifest or not all(_is_written(path) for _, path in items):
        _materialize(source, out, manifest, wanted, workers)
    return LabeledSet(
        name="fashion-mnist",
        paths=[path for _, path in items],
        labels=[path.parent.name for _, path in items],
        split=[split for split, _ in items],
    )
