"""`StoreVectors`: a store's live vectors read from its shards on demand, a row group at a time.

It behaves like the `(n, dim)` float32 matrix `FeatureStore.vectors()` returns, for what the index and recall
code do with one: `len`, `shape`, and indexing by a slice or an array of row numbers (giving a new float32
matrix). Only the ids (and optionally the paths) are held; the vectors stay on disk until asked for, and at most
one decoded row group (about `ROW_GROUP_BYTES`, or one 1024-row shard as `embed` writes them) is cached. So a
build or a catch-up streams a million-vector store in chunks instead of holding it next to the index.

The view reads the shard files of one snapshot. If a compaction replaces them while it is being read, the next
read fails with a StoreError asking to run again (no partial result is returned).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from offshelf.errors import StoreError
from offshelf.store.id_rows import IdRows
from offshelf.store.shards import shard_errors, shard_seq

CHUNK_ROWS = 8192  # rows per chunk when streaming a whole store (40 MB at dim 1280)


class StoreVectors:
    """The live rows of one store snapshot: `ids` (int64), `paths` (if read), vectors on demand.

    `view[a:b]` and `view[rows]` (int array, any order) return float32 `(m, dim)` matrices, row for row the same
    as `FeatureStore.vectors()[2][...]`.
    """

    def __init__(self, root: Path, dim: int, shard_paths: Sequence[Path], live: pa.Table) -> None:
        self.root, self.dim = root, dim
        self.ids: np.ndarray = live.column("id").to_numpy()
        # one Arrow string array (path bytes + offsets), not a list of Python str: ~70 bytes an item less
        self.paths: pa.Array | None = (live.column("path").combine_chunks() if "path" in live.column_names
                                       else None)
        by_seq = {shard_seq(p): p for p in shard_paths}
        seqs, rows = live.column("seq").to_numpy(), live.column("row").to_numpy()
        # one part per (shard, row group) holding live rows: its file, group number and the live rows in it
        self._parts: list[tuple[Path, int, np.ndarray]] = []
        bounds = np.flatnonzero(np.diff(seqs)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(seqs)]):
            if lo == hi:
                continue
            path = by_seq[int(seqs[lo])]
            with shard_errors(path, root):
                meta = pq.ParquetFile(path).metadata
            starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
            shard_rows = rows[lo:hi]
            group_of = np.searchsorted(starts, shard_rows, side="right") - 1
            for group in np.unique(group_of):
                self._parts.append((path, int(group), shard_rows[group_of == group] - starts[group]))
        self._starts = np.cumsum([0] + [len(p[2]) for p in self._parts])
        self._cached: tuple[int, np.ndarray] | None = None
        self._id_rows: IdRows | None = None  # built on the first `rows_of`

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The row numbers of `ids` in this view (-1 for an id it does not hold)."""
        if self._id_rows is None:
            self._id_rows = IdRows(self.ids)
        return self._id_rows.rows_of(ids)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.ids), self.dim

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def __getitem__(self, key: slice | np.ndarray | Sequence[int]) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("StoreVectors slices take no step")
            positions = np.arange(start, max(start, stop), dtype=np.int64)
        else:
            positions = np.asarray(key)
            if positions.dtype == bool:
                positions = np.flatnonzero(positions)
            positions = positions.astype(np.int64, copy=False).reshape(-1)
            if len(positions) and (positions.min() < -len(self) or positions.max() >= len(self)):
                raise IndexError(f"row index out of range for {len(self)} stored vectors")
            positions = np.where(positions < 0, positions + len(self), positions)
        out = np.empty((len(positions), self.dim), np.float32)
        order = np.argsort(positions, kind="stable")  # read each part once, in file order
        sorted_pos = positions[order]
        part_of = np.searchsorted(self._starts, sorted_pos, side="right") - 1
        cuts = np.flatnonzero(np.diff(part_of)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(sorted_pos)]):
            if lo == hi:
                continue
            part = int(part_of[lo])
            rows = self._parts[part][2][sorted_pos[lo:hi] - self._starts[part]]
            out[order[lo:hi]] = self._group(part)[rows]
        return out

    def _group(self, part: int) -> np.ndarray:
        """The decoded embeddings of one part's row group (all its rows), cached until another is read."""
        if self._cached is not None and self._cached[0] == part:
            return self._cached[1]
        path, group, _ = self._parts[part]
        try:
            with shard_errors(path, self.root):
                column = pq.ParquetFile(path, page_checksum_verification=True).read_row_group(
                    group, columns=["embedding"]).column("embedding")
        except FileNotFoundError:
            raise StoreError(f"store {self.root} changed while being read (its shards were compacted); "
                             "run again") from None
        matrix, filled = np.empty((len(column), self.dim), np.float32), 0
        for chunk in column.chunks:  # each chunk's values are viewed, not copied, then copied once into place
            matrix[filled : filled + len(chunk)] = chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.dim)
            filled += len(chunk)
        self._cached = (part, matrix)
        return matrix
