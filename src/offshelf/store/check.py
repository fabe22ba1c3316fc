"""`check_store`: verify every file of a feature store, and set damaged shards aside with `repair`.

Checked: the manifest; every shard of the three tables (a commit checksum in its name that matches its bytes,
readable, the table's schema and dim, finite embeddings, each id the hash of its path, one row per item);
one live row per item; an unfinished compaction. `repair` finishes an interrupted compaction and moves
damaged shards to `STORE/quarantine/`, so that the next `embed` redoes exactly their files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from offshelf.errors import StoreError
from offshelf.store.feature_store import (
    ERROR_SCHEMA,
    MANIFEST,
    QUARANTINE_DIR,
    REMOVED_SCHEMA,
    FeatureStore,
    embedding_schema,
    path_id,
)
from offshelf.store.journal import JOURNAL, read_journal
from offshelf.store.shards import (
    ERRORS_DIR,
    EVENT_DIRS,
    REMOVED_DIR,
    SHARDS_DIR,
    file_checksum,
    list_shards,
    read_shard,
    recorded_checksum,
)


def _shard_problem(store: FeatureStore, path: Path, schema: pa.Schema) -> str | None:
    """What is wrong with one shard file, or None if it is sound."""
    recorded = recorded_checksum(path)
    if recorded is not None and file_checksum(path) != recorded:
        return f"its bytes changed since it was committed (checksum {file_checksum(path)}, recorded {recorded})"
    try:
        table = read_shard(path, schema, store.root)
    except StoreError as exc:
        return str(exc).split(": ", 1)[1].split("; `offshelf check")[0]
    ids, paths = table.column("id").to_pylist(), table.column("path").to_pylist()
    wrong = [p for i, p in zip(ids, paths) if p is None or i != path_id(p)]
    if wrong:
        return f"{len(wrong)} rows whose id is not the hash of their path (e.g. {wrong[0]})"
    if len(set(ids)) != len(ids):
        return f"{len(ids) - len(set(ids))} items have more than one row"
    if "embedding" in table.column_names:
        flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        if not np.isfinite(flat).all():
            return f"{int((~np.isfinite(flat)).sum())} embedding values are NaN or infinite"
    return None


def check_store(root: str | Path, *, repair: bool = False) -> dict[str, Any]:
    """A report of the store's health: `problems` (file, what), `repaired`, counts; see the module docstring.

    A damaged manifest is the one problem found (nothing else can be checked without it; `repair` cannot
    rebuild it, since it is what says which model made the features). StoreError if `root` is not a store.
    """
    try:
        store = FeatureStore.open(root)
    except StoreError as exc:
        if not (Path(root) / MANIFEST).is_file():
            raise  # no store here (or `root` is a file)
        return _damaged_manifest_report(Path(root), str(exc))
    problems: list[dict[str, str]] = []
    repaired: list[dict[str, str]] = []
    if read_journal(store.root) is not None:
        problems.append({"file": str(store.root / JOURNAL), "what": "a compaction was interrupted",
                         "repair": "finish it"})
    schemas = {SHARDS_DIR: embedding_schema(store.config.dim), ERRORS_DIR: ERROR_SCHEMA, REMOVED_DIR: REMOVED_SCHEMA}
    damaged: list[Path] = []
    warnings: list[dict[str, str]] = []
    shards = 0
    for sub in EVENT_DIRS:
        for path in list_shards(store.root / sub):
            shards += 1
            if recorded_checksum(path) is None:
                warnings.append({"file": str(path), "what": "no commit checksum in its name (written by an older "
                                 "offshelf); `offshelf compact` rewrites it with one"})
            what = _shard_problem(store, path, schemas[sub])
            if what is not None:
                problems.append({"file": str(path), "what": what, "repair": "quarantine"})
                damaged.append(path)
    if repair and problems:
        with store.writer():  # finishes an interrupted compaction first
            (store.root / QUARANTINE_DIR).mkdir(exist_ok=True)
            for path in damaged:
                if path.exists():
                    os.replace(path, store.root / QUARANTINE_DIR / f"{path.parent.name}-{path.name}")
        repaired, problems = problems, []
    report: dict[str, Any] = {"store": str(store.root), "shards": shards, "problems": problems,
                              "repaired": repaired, "warnings": warnings}
    if not damaged or repair:
        table = store.table()
        paths = table.column("path").to_pylist()
        if len(set(paths)) != len(paths):
            problems.append({"file": str(store.root / SHARDS_DIR), "what": "a path has more than one live row",
                             "repair": "none (report this as a bug)"})
        report |= {"items": table.num_rows, "removed": store.removed().num_rows, "errors": store.errors().num_rows}
    report["quarantined"] = sorted(p.name for p in (store.root / QUARANTINE_DIR).glob("*.parquet"))
    report["healthy"] = not problems
    return report


def _damaged_manifest_report(root: Path, what: str) -> dict[str, Any]:
    """`check_store`'s report for a store whose manifest exists but cannot be trusted."""
    problem = {"file": str(root / MANIFEST), "what": what.replace(f" {root / MANIFEST}:", ":"),
               "repair": "none: restore the manifest from a backup, or embed the files into a new store"}
    shards = sum(len(list_shards(root / sub)) for sub in EVENT_DIRS)
    return {"store": str(root), "shards": shards, "problems": [problem], "repaired": [], "warnings": [],
            "quarantined": sorted(p.name for p in (root / QUARANTINE_DIR).glob("*.parquet")), "healthy": False}
