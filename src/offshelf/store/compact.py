"""`compact`: rewrite a store's live state as fresh shards, one row per item, swapped in atomically.

After it, `STORE/shards/*.parquet` holds exactly the collection (no older versions of re-embedded files, no
removed items; the embedding a fixed-size list), so any Parquet reader sees what `offshelf search` sees.
`removed/` keeps one row per removed item, so that `embed` still leaves them out, and `errors/` the current
failures. See `offshelf.store.journal` for why a kill at any point leaves the old or the new state.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from offshelf.store.feature_store import ERROR_SCHEMA, REMOVED_SCHEMA, FeatureStore, embedding_schema
from offshelf.store.journal import STAGING, commit_compaction
from offshelf.store.shards import ERRORS_DIR, EVENT_DIRS, REMOVED_DIR, SHARDS_DIR, write_shard


def _size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def compact(store: FeatureStore | str | Path) -> dict[str, Any]:
    """Rewrite `store` as one shard of live rows (plus one of removals and one of errors, if any).

    Holds the writer lock (embed and remove wait their turn); searches may run meanwhile and see the same
    collection before, during and after. Returns counts: items, removed, errors, files and bytes before/after.
    """
    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    root = store.root
    with store.writer():
        before = [p for paths in store.snapshot().files.values() for p in paths]
        bytes_before = _size(before)
        tables = {
            SHARDS_DIR: store.table().drop_columns(["seq"]).cast(embedding_schema(store.config.dim)),
            REMOVED_DIR: store.removed().drop_columns(["seq"]).cast(REMOVED_SCHEMA),
            ERRORS_DIR: store.errors().drop_columns(["seq"]).cast(ERROR_SCHEMA),
        }
        seq = store.high_water_mark() + 1
        staging = root / STAGING
        shutil.rmtree(staging, ignore_errors=True)
        files = []
        for sub in EVENT_DIRS:
            table: pa.Table = tables[sub]
            if table.num_rows or sub == SHARDS_DIR:  # an empty shard still holds the commit number
                files.append(f"{sub}/{write_shard(staging / sub, seq, table).name}")
        commit_compaction(root, seq, files)
        after = [root / name for name in files]
    return {"store": str(root), "items": tables[SHARDS_DIR].num_rows, "removed": tables[REMOVED_DIR].num_rows,
            "errors": tables[ERRORS_DIR].num_rows, "files_before": len(before), "files_after": len(after),
            "bytes_before": bytes_before, "bytes_after": _size(after), "seq": seq}

