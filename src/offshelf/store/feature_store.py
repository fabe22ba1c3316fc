"""The feature store: Parquet shards of embeddings plus a manifest, safe to kill and resume.

Layout of a store directory::

    manifest.json          what the features are (model, layer, pooling, views, dim, offshelf version)
    shards/00000001.parquet  rows: id, path, sha256, size, mtime_ns, embedding (float32[dim])
    errors/00000001.parquet  rows: id, path, sha256, size, mtime_ns, reason (files that failed)
    removed/00000003.parquet rows: id, path (items removed from the collection)
    .lock                  held by the one writer

Every shard is written atomically (see `offshelf.io`), so the shard files present are the committed state: a
run killed part-way loses only the shard it was writing, and the next run redoes exactly those files.
Shards are numbered in commit order; when a path appears again (its file changed), the newest row wins,
so reading always gives one row per path. An error row counts only while it is newer than the last
successful embedding of that path; a removal hides the item until it is embedded again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from offshelf._version import __version__
from offshelf.errors import StoreError
from offshelf.io import atomic_write, atomic_write_json, exclusive_lock, remove_stale_tmp_files
from offshelf.store.identity import IDENTITY_FIELDS, StoreConfig, check_identity

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SHARDS_DIR = "shards"
ERRORS_DIR = "errors"
REMOVED_DIR = "removed"
EVENT_DIRS = (SHARDS_DIR, ERRORS_DIR, REMOVED_DIR)


def path_id(path: str) -> int:
    """The stable int64 id of a stored item: the first 63 bits of the sha256 of its path."""
    return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big") & ((1 << 63) - 1)


@dataclass(frozen=True)
class FileState:
    """What the store knows of a file it has embedded: enough to tell whether it changed."""

    sha256: str
    size: int
    mtime_ns: int


def _embedding_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.int64()),
            ("path", pa.string()),
            ("sha256", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("embedding", pa.list_(pa.float32(), dim)),
        ]
    )


REMOVED_SCHEMA = pa.schema([("id", pa.int64()), ("path", pa.string())])

ERROR_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("reason", pa.string()),
    ]
)


@dataclass
class ShardRows:
    """Rows collected for one shard: successful embeddings and failures."""

    dim: int
    records: list[dict[str, Any]] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def add(self, path: str, state: FileState, vector: np.ndarray) -> None:
        self.records.append({"id": path_id(path), "path": path, **asdict(state)})
        self.vectors.append(np.asarray(vector, dtype=np.float32).reshape(self.dim))

    def add_error(self, path: str, state: FileState | None, reason: str) -> None:
        fields = asdict(state) if state else {"sha256": None, "size": None, "mtime_ns": None}
        self.errors.append({"id": path_id(path), "path": path, **fields, "reason": reason})

    def __len__(self) -> int:
        return len(self.records) + len(self.errors)

    def embedding_table(self) -> pa.Table:
        schema = _embedding_schema(self.dim)
        columns = {name: [r[name] for r in self.records] for name in schema.names if name != "embedding"}
        flat = np.concatenate(self.vectors) if self.vectors else np.empty(0, np.float32)
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), self.dim)
        return pa.table(columns, schema=schema)

    def error_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.errors, schema=ERROR_SCHEMA)


def _latest_by_id(table: pa.Table) -> pa.Table:
    """Keep the last row of each id (tables are concatenated in commit order)."""
    ids = table.column("id").to_numpy()
    _, first_in_reversed = np.unique(ids[::-1], return_index=True)
    keep = np.sort(len(ids) - 1 - first_in_reversed)
    return table.take(pa.array(keep))


def _newer_than(table: pa.Table, other: pa.Table) -> pa.Table:
    """The rows of `table` whose id has no row in `other` with a later `seq`."""
    last = dict(zip(other.column("id").to_pylist(), other.column("seq").to_pylist()))
    keep = [last.get(i, -1) < seq for i, seq in zip(table.column("id").to_pylist(), table.column("seq").to_pylist())]
    return table.filter(pa.array(keep, pa.bool_()))


def _write_parquet(path: Path, table: pa.Table) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


class FeatureStore:
    """A directory of embeddings made with one model, layer, pooling and set of views."""

    def __init__(self, root: str | Path, config: StoreConfig) -> None:
        self.root = Path(root)
        self.config = config

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> FeatureStore:
        """Open an existing store; StoreError if there is none at `root`."""
        manifest = Path(root) / MANIFEST
        if not manifest.is_file():
            raise StoreError(f"no feature store at {root} (missing {MANIFEST}); create one with `offshelf embed`")
        try:
            data = json.loads(manifest.read_text())
            config = StoreConfig(**{k: data[k] for k in (*IDENTITY_FIELDS, "model_spec")})
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"unreadable manifest {manifest}: {exc}") from None
        return cls(root, config)

    @classmethod
    def open_or_create(cls, root: str | Path, config: StoreConfig) -> FeatureStore:
        """Open the store at `root`, creating it for `config`; refuse if it holds other features."""
        if (Path(root) / MANIFEST).is_file():
            store = cls.open(root)
            check_identity(config.identity(), store.config.identity(),
                           f"store {root} holds features with {{expected}}; refusing to add "
                           "features with {found} (use another --store)")
            return store
        store = cls(root, config)
        atomic_write_json(
            store.root / MANIFEST,
            {"format": FORMAT_VERSION, "offshelf_version": __version__, **asdict(config)},
        )
        return store

    # -- writing ---------------------------------------------------------------------------------
    @contextmanager
    def writer(self) -> Iterator[StoreWriter]:
        """Exclusive write access: one writer per store at a time (others fail with StoreError)."""
        with exclusive_lock(self.root / ".lock", f"feature store {self.root}"):
            for sub in EVENT_DIRS:
                (self.root / sub).mkdir(parents=True, exist_ok=True)
                remove_stale_tmp_files(self.root / sub)
            yield StoreWriter(self)

    def new_rows(self) -> ShardRows:
        return ShardRows(self.config.dim)

    # -- reading ---------------------------------------------------------------------------------
    def _shard_files(self, sub: str) -> list[Path]:
        return sorted((self.root / sub).glob("[0-9]*.parquet"))

    def _read_all(self, sub: str, schema: pa.Schema) -> pa.Table:
        tables = []
        for path in self._shard_files(sub):
            table = pq.read_table(path, schema=schema)
            seq = np.full(table.num_rows, int(path.stem), dtype=np.int64)
            tables.append(table.append_column("seq", pa.array(seq)))
        if not tables:
            return schema.empty_table().append_column("seq", pa.array([], pa.int64()))
        return pa.concat_tables(tables)

    def table(self) -> pa.Table:
        """One row per stored item (the newest), in commit order, with a `seq` (shard) column."""
        latest = _latest_by_id(self._read_all(SHARDS_DIR, _embedding_schema(self.config.dim)))
        return _newer_than(latest, _latest_by_id(self._read_all(REMOVED_DIR, REMOVED_SCHEMA)))

    def errors(self) -> pa.Table:
        """Files whose latest attempt failed, with the reason."""
        failed = _latest_by_id(self._read_all(ERRORS_DIR, ERROR_SCHEMA))
        return _newer_than(failed, self.table())

    def vectors(self) -> tuple[np.ndarray, list[str], np.ndarray]:
        """`(ids int64 (n,), paths, embeddings float32 (n, dim))` of every stored item."""
        table = self.table()
        flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        matrix = np.ascontiguousarray(flat, dtype=np.float32).reshape(table.num_rows, self.config.dim)
        return table.column("id").to_numpy(), table.column("path").to_pylist(), matrix

    def known_files(self) -> dict[str, FileState]:
        """path -> what was embedded for it, to skip unchanged files on a re-run."""
        table = self.table().select(["path", "sha256", "size", "mtime_ns"]).to_pylist()
        return {r["path"]: FileState(r["sha256"], r["size"], r["mtime_ns"]) for r in table}

    def remove(self, paths: Sequence[str] = (), ids: Sequence[int] = ()) -> list[str]:
        """Remove items by path and/or id; returns the removed paths. StoreError names any unknown item."""
        table = self.table().select(["id", "path"])
        wanted_ids = {int(i) for i in ids} | {path_id(str(p)) for p in paths}
        known = set(table.column("id").to_pylist())
        unknown = sorted(wanted_ids - known)
        if unknown:
            raise StoreError(f"{len(unknown)} of the items to remove are not in store {self.root} (e.g. id {unknown[0]})")
        chosen = table.filter(pa.array([i in wanted_ids for i in table.column("id").to_pylist()], pa.bool_()))
        with self.writer() as writer:
            writer.remove(chosen)
        return chosen.column("path").to_pylist()

    def __len__(self) -> int:
        return self.table().num_rows


class StoreWriter:
    """Commits shards in order; obtained from `FeatureStore.writer()`."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        existing = [int(p.stem) for sub in EVENT_DIRS for p in store._shard_files(sub)]
        self._next_seq = max(existing, default=0) + 1

    def commit(self, rows: ShardRows) -> None:
        """Publish one shard of embeddings (and its errors) atomically."""
        if not len(rows):
            return
        name = f"{self._next_seq:08d}.parquet"
        if rows.records:
            _write_parquet(self.store.root / SHARDS_DIR / name, rows.embedding_table())
        if rows.errors:
            _write_parquet(self.store.root / ERRORS_DIR / name, rows.error_table())
        self._next_seq += 1

    def remove(self, items: pa.Table) -> None:
        """Remove stored items (a table with `id` and `path` columns) from the collection."""
        if items.num_rows:
            table = pa.table({"id": items.column("id"), "path": items.column("path")}, schema=REMOVED_SCHEMA)
            _write_parquet(self.store.root / REMOVED_DIR / f"{self._next_seq:08d}.parquet", table)
            self._next_seq += 1
