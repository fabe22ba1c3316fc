"""Labelled datasets on disk: Fashion-MNIST materialized as PNGs, the fixed Open Clip Art task."""

from __future__ import annotations

import collections
import csv
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.datasets.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, fashion_mnist
from benchmarks.datasets.labeled import LabeledSet, datasets_root
from benchmarks.datasets.openclipart import (
    MIN_IMAGES,
    OPENCLIPART_CATEGORIES,
    OPENCLIPART_DIR,
    openclipart,
    openclipart_categories,
)
from offshelf.errors import OffshelfError
from offshelf.images import decode_image

PER_TRAIN, PER_TEST = 6, 3


def _raw(name: str, header: int) -> np.ndarray:
    """An idx file read independently of the module under test (fixed MNIST header sizes)."""
    return np.frombuffer(gzip.open(FASHION_MNIST_DIR / name).read(), np.uint8, offset=header)


@pytest.fixture(scope="session")
def raw_fashion() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _raw(f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        out[split] = (images, _raw(f"{prefix}-labels-idx1-ubyte.gz", 8))
    return out


@pytest.fixture(scope="session")
def fm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="session")
def fm_small(fm_root: Path) -> LabeledSet:
    return fashion_mnist(fm_root, per_class_train=PER_TRAIN, per_class_test=PER_TEST)


def _mtimes(paths: list[Path]) -> list[int]:
    return [p.stat().st_mtime_ns for p in paths]


# --- Fashion-MNIST ----------------------------------------------------------------------------------------


def test_fashion_mnist_subset_is_balanced_with_the_folder_layout(fm_small: LabeledSet, fm_root: Path):
    counts = collections.Counter(zip(fm_small.split, fm_small.labels))
    sizes = {"train": PER_TRAIN, "test": PER_TEST}
    assert counts == {(s, c): n for s, n in sizes.items() for c in FASHION_MNIST_CLASSES}
    assert fm_small.classes == sorted(FASHION_MNIST_CLASSES)
    assert fm_small.split == ["train"] * 10 * PER_TRAIN + ["test"] * 10 * PER_TEST
    for path, label, split in zip(fm_small.paths, fm_small.labels, fm_small.split):
        assert path.parent == fm_root / "fashion-mnist" / split / label
        assert path.suffix == ".png" and len(path.stem) == 5


def test_fashion_mnist_pngs_hold_the_raw_pixels_and_labels(fm_small: LabeledSet, raw_fashion):
    for path, label, split in list(zip(fm_small.paths, fm_small.labels, fm_small.split))[::7]:
        images, ids = raw_fashion[split]
        index = int(path.stem)
        assert FASHION_MNIST_CLASSES[ids[index]] == label
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == (28, 28)
            np.testing.assert_array_equal(np.asarray(im), images[index])
        rgb = np.asarray(decode_image(path.read_bytes()))
        np.testing.assert_array_equal(rgb[..., 0], images[index])


def test_fashion_mnist_is_deterministic_and_nested(fm_small: LabeledSet, fm_root: Path, tmp_path: Path):
    def relative(ds: LabeledSet, root: Path) -> list[Path]:
        return [p.relative_to(root) for p in ds.paths]

    again = fashion_mnist(tmp_path, per_class_train=PER_TRAIN, per_class_test=PER_TEST)
    assert relative(again, tmp_path) == relative(fm_small, fm_root)
    assert again.labels == fm_small.labels
    larger = fashion_mnist(tmp_path, per_class_train=PER_TRAIN + 4, per_class_test=PER_TEST)
    assert set(again.paths) < set(larger.paths)
    other_seed = fashion_mnist(tmp_path, per_class_train=PER_TRAIN, per_class_test=PER_TEST, seed=1)
    assert set(other_seed.paths) != set(again.paths)


def test_fashion_mnist_is_idempotent_and_repairs(tmp_path: Path):
    first = fashion_mnist(tmp_path, per_class_train=2, per_class_test=1)
    manifest = (tmp_path / "fashion-mnist" / "manifest.json").read_bytes()
    before = _mtimes(first.paths)
    assert fashion_mnist(tmp_path, per_class_train=2, per_class_test=1) == first
    assert _mtimes(first.paths) == before
    assert (tmp_path / "fashion-mnist" / "manifest.json").read_bytes() == manifest
    first.paths[0].unlink()
    first.paths[1].write_bytes(b"")  # what a power loss can leave behind
    fashion_mnist(tmp_path, per_class_train=2, per_class_test=1)
    assert _mtimes(first.paths)[2:] == before[2:]
    assert all(p.stat().st_size > 0 for p in first.paths)
    assert not list((tmp_path / "fashion-mnist").rglob(".tmp-*"))


def test_fashion_mnist_rebuilds_when_the_source_changes(tmp_path: Path):
    first = fashion_mnist(tmp_path, per_class_train=1, per_class_test=1)
    manifest_path = tmp_path / "fashion-mnist" / "manifest.json"
    stale = json.loads(manifest_path.read_text())
    stale["source"]["train-images-idx3-ubyte.gz"] = "0" * 64
    manifest_path.write_text(json.dumps(stale))
    leftover = first.paths[0].with_name("99999.png")
    leftover.write_bytes(b"old")
    assert fashion_mnist(tmp_path, per_class_train=1, per_class_test=1) == first
    assert not leftover.exists()
    assert json.loads(manifest_path.read_text())["source"]["train-images-idx3-ubyte.gz"] != "0" * 64


def test_fashion_mnist_errors(tmp_path: Path):
    with pytest.raises(OffshelfError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(tmp_path, source=tmp_path / "nowhere")
    with pytest.raises(OffshelfError, match="per_class_test must be in 1..1000"):
        fashion_mnist(tmp_path, per_class_train=1, per_class_test=1001)


def test_datasets_root_follows_offshelf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OFFSHELF_HOME", str(tmp_path))
    assert datasets_root() == tmp_path / "datasets"
    assert datasets_root(tmp_path / "x") == tmp_path / "x"


# --- LabeledSet -------------------------------------------------------------------------------------------


def test_labeled_set_subset_and_csv(tmp_path: Path):
    a, b, c = Path("a.png"), Path("b.png"), Path("c.png")
    ds = LabeledSet("toy", [a, b, c], ["x", "y", "x"], ["train", "test", "train"])
    train = ds.subset("train")
    assert (train.paths, train.labels, train.split) == ([a, c], ["x", "x"], ["train", "train"])
    assert len(ds) == 3 and ds.classes == ["x", "y"]
    out = ds.write_labels_csv(tmp_path / "labels.csv")
    with open(out, newline="") as handle:
        assert list(csv.DictReader(handle)) == [
            {"path": "a.png", "label": "x"},
            {"path": "b.png", "label": "y"},
            {"path": "c.png", "label": "x"},
        ]
    with pytest.raises(ValueError, match=r"^split must be one of \('train', 'test'\), got 'val'$"):
        ds.subset("val")
    with pytest.raises(ValueError, match=r"^paths, labels and split differ in length: \(1, 0, 0\)$"):
        LabeledSet("bad", [Path("a.png")], [], [])
    with pytest.raises(ValueError, match=r"^split values must be one of \('train', 'test'\), got \['val'\]$"):
        LabeledSet("bad", [Path("a.png")], ["x"], ["val"])


# --- Open Clip Art ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clipart() -> LabeledSet:
    return openclipart()


def test_openclipart_fixed_categories(clipart: LabeledSet):
    counts = openclipart_categories()
    assert list(counts) == list(OPENCLIPART_CATEGORIES)
    assert all(n >= MIN_IMAGES for n in counts.values())
    labels = [c.rsplit("/", 1)[1] for c in OPENCLIPART_CATEGORIES]
    assert clipart.classes == sorted(labels)
    assert collections.Counter(clipart.labels) == dict(zip(labels, counts.values()))
    for path, label in zip(clipart.paths, clipart.labels):
        assert path.parent.name == label and path.parent.parent.parent == OPENCLIPART_DIR
        assert not path.is_symlink() and path.stat().st_size > 0


def test_openclipart_split_is_stratified_deterministic_and_disjoint(clipart: LabeledSet):
    per_class = collections.Counter(zip(clipart.labels, clipart.split))
    for label in clipart.classes:
        n = per_class[label, "train"] + per_class[label, "test"]
        assert per_class[label, "test"] == round(0.3 * n)
    train, test = clipart.subset("train"), clipart.subset("test")
    assert not set(train.paths) & set(test.paths)
    assert len(set(clipart.paths)) == len(clipart)
    assert openclipart() == clipart
    other = openclipart(seed=1)
    assert other.paths == clipart.paths and other.split != clipart.split
    half = openclipart(test_fraction=0.5)
    assert collections.Counter(half.split)["test"] > len(test)
    with pytest.raises(ValueError, match=r"^test_fraction must be in \(0, 1\), got 1\.0$"):
        openclipart(test_fraction=1.0)


def test_openclipart_images_all_decode(clipart: LabeledSet):
    for path in clipart.paths:
        assert min(decode_image(path.read_bytes()).size) > 0


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0"


def test_openclipart_skips_unusable_files_and_checks_the_package(tmp_path: Path):
    for category in OPENCLIPART_CATEGORIES:
        folder = tmp_path / category
        folder.mkdir(parents=True)
        for i in range(MIN_IMAGES):
            Image.new("RGB", (4, 4), (i, 0, 0)).save(folder / f"img{i:02d}.png")
        (folder / "empty.png").write_bytes(b"")
        (folder / "huge.png").write_bytes(_png_header(20_000, 20_000))
        (folder / "notes.txt").write_text("not an image")
        (folder / "link.png").symlink_to(folder / "img00.png")
    assert set(openclipart_categories(tmp_path).values()) == {MIN_IMAGES}
    names = {p.name for p in openclipart(tmp_path).paths}
    assert names == {f"img{i:02d}.png" for i in range(MIN_IMAGES)}
    (tmp_path / OPENCLIPART_CATEGORIES[0] / "img00.png").unlink()
    with pytest.raises(OffshelfError, match=f"has {MIN_IMAGES - 1} usable images"):
        openclipart(tmp_path)
    with pytest.raises(OffshelfError, match="apt-get install openclipart-png"):
        openclipart(tmp_path / "nowhere")
