"""Labelled image sets as files on disk, shared by the dataset loaders (`fashion_mnist`, `openclipart`).

A `LabeledSet` is three parallel lists (path, label, split) so that the embedding pipeline, which reads
image files, can consume it directly, and the probes can take the labels without a second lookup.

Seeded choices (subsamples, train/test splits) order items by ``sha256(f"{seed}/{key}")``: the result does
not depend on the numpy or Python version, and a smaller sample is a prefix of a larger one.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from offshelf.io import atomic_write_bytes
from offshelf.models import offshelf_home

__all__ = ["SPLITS", "LabeledSet", "datasets_root", "indices_by_class", "seeded_order"]

SPLITS: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True)
class LabeledSet:
    """Image files with one label each and an official or fixed seeded train/test split."""

    name: str
    paths: list[Path]
    labels: list[str]
    split: list[str]

    def __post_init__(self) -> None:
        if not len(self.paths) == len(self.labels) == len(self.split):
            lengths = (len(self.paths), len(self.labels), len(self.split))
            raise ValueError(f"paths, labels and split differ in length: {lengths}")
        unknown = set(self.split) - set(SPLITS)
        if unknown:
            raise ValueError(f"split values must be one of {SPLITS}, got {sorted(unknown)}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def classes(self) -> list[str]:
        """The distinct labels, sorted."""
        return sorted(set(self.labels))

    def subset(self, split: str) -> LabeledSet:
        """The items of one split ("train" or "test"), in their original order."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        keep = [i for i, s in enumerate(self.split) if s == split]
        return LabeledSet(
            name=f"{self.name}:{split}",
            paths=[self.paths[i] for i in keep],
            labels=[self.labels[i] for i in keep],
            split=[split] * len(keep),
        )

    def write_labels_csv(self, path: str | Path) -> Path:
        """Write a `path,label` CSV (the format of `offshelf probe fit --labels`) atomically."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows(zip(map(str, self.paths), self.labels))
        return atomic_write_bytes(path, buffer.getvalue().encode())


def datasets_root(root: str | Path | None = None) -> Path:
    """Where datasets are materialized: `root` if given, else `offshelf_home()/"datasets"`."""
    return Path(root) if root is not None else offshelf_home() / "datasets"


def seeded_order(keys: Sequence[str], seed: int) -> list[int]:
    """Positions of `keys` in a pseudo-random order fixed by `seed` (sha256 of seed and key)."""
    rank = [hashlib.sha256(f"{seed}/{key}".encode()).digest() for key in keys]
    return sorted(range(len(keys)), key=rank.__getitem__)


def indices_by_class(labels: Sequence[str]) -> dict[str, list[int]]:
    """Positions of each label, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return groups
