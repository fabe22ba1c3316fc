"""`--move-to DIR`: move the duplicates into a folder with a log, and put them back from that log.

The log (`DIR/offshelf-dedup-<time>.json`) is written atomically *before* anything moves and lists every
planned move, so a run killed part-way is still restorable. A file's place under DIR is its absolute path
with the root stripped, so files of the same name from different folders never collide.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offshelf.errors import OffshelfError
from offshelf.images import IMAGE_EXTENSIONS
from offshelf.io import atomic_write_json

LOG_KIND = "offshelf-dedup-moves"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def plan_moves(paths: Sequence[str], move_to: Path, roots: Sequence[Path]) -> list[dict[str, str]]:
    """Where each file goes; OffshelfError if DIR lies inside a searched folder or a target exists."""
    target = move_to.resolve()
    for root in roots:
        if root.is_dir() and _inside(target, root.resolve()):
            raise OffshelfError(f"--move-to {move_to} is inside the searched folder {root}; the moved files "
                                "would be found again: choose a folder outside it")
    moves = []
    for path in paths:
        source = Path(path)
        dest = target / source.relative_to(source.anchor)
        if dest.exists():
            raise OffshelfError(f"cannot move {source}: {dest} already exists")
        moves.append({"from": str(source), "to": str(dest)})
    return moves


def move_files(moves: list[dict[str, str]], move_to: Path, details: dict[str, Any]) -> Path:
    """Write the log, then move every file; returns the log's path."""
    log = move_to.resolve() / f"offshelf-dedup-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}.json"
    atomic_write_json(log, {"kind": LOG_KIND, "moves": moves, **details})
    for move in moves:
        dest = Path(move["to"])
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(move["from"], dest)
    return log


def move_back(log: Path) -> dict[str, Any]:
    """Move the files of a move log back; files already back are skipped, a conflict stops with an error
    before anything moves. Returns the counts, every file of the log (`paths`) and the store it names."""
    try:
        data = json.loads(log.read_text())
        moves = [(Path(m["from"]), Path(m["to"])) for m in data["moves"]] if data.get("kind") == LOG_KIND else None
    except FileNotFoundError:
        raise OffshelfError(f"no move log at {log}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise OffshelfError(f"{log} is not an offshelf dedup move log: {exc}") from None
    if moves is None:
        raise OffshelfError(f"{log} is not an offshelf dedup move log (kind {data.get('kind')!r})")
    folder = log.resolve().parent
    todo, already = [], 0
    for source, dest in moves:
        # a log may only put an image back where `plan_moves` took it from: its mirror under the log's folder
        mirrored = source.is_absolute() and ".." not in source.parts and dest == folder / source.relative_to(source.anchor)
        if not mirrored or source.suffix.lower() not in IMAGE_EXTENSIONS:
            raise OffshelfError(f"move log {log} names a move {dest} -> {source} that offshelf dedup does not make "
                                f"(an image file mirrored under {folder}); refusing to use it")
        if dest.exists() and source.exists():
            raise OffshelfError(f"cannot restore {dest}: {source} exists again; move one of them away first")
        if dest.exists():
            todo.append((source, dest))
        elif source.exists():
            already += 1
        else:
            raise OffshelfError(f"cannot restore {source}: it is missing from {dest} too")
    for source, dest in todo:
        source.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(dest, source)
    store = data.get("store")
    return {"restored": len(todo), "already_in_place": already, "log": str(log),
            "paths": [str(source) for source, _ in moves], "store": store if isinstance(store, str) else None}
