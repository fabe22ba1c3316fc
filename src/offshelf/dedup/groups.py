"""Groups of duplicates that do not chain, and which item of a group to keep.

The rule: items are visited in keep order (the best item to keep first). An item not yet in a group starts
a group as its kept item, and takes every item not yet in a group whose pair with it reaches the threshold.
So every duplicate is itself above the threshold with the group's kept item: A ~ B and B ~ C never put A and
C together through B unless A ~ C too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from offshelf.errors import OffshelfError

KEEP_POLICIES = ("largest", "oldest", "newest", "first")


@dataclass(frozen=True)
class Group:
    """Row numbers: the item to keep, its duplicates (best score first) and their scores with it."""

    keep: int
    duplicates: tuple[int, ...]
    scores: tuple[float, ...]


def _pixels(path: str) -> int:
    try:
        with Image.open(path) as image:  # reads the header only
            return image.width * image.height
    except OSError:
        return 0


def _mtime(path: str, stored: int) -> int:
    try:
        return os.stat(path).st_mtime_ns  # the file's own time now (a store keeps the time it first embedded)
    except OSError:
        return int(stored)


def keep_order(rows: np.ndarray, paths: Sequence[str], sizes: np.ndarray, mtimes: np.ndarray, policy: str) -> np.ndarray:
    """`rows` sorted best-to-keep first under `policy`: largest (pixels, then bytes), oldest or newest (file
    modification time), first (path order); ties broken by path."""
    if policy not in KEEP_POLICIES:
        raise OffshelfError(f"unknown keep policy {policy!r}; choose from {', '.join(KEEP_POLICIES)}")
    rows = np.asarray(rows, np.int64)
    names = np.array([paths[r] for r in rows], dtype=object)
    if policy == "largest":
        pixels = np.array([_pixels(paths[r]) for r in rows], np.int64)
        keys: tuple[np.ndarray, ...] = (names, -sizes[rows], -pixels)
    elif policy in ("oldest", "newest"):
        times = np.array([_mtime(paths[r], mtimes[r]) for r in rows], np.int64)
        keys = (names, times if policy == "oldest" else -times)
    else:
        keys = (names,)
    return rows[np.lexsort(keys)]


def form_groups(a: np.ndarray, b: np.ndarray, scores: np.ndarray, order: np.ndarray) -> list[Group]:
    """Star groups from pairs `(a, b, scores)` (row numbers), visiting candidate kept items in `order`
    (every row that appears in a pair, best to keep first)."""
    neighbours: dict[int, list[tuple[float, int]]] = {}
    for x, y, s in zip(a.tolist(), b.tolist(), scores.tolist()):
        neighbours.setdefault(x, []).append((s, y))
        neighbours.setdefault(y, []).append((s, x))
    taken: set[int] = set()
    groups = []
    for row in order.tolist():
        if row in taken or row not in neighbours:
            continue
        taken.add(row)
        members = sorted(((s, other) for s, other in neighbours[row] if other not in taken), reverse=True)
        if members:
            taken.update(other for _, other in members)
            groups.append(Group(row, tuple(o for _, o in members), tuple(round(s, 6) for s, _ in members)))
    return groups
