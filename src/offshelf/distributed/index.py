"""`build_index_on_ray`: a store's index built in parts on Ray and merged, FAISS's `distributed_ondisk` recipe.

The driver trains the index once (its PCA and quantizers, on a sample: `VectorIndex.train`) and saves it,
empty, in a staging folder beside the store's index. Ray tasks each take a run of consecutive shard files,
load the trained index, add the shards' live rows (the store's newest row per item, removals applied) and save
their part there. The driver then moves the parts' codes (IVF inverted lists, flat codes) into the trained
index in commit order (`VectorIndex.merge_from`), so the result is the index a single process would have built
from the same rows, and saves it as the store's index like `offshelf index build` does (measured against exact
search, caught up with what was committed during the build). The staging folder is removed afterwards.
"""

from __future__ import annotations

import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from offshelf.distributed.cluster import ray_session
from offshelf.errors import OffshelfError
from offshelf.index.base import VectorIndex, train_index
from offshelf.index.store_index import INDEX_DIR, finish_store_index
from offshelf.store import SHARDS_DIR, FeatureStore, resolve_store
from offshelf.store.feature_store import embedding_schema
from offshelf.store.shards import read_shard, shard_seq

MERGEABLE_KINDS = ("flat", "ivfpq")  # FAISS merges inverted lists and flat codes, not HNSW graphs


def build_index_on_ray(store_dir: str | Path, kind: str = "ivfpq", *, pca: int | None = None, whiten: bool = False,
                       address: str | None = None, tasks: int | None = None, sample: int = 1000, seed: int = 0,
                       **params: Any) -> dict[str, Any]:
    """`build_store_index` with the adding spread over `tasks` Ray tasks (default: the cluster's CPUs).

    Runs on the Ray instance this process already joined, else the cluster at `address`, else a local one;
    the store must be readable under the same path on every node. Returns `build_store_index`'s report plus
    `engine`, `tasks`, `train_seconds`, `add_seconds` and `merge_seconds`.
    """
    if kind not in MERGEABLE_KINDS:
        raise OffshelfError(f"a sharded build merges FAISS inverted lists: kind must be one of "
                            f"{', '.join(MERGEABLE_KINDS)}, got {kind!r} (build it with the local engine)")
    if tasks is not None and tasks < 1:
        raise OffshelfError(f"tasks must be at least 1, got {tasks}")
    store = resolve_store(store_dir)
    snapshot = store.snapshot()
    table = store.table(snapshot)
    ids, _, vectors = store.vectors_of(table)
    if not len(ids):
        raise OffshelfError(f"store {store.root} holds no vectors; embed images first")
    started = time.perf_counter()
    index = train_index(vectors, kind, pca=pca, whiten=whiten, identity=store.config.identity(), **params)
    report: dict[str, Any] = {"engine": "ray", "train_seconds": time.perf_counter() - started}
    staging = store.root / f"{INDEX_DIR}.parts-{secrets.token_hex(4)}"
    try:
        index.save(staging / "trained")
        with ray_session(address):
            import ray

            count = tasks or max(1, int(ray.cluster_resources().get("CPU", 1)))
            groups = _groups(snapshot.files[SHARDS_DIR], table, count)
            add = ray.remote(num_cpus=1)(_add_part)
            start = time.perf_counter()
            parts = ray.get([add.remote(store, staging / "trained", staging / f"part-{i:05d}", group)
                             for i, group in enumerate(groups)])
            report["add_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        for part in parts:
            index.merge_from(VectorIndex.load(part))
        report["merge_seconds"] = time.perf_counter() - start
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report |= {"tasks": len(groups), "build_seconds": time.perf_counter() - started}
    index.store_seq = snapshot.seq
    return finish_store_index(index, store, vectors, ids, sample=sample, seed=seed + 1, report=report)


def _groups(shards: tuple[Path, ...], table: pa.Table, count: int) -> list[list[tuple[Path, np.ndarray]]]:
    """Consecutive runs of shard files, at most `count`, with about as many live rows each; every shard comes
    with the ids of its rows that are live (the newest row of an item not removed since)."""
    seqs, live_ids = table.column("seq").to_numpy(), table.column("id").to_numpy()
    files = [(path, live_ids[seqs == shard_seq(path)]) for path in shards]
    files = [(path, keep) for path, keep in files if len(keep)]
    total, groups, done = sum(len(keep) for _, keep in files), [], 0
    for path, keep in files:
        if not groups or done >= total * len(groups) / count:
            groups.append([])
        groups[-1].append((path, keep))
        done += len(keep)
    return groups


def _add_part(store: FeatureStore, trained: Path, out: Path, files: list[tuple[Path, np.ndarray]]) -> Path:
    """A Ray task: the trained index with these shards' live rows added, saved at `out`."""
    import faiss
    import ray

    faiss.omp_set_num_threads(max(1, round(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))))
    part = VectorIndex.load(trained)
    schema = embedding_schema(store.config.dim)
    for path, keep in files:
        rows = read_shard(path, schema, store.root)
        rows = rows.filter(pa.array(np.isin(rows.column("id").to_numpy(), keep)))
        ids, _, vectors = store.vectors_of(rows)
        part.add(vectors, ids)
    return part.save(out)
