"""The feature store: Parquet shards of embeddings plus a manifest, safe to kill and resume.

Layout of a store directory::

    manifest.json          what the features are (model, layer, pooling, views, dim, offshelf version)
    shards/00000001-CHECKSUM.parquet  rows: id, path, sha256, size, mtime_ns, embedding (float32[dim])
    errors/00000002-CHECKSUM.parquet  rows: id, path, sha256, size, mtime_ns, reason (files that failed)
    removed/00000003-CHECKSUM.parquet rows: id, path (items removed from the collection, for good)
    quarantine/            shards `offshelf check --repair` set aside as damaged
    .lock                  held by the one writer

Every shard is written atomically (see `offshelf.io`) with the sha256 of its bytes in its name (see
`offshelf.store.shards`), so the shard files present are the committed state: a run killed part-way loses only
the shard it was writing, and the next run redoes exactly those files. Shards are numbered in commit order;
when a path appears again (its file changed), the newest row wins, so reading always gives one row per path.
An error row counts only while it is not older than the last successful embedding of that path; a removal
hides the item for good: `embed` skips removed files unless asked to re-add them. `compact` rewrites the live
state as one row per item (see `offshelf.store.compact`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from offshelf._version import __version__
from offshelf.errors import StoreError, UnknownItemsError
from offshelf.io import atomic_write_json, exclusive_lock, remove_stale_tmp_files
from offshelf.models.quantize import PRECISIONS
from offshelf.store.identity import IDENTITY_FIELDS, StoreConfig, check_identity, full_identity
from offshelf.store.journal import finish_compaction, journal_seq
from offshelf.store.streaming import CHUNK_ROWS, StoreVectors
from offshelf.store.shards import (
    ERRORS_DIR,
    EVENT_DIRS,
    REMOVED_DIR,
    SHARDS_DIR,
    list_shards,
    read_shard,
    shard_seq,
    write_shard,
)

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: the manifest records the sha256 of its own content; 1 (older stores): no checksum
QUARANTINE_DIR = "quarantine"
_SNAPSHOT_TRIES = 20
T = TypeVar("T")


def path_id(path: str) -> int:
    """The stable int64 id of a stored item: the first 63 bits of the sha256 of its path."""
    return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big") & ((1 << 63) - 1)


@dataclass(frozen=True)
class FileState:
    """What the store knows of a file it has embedded: enough to tell whether it changed."""

    sha256: str
    size: int
    mtime_ns: int


def embedding_schema(dim: int) -> pa.Schema:
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
        schema = embedding_schema(self.dim)
        columns = {name: [r[name] for r in self.records] for name in schema.names if name != "embedding"}
        flat = np.concatenate(self.vectors) if self.vectors else np.empty(0, np.float32)
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), self.dim)
        return pa.table(columns, schema=schema)

    def error_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.errors, schema=ERROR_SCHEMA)


def _last_rows(ids: np.ndarray) -> np.ndarray:
    """The position of each distinct id's last row, in the order of the ids (sorted)."""
    _, first_in_reversed = np.unique(ids[::-1], return_index=True)
    return len(ids) - 1 - first_in_reversed


def _latest_by_id(table: pa.Table) -> pa.Table:
    """Keep the last row of each id (tables are concatenated in commit order)."""
    last = _last_rows(table.column("id").to_numpy())
    if len(last) == table.num_rows:
        return table  # no id repeats: every row is its id's latest (and no copy of a million paths is made)
    return table.take(pa.array(np.sort(last)))


def _newer_than(table: pa.Table, other: pa.Table, *, ties: bool = False) -> pa.Table:
    """The rows of `table` whose id has no row in `other` with a later `seq` (with `ties`: nor the same); of an
    id with several rows in `other`, the last counts."""
    if other.num_rows == 0:
        return table
    other_ids = other.column("id").to_numpy()
    last = _last_rows(other_ids)
    known, known_seq = other_ids[last], other.column("seq").to_numpy()[last]
    ids, seqs = table.column("id").to_numpy(), table.column("seq").to_numpy()
    at = np.minimum(np.searchsorted(known, ids), len(known) - 1)
    found = known[at] == ids
    keep = ~found | (known_seq[at] < seqs)
    if ties:
        keep |= found & (known_seq[at] == seqs)
    return table if keep.all() else table.filter(pa.array(keep))


@dataclass(frozen=True)
class Snapshot:
    """The shard files of a store at one moment: reading them gives the state after commit `seq`."""

    files: dict[str, tuple[Path, ...]]

    @property
    def seq(self) -> int:
        """The last commit this state includes (0 for an empty store)."""
        return max((shard_seq(p) for paths in self.files.values() for p in paths), default=0)


def _manifest_digest(data: dict[str, Any]) -> str:
    """sha256 of a manifest's content without its own checksum, in canonical JSON."""
    content = {k: v for k, v in data.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(root: Path, content: dict[str, Any]) -> None:
    """Write a store's manifest atomically, with the sha256 of its content (damage is caught on open; the
    checksum is no signature: every field is still checked, and a model spec is never trusted, see
    `offshelf.models.resolve_spec`)."""
    atomic_write_json(root / MANIFEST, {**content, "sha256": _manifest_digest(content)})


def _check_manifest(data: Any, manifest: Path) -> StoreConfig:
    """The config a manifest describes; StoreError naming the file and the field if it is malformed or damaged."""
    if not isinstance(data, dict):
        raise StoreError(f"unreadable manifest {manifest}: not a JSON object")
    version = data.get("format")
    if type(version) is not int or version not in (1, FORMAT_VERSION):
        raise StoreError(f"unreadable manifest {manifest}: format {version!r} is not one this version reads")
    if version == FORMAT_VERSION and data.get("sha256") != _manifest_digest(data):
        raise StoreError(f"damaged manifest {manifest}: its content does not match the sha256 it recorded")
    missing = [k for k in (*IDENTITY_FIELDS, "model_spec") if k not in data]
    if missing:
        raise StoreError(f"unreadable manifest {manifest}: missing {', '.join(missing)}")
    for name in IDENTITY_FIELDS[:-1]:
        if not isinstance(data[name], str) or not data[name]:
            raise StoreError(f"unreadable manifest {manifest}: {name} must be a non-empty string, got {data[name]!r}")
    dim = data["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= 1 << 20:
        raise StoreError(f"unreadable manifest {manifest}: dim must be a positive integer, got {dim!r}")
    if not isinstance(data["model_spec"], dict):
        raise StoreError(f"unreadable manifest {manifest}: model_spec must be an object")
    identity = full_identity(data)
    if identity["precision"] not in PRECISIONS or not isinstance(identity["calibration"], str):
        raise StoreError(f"unreadable manifest {manifest}: precision must be one of {', '.join(PRECISIONS)} and "
                         f"calibration a string, got {identity['precision']!r} and {identity['calibration']!r}")
    return StoreConfig(**identity, model_spec=data["model_spec"])


def _check_directory(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise StoreError(f"--store {root} is a file, not a feature store directory")


class FeatureStore:
    """A directory of embeddings made with one model, layer, pooling and set of views."""

    def __init__(self, root: str | Path, config: StoreConfig) -> None:
        self.root = Path(root)
        self.config = config

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> FeatureStore:
        """Open an existing store; StoreError if there is none at `root`."""
        _check_directory(Path(root))
        manifest = Path(root) / MANIFEST
        if not manifest.is_file():
            raise StoreError(f"no feature store at {root} (missing {MANIFEST}); create one with `offshelf embed`")
        try:
            data = json.loads(manifest.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"unreadable manifest {manifest}: {exc}") from None
        return cls(root, _check_manifest(data, manifest))

    @classmethod
    def open_or_create(cls, root: str | Path, config: StoreConfig) -> FeatureStore:
        """Open the store at `root`, creating it for `config`; refuse if it holds other features."""
        _check_directory(Path(root))
        if (Path(root) / MANIFEST).is_file():
            store = cls.open(root)
            check_identity(config.identity(), store.config.identity(),
                           f"store {root} holds features with {{expected}}; refusing to add "
                           "features with {found} (use another --store)")
            return store
        store = cls(root, config)
        write_manifest(store.root, {"format": FORMAT_VERSION, "offshelf_version": __version__, **asdict(config)})
        return store

    # -- writing ---------------------------------------------------------------------------------
    @contextmanager
    def writer(self) -> Iterator[StoreWriter]:
        """Exclusive write access: one writer per store at a time (others fail with StoreError)."""
        with exclusive_lock(self.root / ".lock", f"feature store {self.root}"):
            finish_compaction(self.root)
            for sub in EVENT_DIRS:
                (self.root / sub).mkdir(parents=True, exist_ok=True)
                remove_stale_tmp_files(self.root / sub)
            yield StoreWriter(self)

    def new_rows(self) -> ShardRows:
        return ShardRows(self.config.dim)

    # -- reading ---------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The committed shard files now: two listings in a row that agree (so no commit fell between them)."""
        listing = None
        for _ in range(_SNAPSHOT_TRIES):
            again = {sub: tuple(list_shards(self.root / sub)) for sub in EVENT_DIRS}
            if again == listing:
                return Snapshot(again)
            listing = again
        raise StoreError(f"store {self.root} keeps changing while being read; try again")

    def read(self, read: Callable[[Snapshot], T]) -> tuple[Snapshot, T]:
        """`read(snapshot)` on a consistent snapshot, retried on a fresh one if a compaction swapped files."""
        for _ in range(_SNAPSHOT_TRIES):
            snapshot = self.snapshot()
            try:
                return snapshot, read(snapshot)
            except FileNotFoundError:
                continue
        raise StoreError(f"store {self.root} keeps changing while being read; try again")

    def _read_all(self, snapshot: Snapshot, sub: str, schema: pa.Schema, columns: list[str] | None = None
                  ) -> pa.Table:
        """Every row of one table with its shard's `seq`; with `columns`, only those plus `row` (its row number
        in its shard)."""
        tables = []
        for path in snapshot.files[sub]:
            table = read_shard(path, schema, self.root, columns)
            seq = np.full(table.num_rows, shard_seq(path), dtype=np.int64)
            if columns is not None:
                table = table.append_column("row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
            tables.append(table.append_column("seq", pa.array(seq)))
        if not tables:
            empty = schema.empty_table() if columns is None else schema.empty_table().select(columns)
            if columns is not None:
                empty = empty.append_column("row", pa.array([], pa.int64()))
            return empty.append_column("seq", pa.array([], pa.int64()))
        return pa.concat_tables(tables)

    def _live(self, snapshot: Snapshot, columns: list[str] | None = None) -> pa.Table:
        latest = _latest_by_id(self._read_all(snapshot, SHARDS_DIR, embedding_schema(self.config.dim), columns))
        return _newer_than(latest, _latest_by_id(self._read_all(snapshot, REMOVED_DIR, REMOVED_SCHEMA)))

    def table(self, snapshot: Snapshot | None = None) -> pa.Table:
        """One row per stored item (the newest), in commit order, with a `seq` (shard) column."""
        return self._live(snapshot) if snapshot else self.read(self._live)[1]

    def errors(self) -> pa.Table:
        """Files whose latest attempt failed, with the reason."""
        def read(snapshot: Snapshot) -> pa.Table:
            failed = _latest_by_id(self._read_all(snapshot, ERRORS_DIR, ERROR_SCHEMA))
            return _newer_than(failed, self._live(snapshot), ties=True)
        return self.read(read)[1]

    def removed(self) -> pa.Table:
        """Items removed from the collection (and not re-added since): `id`, `path`, `seq`."""
        def read(snapshot: Snapshot) -> pa.Table:
            removed = _latest_by_id(self._read_all(snapshot, REMOVED_DIR, REMOVED_SCHEMA))
            embedded = _latest_by_id(self._read_all(snapshot, SHARDS_DIR, embedding_schema(self.config.dim)))
            return _newer_than(removed, embedded, ties=True)
        return self.read(read)[1]

    def vectors(self, snapshot: Snapshot | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
        """`(ids int64 (n,), paths, embeddings float32 (n, dim))` of every stored item."""
        return self.vectors_of(self.table(snapshot))

    def vectors_of(self, table: pa.Table) -> tuple[np.ndarray, list[str], np.ndarray]:
        """`vectors()` of rows already read with `table()` (so that both come from one state of the store)."""
        flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        matrix = np.ascontiguousarray(flat, dtype=np.float32).reshape(table.num_rows, self.config.dim)
        return table.column("id").to_numpy(), table.column("path").to_pylist(), matrix

    def snapshot_vectors(self) -> tuple[Snapshot, tuple[np.ndarray, list[str], np.ndarray]]:
        """`vectors()` and the snapshot they were read from (its `seq` is the last commit they include)."""
        return self.read(self.vectors)

    def vector_view(self, snapshot: Snapshot | None = None, *, paths: bool = False) -> StoreVectors:
        """The live vectors of `snapshot` (now, if None) as a `StoreVectors`: ids (and, with `paths`, paths) in
        memory, the vectors read from the shards a row group at a time when sliced; same rows and order as
        `vectors()`."""
        if snapshot is None:
            return self.read(lambda now: self.vector_view(now, paths=paths))[1]
        live = self._live(snapshot, ["id", "path"] if paths else ["id"])
        return StoreVectors(self.root, self.config.dim, snapshot.files[SHARDS_DIR], live)

    def snapshot_view(self, *, paths: bool = False) -> tuple[Snapshot, StoreVectors]:
        """`vector_view()` and the snapshot it reads (its `seq` is the last commit it includes)."""
        return self.read(lambda now: self.vector_view(now, paths=paths))

    def iter_vectors(self, chunk_rows: int = CHUNK_ROWS, snapshot: Snapshot | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`(ids, vectors)` of every live item, `chunk_rows` at a time, in `vectors()` order; memory: one chunk."""
        view = self.vector_view(snapshot)
        for start in range(0, len(view), chunk_rows):
            yield view.ids[start : start + chunk_rows], view[start : start + chunk_rows]

    def known_files(self) -> dict[str, FileState]:
        """path -> what was embedded for it, to skip unchanged files on a re-run."""
        table = self.table().select(["path", "sha256", "size", "mtime_ns"]).to_pylist()
        return {r["path"]: FileState(r["sha256"], r["size"], r["mtime_ns"]) for r in table}

    def remove(self, paths: Sequence[str] = (), ids: Sequence[int] = ()) -> list[str]:
        """Remove items by path and/or id for good (`embed` will not add them back unless asked to re-add);
        returns the removed paths. StoreError names any unknown item, and then nothing is removed."""
        wanted_ids = {int(i) for i in ids} | {path_id(str(p)) for p in paths}
        with self.writer() as writer:
            table = self.table().select(["id", "path"])
            unknown = sorted(wanted_ids - set(table.column("id").to_pylist()))
            if unknown:
                raise UnknownItemsError(f"{len(unknown)} of the items to remove are not in store {self.root} "
                                 f"(e.g. id {unknown[0]})")
            chosen = table.filter(pa.array([i in wanted_ids for i in table.column("id").to_pylist()], pa.bool_()))
            writer.remove(chosen)
        return chosen.column("path").to_pylist()

    def high_water_mark(self) -> int:
        """The highest commit number ever used here, quarantined shards and an unfinished compaction included:
        new commits are numbered after it, so an index's record of the commits it covers stays true."""
        quarantined = [shard_seq(Path(p.name.partition("-")[2])) for p in (self.root / QUARANTINE_DIR).glob("*-[0-9]*")
                       if p.name.partition("-")[0] in EVENT_DIRS]
        return max(self.snapshot().seq, journal_seq(self.root), *quarantined, 0)

    def __len__(self) -> int:
        return self.table().num_rows


class StoreWriter:
    """Commits shards in order; obtained from `FeatureStore.writer()`."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self._next_seq = store.high_water_mark() + 1

    def commit(self, rows: ShardRows) -> None:
        """Publish one shard of embeddings (and its errors) atomically."""
        if not len(rows):
            return
        if rows.records:
            write_shard(self.store.root / SHARDS_DIR, self._next_seq, rows.embedding_table())
        if rows.errors:
            write_shard(self.store.root / ERRORS_DIR, self._next_seq, rows.error_table())
        self._next_seq += 1

    def remove(self, items: pa.Table) -> None:
        """Remove stored items (a table with `id` and `path` columns) from the collection."""
        if items.num_rows:
            table = pa.table({"id": items.column("id"), "path": items.column("path")}, schema=REMOVED_SCHEMA)
            write_shard(self.store.root / REMOVED_DIR, self._next_seq, table)
            self._next_seq += 1
