"""Finding image files: folders (recursive, hidden entries skipped), single files and glob patterns."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

#: Lower-case suffixes that ``find_images`` picks up when walking folders or expanding globs.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".bmp", ".dib", ".tif", ".tiff",
        ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".avif", ".jp2", ".j2k", ".jpx", ".ico", ".tga",
        ".qoi", ".pcx", ".sgi", ".psd",
    }
)

_GLOB_MAGIC = frozenset("*?[")


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _has_image_suffix(path: str | Path) -> bool:
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def _walk_folder(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, skipping hidden folders and hidden files (e.g. ``._x.jpg``)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not _is_hidden(d)]
        for name in files:
            if not _is_hidden(name) and _has_image_suffix(name):
                found.append(Path(root, name))
    return found


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand folders, files and glob patterns into a sorted, de-duplicated list of absolute resolved paths.

    * a folder is walked recursively; files with a suffix in ``IMAGE_EXTENSIONS`` (case-insensitive) are kept;
      hidden sub-folders and hidden files (name starting with ".") are skipped;
    * an explicit existing file is always kept, whatever its suffix (a non-image then fails downstream and is
      recorded as an error rather than silently dropped);
    * a pattern containing ``*``, ``?`` or ``[`` (and not naming an existing path literally) is expanded with
      ``glob`` (``**`` is recursive; hidden names only match if the pattern spells the dot); matched files
      are filtered by ``IMAGE_EXTENSIONS``, matched folders are walked;
    * ``~`` is expanded. Any input that yields no file raises ``FileNotFoundError`` naming it.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: set[Path] = set()
    for raw in inputs:
        text = os.path.expanduser(os.fspath(raw))
        path = Path(text)
        hits: list[Path]
        if path.is_dir():
            hits = _walk_folder(path)
            if not hits:
                raise FileNotFoundError(f"no image files found in folder: {raw}")
        elif path.exists():
            hits = [path]
        elif any(c in _GLOB_MAGIC for c in text):
            hits = []
            for match in glob.glob(text, recursive=True):
                m = Path(match)
                if m.is_dir():
                    hits.extend(_walk_folder(m))
                elif m.is_file() and _has_image_suffix(m):
                    hits.append(m)
            if not hits:
                raise FileNotFoundError(f"no image files match pattern: {raw}")
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
        found.update(h.resolve() for h in hits)
    return sorted(found, key=lambda p: (str(p.parent), p.name))

