"""Checked cache entries under the offshelf home: build once, verify by sha256 on every load.

An entry is a directory holding `model.onnx` and `meta.json`. `meta.json` records the recipe the file was
built from (source checksum, outputs, format version) and the file's own sha256. A missing, corrupt or stale
file is rebuilt under an exclusive file lock, so concurrent processes neither clobber each other nor build
twice, and every write is atomic (see `offshelf.io`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from offshelf.io import atomic_write_bytes, atomic_write_json, remove_stale_tmp_files

logger = logging.getLogger("offshelf.models")

MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
LOCK_FILE = ".lock"

Build = Callable[[], tuple[bytes, dict[str, Any]]]


def offshelf_home() -> Path:
    """The cache root: `$OFFSHELF_HOME`, else `~/.cache/offshelf`."""
    configured = os.environ.get("OFFSHELF_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "offshelf"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextmanager
def blocking_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive `fcntl` lock on `path`, waiting for any other holder (process or thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def cache_problem(directory: Path, recipe: dict[str, Any]) -> str | None:
    """Why the entry in `directory` cannot be used for `recipe` (None when it can)."""
    model, meta_path = directory / MODEL_FILE, directory / META_FILE
    if not model.exists():
        return "missing"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return f"{META_FILE} is missing or unreadable"
    stale = [key for key, value in recipe.items() if meta.get(key) != value]
    if stale:
        return f"stale ({', '.join(stale)} changed)"
    if sha256_file(model) != meta.get("onnx_sha256"):
        return "sha256 mismatch (corrupt file)"
    return None


def ensure_cached(directory: Path, recipe: dict[str, Any], build: Build) -> Path:
    """`directory/model.onnx`, first rebuilt with `build()` unless it is intact and was built from `recipe`.

    `build` returns the file's bytes and extra facts for `meta.json` (tool versions, output shapes).
    """
    with blocking_lock(directory / LOCK_FILE):
        problem = cache_problem(directory, recipe)
        if problem is None:
            return directory / MODEL_FILE
        if problem == "missing":
            logger.info("building %s", directory / MODEL_FILE)
        else:
            logger.warning("%s: %s; rebuilding it", directory / MODEL_FILE, problem)
        remove_stale_tmp_files(directory)
        data, facts = build()
        model = atomic_write_bytes(directory / MODEL_FILE, data)
        atomic_write_json(directory / META_FILE, {**recipe, **facts, "onnx_sha256": hashlib.sha256(data).hexdigest()})
        return model
