"""Files on disk: atomic writes, locks, and array + JSON bundles (never a pickle)."""

from offshelf.io.bundles import check_bundle_target, load_bundle, save_bundle
from offshelf.io.files import (
    TMP_PREFIX,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    exclusive_lock,
    fsync_dir,
    remove_stale_tmp_files,
)

__all__ = [
    "TMP_PREFIX",
    "atomic_write",
    "check_bundle_target",
    "atomic_write_bytes",
    "atomic_write_json",
    "exclusive_lock",
    "fsync_dir",
    "load_bundle",
    "remove_stale_tmp_files",
    "save_bundle",
]
