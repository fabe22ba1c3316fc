"""`IdRows`: the row of each item id in an array of distinct ids, by binary search.

A searcher, a store view and the dedup pass all turn ids that FAISS or a user gives back into row numbers;
a Python dict of a million ids costs ~100 MB, this costs the ids sorted (8 bytes each) and their rows (4 bytes
each below 2**32 items).
"""

from __future__ import annotations

import numpy as np


class IdRows:
    """id -> row number for the distinct int64 `ids` (row i holds ids[i])."""

    def __init__(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        order = np.argsort(ids, kind="stable")
        self._sorted = np.ascontiguousarray(ids[order])
        self._rows = order.astype(np.min_scalar_type(max(len(ids) - 1, 0)))

    def __len__(self) -> int:
        return len(self._sorted)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The row (int64) of each of `ids`, -1 for an id not held."""
        ids = np.asarray(ids, np.int64)
        if not len(self._sorted):
            return np.full(ids.shape, -1, np.int64)
        at = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        return np.where(self._sorted[at] == ids, self._rows[at].astype(np.int64), -1)
