"""Searches in threads and processes while a writer adds and removes items: what a search may and may not see.

The writer commits real vectors (taken from a store embedded beforehand) the way `offshelf embed` does (a shard
through the store's writer, then the index brought up to date) and removes items the way `offshelf remove` does.
Readers open a fresh `Searcher` (as every `offshelf search` does) and search every pool vector, in threads of this
process and in separate processes (`python -m benchmarks.harness.concurrency reader ...`).

Checked afterwards, with the writer's log of when each operation started and returned:

* deleted: an item returned by a search that started after its removal returned (must be 0);
* torn: a hit whose path is not its id's, or whose score is not the cosine to the committed vector (must be 0);
* unseen: an item added before a search started, and not being removed, but not found as its own nearest
  neighbour (must be 0);
* half-visible: an item in the searcher's snapshot of the store that its own vector does not find (an index
  lagging the store while a write is under way).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from offshelf.store import FeatureStore, FileState
from offshelf.store.feature_store import path_id

SCORE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Pool:
    """Real committed vectors to add and search: paths, their ids and float32 vectors."""

    paths: list[str]
    ids: np.ndarray
    vectors: np.ndarray

    @classmethod
    def of_store(cls, store: Path) -> Pool:
        ids, paths, vectors = FeatureStore.open(store).vectors()
        return cls(paths, ids, vectors)


def add_items(store: Path, pool: Pool, rows: list[int]) -> None:
    """Commit `rows` of the pool as one shard, then bring the index up to date (what `embed` does at its end)."""
    from offshelf.index import update_store_index

    opened = FeatureStore.open(store)
    shard = opened.new_rows()
    for row in rows:
        shard.add(pool.paths[row], FileState("0" * 64, 0, 0), pool.vectors[row])
    with opened.writer() as writer:
        writer.commit(shard)
    update_store_index(store)


def remove_items(store: Path, pool: Pool, rows: list[int]) -> None:
    """`offshelf remove` of `rows` of the pool: the removal committed, then the index updated."""
    from offshelf.index import update_store_index

    FeatureStore.open(store).remove(paths=[pool.paths[row] for row in rows])
    update_store_index(store)


def search_once(store: Path, pool: Pool, k: int = 3) -> dict[str, Any]:
    """One `offshelf search`-like pass: a fresh Searcher, every pool vector as a query; what it saw."""
    from offshelf.search import Searcher

    started = time.monotonic()
    searcher = Searcher(store)
    snapshot = {q for q in pool.ids.tolist() if searcher.path(q) is not None}  # what its store snapshot holds
    hits = searcher.search_vectors(pool.vectors, k=k)
    unit = pool.vectors / np.linalg.norm(pool.vectors, axis=1, keepdims=True)
    by_id = dict(zip(pool.ids.tolist(), unit))
    returned, torn, half = set(), 0, 0
    for query_id, vector, row in zip(pool.ids.tolist(), unit, hits):
        for hit in row:
            returned.add(hit.id)
            committed = by_id.get(hit.id)
            if path_id(hit.path) != hit.id or committed is None or abs(float(committed @ vector) - hit.score) > SCORE_TOLERANCE:
                torn += 1
        if query_id in snapshot and (not row or row[0].id != query_id):
            half += 1
    found = {q for q, row in zip(pool.ids.tolist(), hits) if row and row[0].id == q}
    return {"started": started, "ended": time.monotonic(), "returned": sorted(returned), "found": sorted(found), "torn": torn,
            "half_visible": half}


def reader_loop(store: Path, pool: Pool, until: float) -> list[dict[str, Any]]:
    """Search again and again until `until` (monotonic seconds)."""
    passes = []
    while time.monotonic() < until:
        passes.append(search_once(store, pool))
    return passes


def run_concurrency(store: Path, pool: Pool, *, seconds: float = 6.0, threads: int = 2, processes: int = 1,
                    seed: int = 0) -> dict[str, Any]:
    """Writer ops for `seconds` with searches in `threads` threads and `processes` processes; the counts.

    The store must hold the first half of the pool; the writer adds the second half in small shards and
    removes items (never adding a removed item back), alternating, until the time is up.
    """
    rng = random.Random(seed)
    half = len(pool.paths) // 2
    present, to_add, log = list(range(half)), list(range(half, len(pool.paths))), []
    pool_file = store.parent / f"{store.name}-pool.npz"
    np.savez(pool_file, ids=pool.ids, vectors=pool.vectors, paths=np.array(pool.paths))
    until = time.monotonic() + seconds
    outs = [store.parent / f"{store.name}-reader-{i}.json" for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.harness.concurrency", "reader", str(store),
                               str(pool_file), str(out), str(seconds)]) for out in outs]
    results: list[dict[str, Any]] = []
    workers = [threading.Thread(target=lambda: results.extend(reader_loop(store, pool, until))) for _ in range(threads)]
    for worker in workers:
        worker.start()
    while time.monotonic() < until and (to_add or len(present) > 2):
        adding = to_add and (rng.random() < 0.5 or len(present) <= 2)
        rows = [to_add.pop() for _ in range(min(len(to_add), rng.randint(1, 3)))] if adding else \
            [present.pop(rng.randrange(len(present))) for _ in range(rng.randint(1, 2))]
        started = time.monotonic()
        (add_items if adding else remove_items)(store, pool, rows)
        log.append({"op": "add" if adding else "remove", "ids": [int(pool.ids[r]) for r in rows],
                    "started": started, "returned": time.monotonic()})
        if adding:
            present += rows
        time.sleep(rng.uniform(0, 0.05))
    for worker in workers:
        worker.join()
    for proc in procs:
        assert proc.wait(timeout=seconds + 600) == 0, "a reader process failed"
    for out in outs:
        results += json.loads(out.read_text())
    return summarize(log, results)


def summarize(log: list[dict[str, Any]], passes: list[dict[str, Any]]) -> dict[str, Any]:
    """Count what each search saw against what the writer had done and returned before it started."""
    deleted = unseen = 0
    for search in passes:
        returned, found = set(search["returned"]), set(search["found"])
        gone = {i for op in log if op["op"] == "remove" and op["returned"] < search["started"] for i in op["ids"]}
        going = {i for op in log if op["op"] == "remove" and op["started"] < search["ended"] for i in op["ids"]}
        added = {i for op in log if op["op"] == "add" and op["returned"] < search["started"] for i in op["ids"]}
        deleted += len(returned & gone)
        unseen += len(added - going - found)
    return {"searches": len(passes), "adds": sum(op["op"] == "add" for op in log),
            "removes": sum(op["op"] == "remove" for op in log), "deleted_seen": deleted, "unseen": unseen,
            "torn": sum(p["torn"] for p in passes), "half_visible": sum(p["half_visible"] for p in passes)}


def _reader_main(store: str, pool_file: str, out: str, seconds: str) -> None:
    with np.load(pool_file, allow_pickle=False) as data:
        pool = Pool([str(p) for p in data["paths"]], data["ids"], data["vectors"])
    Path(out).write_text(json.dumps(reader_loop(Path(store), pool, time.monotonic() + float(seconds))))


if __name__ == "__main__":
    if sys.argv[1:2] == ["reader"]:
        _reader_main(*sys.argv[2:6])
