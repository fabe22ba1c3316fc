"""`ItemPaths`: the stored path of each item a searcher holds, kept compact enough for millions of items.

A Python dict of id -> path costs ~400 bytes an item (1M items: 0.4 GB, more than an IVF-PQ index of them);
here an `IdRows` finds each id's row in the store's Arrow string array of paths (the path's bytes plus a 4-byte
offset), which is held as given, never copied. Items added or removed after opening (the service's writes) go
into a small dict of changes that shadows the arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from offshelf.store import IdRows


class ItemPaths:
    """id -> path for the items of one store snapshot, plus the changes made since."""

    def __init__(self, ids: np.ndarray, paths: pa.Array) -> None:
        if len(ids) != len(paths):
            raise ValueError(f"{len(ids)} ids but {len(paths)} paths")
        self._rows = IdRows(ids)
        self._paths = paths
        self._changes: dict[int, str | None] = {}  # an id added (its path) or removed (None) since opening
        self._count = len(self._rows)

    def _opened_with(self, item_id: int) -> str | None:
        row = int(self._rows.rows_of(np.array([item_id]))[0])
        return None if row < 0 else self._paths[row].as_py()

    def get(self, item_id: int) -> str | None:
        """The path of `item_id`, None if it is not held."""
        item_id = int(item_id)
        if item_id in self._changes:
            return self._changes[item_id]
        return self._opened_with(item_id)

    def set(self, ids: Sequence[int] | np.ndarray, paths: Sequence[str]) -> None:
        """Hold `ids` under `paths` (an id already held takes its new path)."""
        for item_id, path in zip(np.asarray(ids, np.int64).tolist(), paths):
            self._count += self.get(item_id) is None
            self._changes[item_id] = str(path)

    def discard(self, ids: Sequence[int] | np.ndarray) -> None:
        """Stop holding `ids` (ids not held are ignored)."""
        for item_id in np.asarray(ids, np.int64).tolist():
            self._count -= self.get(item_id) is not None
            self._changes[item_id] = None

    def __len__(self) -> int:
        return self._count
