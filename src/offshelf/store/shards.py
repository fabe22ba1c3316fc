"""Shard files: Parquet tables named `{seq:08d}-{sha256[:16]}.parquet`, each carrying its commit checksum.

The sequence number orders commits across a store's tables; the checksum is the sha256 of the file's bytes,
computed before the file is published, so `offshelf check` can tell a damaged shard from a committed one.
Pages carry Parquet's own CRCs too, verified on every read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from offshelf.errors import StoreError
from offshelf.io import atomic_write_bytes

SHARDS_DIR, ERRORS_DIR, REMOVED_DIR = "shards", "errors", "removed"
EVENT_DIRS = (SHARDS_DIR, ERRORS_DIR, REMOVED_DIR)  # the three tables, numbered in one commit order
SHARD_GLOB = "[0-9]*.parquet"
CHECKSUM_CHARS = 16
ROW_GROUP_BYTES = 8 << 20  # a row group's uncompressed size at most (about): what a streaming reader decodes at once
_NAME = re.compile(r"^(\d{8})(?:-([0-9a-f]{16}))?\.parquet$")


def shard_seq(path: Path) -> int:
    """The commit sequence number of a shard file."""
    match = _NAME.match(path.name)
    if match is None:
        raise StoreError(f"{path} is not a shard file name (expected NNNNNNNN-CHECKSUM.parquet)")
    return int(match.group(1))


def recorded_checksum(path: Path) -> str | None:
    """The checksum recorded in a shard's name when it was committed (None for a name without one)."""
    match = _NAME.match(path.name)
    return match.group(2) if match else None


def file_checksum(path: Path) -> str:
    """The checksum of a file's bytes as recorded in shard names."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:CHECKSUM_CHARS]


def list_shards(directory: Path) -> list[Path]:
    """The committed shard files of one table folder, in commit order (temporary files are not listed)."""
    return sorted((p for p in directory.glob(SHARD_GLOB) if _NAME.match(p.name)), key=shard_seq)


def shard_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes: zstd, page checksums on, row groups of at most ~`ROW_GROUP_BYTES` (so that a
    compacted shard of a million rows can still be read a row group at a time, see `offshelf.store.streaming`)."""
    sink = pa.BufferOutputStream()
    rows = max(1, ROW_GROUP_BYTES * table.num_rows // max(table.nbytes, 1))
    pq.write_table(table, sink, compression="zstd", write_page_checksum=True, row_group_size=rows)
    return sink.getvalue().to_pybytes()


def write_shard(directory: Path, seq: int, table: pa.Table) -> Path:
    """Publish `table` atomically as shard `seq` of `directory`, its checksum in the name."""
    data = shard_bytes(table)
    name = f"{seq:08d}-{hashlib.sha256(data).hexdigest()[:CHECKSUM_CHARS]}.parquet"
    return atomic_write_bytes(directory / name, data)


def read_shard(path: Path, schema: pa.Schema, store_root: Path, columns: list[str] | None = None) -> pa.Table:
    """Read one shard with `schema` (only `columns`, if given); StoreError naming the file if it is damaged or of
    another shape.

    FileNotFoundError passes through: the caller re-reads the listing (a compaction replaced the file)."""
    with shard_errors(path, store_root):
        return pq.read_table(path, schema=schema, columns=columns, page_checksum_verification=True)


@contextmanager
def shard_errors(path: Path, store_root: Path) -> Iterator[None]:
    """Reading shard `path` inside: a damaged or misshapen file becomes a StoreError naming it (FileNotFoundError
    passes through)."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"damaged shard {path}: {reason}; `offshelf check --store {store_root} --repair` "
                         "quarantines it so that the next embed redoes its files") from None
