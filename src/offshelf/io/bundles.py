"""Saving fitted things without pickle: named numpy arrays in an `.npz` plus a JSON document.

Loading never unpickles (`allow_pickle=False`), so a saved probe, transform, index map or alignment from an
untrusted source can at worst fail to load; it cannot run code. Both files are written atomically.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from offshelf.errors import OffshelfError
from offshelf.io.files import atomic_write_bytes, atomic_write_json

ARRAYS_FILE = "arrays.npz"
META_FILE = "meta.json"


def arrays_to_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays as the bytes of an uncompressed `.npz`."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    return buffer.getvalue()


def arrays_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of `.npz` bytes; never unpickles (an object array raises ValueError)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def save_bundle(directory: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write `arrays` and the JSON-ready `meta` under `directory` (created if needed)."""
    target = Path(directory)
    atomic_write_bytes(target / ARRAYS_FILE, arrays_to_bytes(arrays))
    atomic_write_json(target / META_FILE, meta)
    return target


def load_bundle(directory: str | Path, kind: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read what `save_bundle` wrote; if `kind` is given, `meta["kind"]` must equal it."""
    source = Path(directory)
    try:
        meta = json.loads((source / META_FILE).read_text())
        arrays = arrays_from_bytes((source / ARRAYS_FILE).read_bytes())
    except FileNotFoundError:
        raise OffshelfError(f"nothing saved at {source} (expected {META_FILE} and {ARRAYS_FILE})") from None
    except (ValueError, OSError) as exc:
        raise OffshelfError(f"cannot load {source}: {exc}") from None
    if kind is not None and meta.get("kind") != kind:
        raise OffshelfError(f"{source} holds a {meta.get('kind')!r}, not a {kind!r}")
    return meta, arrays
