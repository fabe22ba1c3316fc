"""The feature store: Parquet shards plus a manifest, the identity check, and the upgrade marker."""

from offshelf.store.check import check_store
from offshelf.store.compact import compact
from offshelf.store.feature_store import (
    ERRORS_DIR,
    MANIFEST,
    REMOVED_DIR,
    SHARDS_DIR,
    FeatureStore,
    FileState,
    ShardRows,
    StoreWriter,
    path_id,
)
from offshelf.store.id_rows import IdRows
from offshelf.store.identity import IDENTITY_FIELDS, StoreConfig, check_identity, describe_identity, full_identity
from offshelf.store.marker import UPGRADE_MARKER, read_upgrade_marker, resolve_store, resolve_store_root
from offshelf.store.streaming import CHUNK_ROWS, StoreVectors

__all__ = [
    "ERRORS_DIR",
    "IDENTITY_FIELDS",
    "MANIFEST",
    "REMOVED_DIR",
    "SHARDS_DIR",
    "UPGRADE_MARKER",
    "FeatureStore",
    "FileState",
    "IdRows",
    "ShardRows",
    "StoreConfig",
    "StoreVectors",
    "CHUNK_ROWS",
    "StoreWriter",
    "check_identity",
    "check_store",
    "compact",
    "describe_identity",
    "full_identity",
    "path_id",
    "read_upgrade_marker",
    "resolve_store",
    "resolve_store_root",
]
