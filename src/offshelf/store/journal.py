"""The compaction journal: how `compact` swaps a store's shards so that a kill at any point leaves the old or
the new state.

`compact` writes the new shards into `STORE/compact.staging/` (not visible to readers), then the journal
`STORE/compact.json` naming them and the sequence number they start; that write is the commit point. It then
moves them into place and deletes every older shard. Until the journal is written the old state stands (the
staging folder is discarded); once it is written, `finish_compaction`, run by the next writer, rolls forward.
While the moves run, readers see the old shards plus new ones whose rows are the same items (the newest row
wins), so every reader sees the same collection.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from offshelf.errors import StoreError
from offshelf.io import atomic_write_json, fsync_dir
from offshelf.store.shards import EVENT_DIRS, list_shards, shard_seq

JOURNAL = "compact.json"
STAGING = "compact.staging"


def journal_seq(root: Path) -> int:
    """The sequence number of an unfinished compaction (0 if none): shard numbers continue after it."""
    journal = read_journal(root)
    return journal["seq"] if journal else 0


def read_journal(root: Path) -> dict | None:
    path = root / JOURNAL
    try:
        journal = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise StoreError(f"unreadable compaction journal {path}: {exc}") from None
    if not isinstance(journal, dict) or not isinstance(journal.get("seq"), int) or not isinstance(
            journal.get("files"), list) or not all(isinstance(f, str) and "/" in f for f in journal["files"]):
        raise StoreError(f"{path} is not an offshelf compaction journal")
    return journal


def commit_compaction(root: Path, seq: int, files: list[str]) -> None:
    """The commit point: from here on the staged `files` (`TABLE/NAME`) replace every shard older than `seq`."""
    atomic_write_json(root / JOURNAL, {"seq": seq, "files": files})
    finish_compaction(root)


def finish_compaction(root: Path) -> bool:
    """Roll an interrupted compaction forward, or discard one that did not reach its commit point; call with
    the writer lock held. True if there was one to finish."""
    journal = read_journal(root)
    staging = root / STAGING
    if journal is None:
        shutil.rmtree(staging, ignore_errors=True)
        return False
    targets = []
    for name in journal["files"]:
        table, _, file_name = name.partition("/")
        try:
            ours = table in EVENT_DIRS and Path(file_name).name == file_name and shard_seq(Path(file_name)) == journal["seq"]
        except StoreError:
            ours = False
        if not ours:
            raise StoreError(f"{root / JOURNAL} names {name!r}, not a shard of this compaction; refusing it")
        if not (staging / name).exists() and not (root / table / file_name).exists():
            raise StoreError(f"{root / JOURNAL} names {name}, which is neither staged nor in place; refusing to "
                             "delete older shards (run `offshelf check`)")
        targets.append((name, table, file_name))
    for name, table, file_name in targets:
        staged = staging / name
        if staged.exists():
            (root / table).mkdir(exist_ok=True)
            os.replace(staged, root / table / file_name)
    for table in EVENT_DIRS:
        if (root / table).is_dir():
            fsync_dir(root / table)
            for old in list_shards(root / table):
                if shard_seq(old) < journal["seq"]:
                    old.unlink(missing_ok=True)
    (root / JOURNAL).unlink()
    fsync_dir(root)
    shutil.rmtree(staging, ignore_errors=True)
    return True
