"""Saving fitted things without pickle: a folder holding named numpy arrays (`arrays.npz`) and a JSON document
(`meta.json`) that records the arrays' sha256.

A bundle is written as one unit: both files go into a new folder beside the target, which is then renamed into
place (or, over an earlier bundle, swapped with it in one atomic step), so a reader, or whatever a crash leaves,
finds the previous bundle or the new one, never a mix. Loading checks the
recorded sha256, so a pair put together from two saves is refused too, and never unpickles: the `.npz` is read
member by member as plain `.npy` arrays (stored, not compressed, no object dtype, sizes checked before any
allocation), so a bundle from an untrusted source can at worst fail to load, with a one-line OffshelfError.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from offshelf.errors import OffshelfError
from offshelf.io.files import TMP_PREFIX, atomic_write_bytes, atomic_write_json, fsync_dir

ARRAYS_FILE = "arrays.npz"
META_FILE = "meta.json"
CHECKSUM_KEY = "arrays_sha256"
_STAGING = "~bundle-"  # staging folders are `.tmp-NAME~bundle-XXXX` beside the target
_RENAME_EXCHANGE, _AT_FDCWD = 2, -100  # linux/fs.h, fcntl.h
_READ_BLOCK = 16 << 20
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def arrays_to_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays as the bytes of an uncompressed `.npz`."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    return buffer.getvalue()


def arrays_from_bytes(data: bytes, name: str = "arrays") -> dict[str, np.ndarray]:
    """The arrays of `.npz` bytes as `arrays_to_bytes` writes them; OffshelfError naming `name` for anything else
    (never unpickles, never decompresses, never allocates more than `data` holds)."""
    return arrays_from_file(io.BytesIO(data), name)


def arrays_from_file(handle: BinaryIO, name: str = "arrays") -> dict[str, np.ndarray]:
    """`arrays_from_bytes` of an open binary file, read member by member straight into the arrays (memory: the
    arrays, not the file's bytes besides them)."""
    try:
        with zipfile.ZipFile(handle) as archive:
            return {info.filename.removesuffix(".npy"): _read_member(archive, info) for info in archive.infolist()}
    except (ValueError, TypeError, EOFError, SyntaxError, OverflowError, NotImplementedError, zipfile.BadZipFile) as exc:
        raise OffshelfError(f"cannot load {name}: {type(exc).__name__}: {exc}") from None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One `.npy` member, checked before its data is read."""
    if not info.filename.endswith(".npy") or info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise ValueError(f"member {info.filename!r} is not a stored, unencrypted .npy file")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version not in _HEADER_READERS:
            raise ValueError(f"member {info.filename!r} has .npy format {version}, not 1.0 or 2.0")
        shape, fortran_order, dtype = _HEADER_READERS[version](member)
        if dtype.hasobject:
            raise ValueError(f"member {info.filename!r} holds Python objects (a pickle); refusing it")
        size = math.prod(shape) * dtype.itemsize
        if size > info.file_size:
            raise ValueError(f"member {info.filename!r} holds {info.file_size} bytes, its header says {size} of data")
        flat = np.empty(math.prod(shape), dtype)
        view, filled = memoryview(flat).cast("B"), 0
        while filled < size:  # straight into the array: no second copy of a large member
            block = member.read(min(size - filled, _READ_BLOCK))
            if not block:
                break
            view[filled : filled + len(block)] = block
            filled += len(block)
        extra = member.read(1)
    if filled != size or extra:
        raise ValueError(f"member {info.filename!r} holds {filled + len(extra)}+ bytes of data, its header says {size}")
    return flat.reshape(shape[::-1]).T.copy() if fortran_order else flat.reshape(shape)


def check_bundle_target(directory: str | Path, overwrite: bool = False) -> Path:
    """`directory` as a Path if a bundle may be saved there: it does not exist, is an empty folder, or (with
    `overwrite`) holds an earlier bundle. OffshelfError otherwise, before any work is done."""
    target = Path(directory)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise OffshelfError(f"{target} exists and is not a folder; choose another output folder")
    if not target.exists():
        return target
    present = sorted(entry.name for entry in target.iterdir())
    others = [name for name in present if name not in (ARRAYS_FILE, META_FILE)]
    if others:
        raise OffshelfError(f"{target} holds other files ({', '.join(others[:3])}); refusing to replace it, "
                            "choose another output folder")
    if present and not overwrite:
        raise OffshelfError(f"{target} already holds a saved {_kind_of(target)}; refusing to overwrite it "
                            "(use --force to replace it)")
    return target


def _kind_of(target: Path) -> str:
    try:
        return str(json.loads((target / META_FILE).read_text()).get("kind", "bundle")).removeprefix("offshelf-")
    except (OSError, ValueError, AttributeError):
        return "bundle"


def save_bundle(directory: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray], *,
                overwrite: bool = False) -> Path:
    """Write `arrays` and the JSON-ready `meta` as the folder `directory`, in one step (see the module doc).

    An existing bundle there is replaced only with `overwrite`; anything else there is never touched.
    """
    target = check_bundle_target(directory, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{TMP_PREFIX}{glob.escape(target.name)}{_STAGING}*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a save that was killed
    data = arrays_to_bytes(arrays)
    staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}{_STAGING}", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes 0700; a saved bundle is an ordinary readable folder
        atomic_write_bytes(staging / ARRAYS_FILE, data)
        atomic_write_json(staging / META_FILE, {**meta, CHECKSUM_KEY: hashlib.sha256(data).hexdigest()})
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def exchange_paths(first: Path, second: Path) -> None:
    """Swap two existing paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`); OSError where the
    kernel, C library or file system does not offer it."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(first))


def _publish(staging: Path, target: Path) -> None:
    """Put the complete `staging` folder at `target`. An earlier bundle there is swapped out atomically (or,
    where the file system cannot swap, moved aside just before the rename) and then deleted."""
    old = None
    if target.exists() and any(target.iterdir()):
        try:
            exchange_paths(staging, target)
            old = staging
        except OSError:
            old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}{_STAGING}old-", dir=target.parent))
            os.replace(target, old / target.name)
    if old is not staging:
        try:
            os.replace(staging, target)  # replaces an empty folder; fails if another save filled it meanwhile
        except OSError as exc:
            raise OffshelfError(f"cannot save {target}: {exc.strerror or exc} (another save there meanwhile?)") from None
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_bundle(directory: str | Path, kind: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read what `save_bundle` wrote; if `kind` is given, `meta["kind"]` must equal it. Every problem is an
    OffshelfError naming the file and what is wrong with it."""
    source = Path(directory)
    meta_path, arrays_path = source / META_FILE, source / ARRAYS_FILE
    if not source.is_dir():
        raise OffshelfError(f"nothing saved at {source} (expected a folder with {META_FILE} and {ARRAYS_FILE})")
    try:
        text, data = meta_path.read_text(), arrays_path.read_bytes()
    except FileNotFoundError as exc:
        raise OffshelfError(f"incomplete bundle at {source}: {Path(str(exc.filename)).name} is missing") from None
    except OSError as exc:
        raise OffshelfError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise OffshelfError(f"unreadable {meta_path}: not UTF-8 text ({exc.reason})") from None
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise OffshelfError(f"unreadable {meta_path}: {exc}") from None
    if not isinstance(meta, dict):
        raise OffshelfError(f"unreadable {meta_path}: not a JSON object")
    if kind is not None and meta.get("kind") != kind:
        raise OffshelfError(f"{source} holds a {meta.get('kind')!r}, not a {kind!r}")
    recorded = meta.pop(CHECKSUM_KEY, None)
    if recorded is None:
        raise OffshelfError(f"{meta_path} records no sha256 of {ARRAYS_FILE} (incomplete, or saved by an older "
                            "offshelf); save it again")
    if hashlib.sha256(data).hexdigest() != recorded:
        raise OffshelfError(f"{arrays_path} does not match {meta_path} (its sha256 differs from the recorded one): "
                            "the bundle is damaged or mixed from two saves; save it again")
    return meta, arrays_from_bytes(data, str(arrays_path))
