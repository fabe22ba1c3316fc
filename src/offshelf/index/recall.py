"""Recall measured against exact search, and `tune`: the cheapest search setting that reaches a target.

Two protocols. Leave-one-out (`measure_recall`, `RecallProbe` without `held_out`): `sample` of the indexed
vectors themselves are the queries; each query's own id is dropped from both result lists, so the exact top-k are
the k nearest *other* vectors and the approximate top-k the first k other ids the index returns. Held out
(`tune`, `RecallProbe(held_out=rows)`): the index is built without `rows`, which are then the queries, and the
exact top-k are searched among the other rows — what new images meet (indexed vectors find their neighbours
more easily: they are nodes of the graph, their own list's centroid pulled towards them).

    recall@k = mean over queries of |exact top-k  ∩  approximate top-k| / k

(recall@1: how often the approximate first result is the true nearest neighbour). Exact is cosine (FAISS
IndexFlatIP, in chunks). With `space="input"` the exact reference is computed on the L2-normalized input
vectors — end to end, PCA losses included; with `space="index"` on the index's working space (after its PCA) —
the ANN structure's own error, the only part a search-time knob can fix, and what `tune` uses. Without `pca`
both are the same. `qps` is the throughput of the index answering all the sampled queries as one batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import faiss
import numpy as np
from sklearn.preprocessing import normalize

from offshelf.errors import OffshelfError
from offshelf.index.base import VectorIndex, add_rows, as_ids, as_matrix, train_index
from offshelf.store.streaming import CHUNK_ROWS, StoreVectors

EXACT_CHUNK = CHUNK_ROWS  # database rows scored at once (one streamed chunk of a store)


def _drop_self(found: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """The first k ids of each row of `found` (k + 1 wide) other than the row's own id."""
    keep = found != self_ids[:, None]
    keep[keep.all(axis=1), -1] = False
    return found[keep].reshape(len(found), k)


def _recalls(truth: np.ndarray, found: np.ndarray, k: int) -> np.ndarray:
    """Per query (with any exact neighbour): the fraction of its exact top-k (ignoring -1 pads) present in its
    approximate top-k."""
    exact, approx = truth[:, :k], found[:, :k]
    valid = exact >= 0
    hits = ((exact[:, :, None] == approx[:, None, :]).any(axis=2) & valid).sum(axis=1)
    counted = valid.sum(axis=1) > 0
    return hits[counted] / valid.sum(axis=1)[counted]


def lower_bound(recalls: np.ndarray) -> float:
    """The mean of per-query recalls minus two standard errors: what `tune` holds to the target, so that a
    setting passing on one sample of queries by luck is not taken (1000 queries at recall@10 ~0.95: ~0.005)."""
    if not len(recalls):
        return 1.0
    spread = recalls.std(ddof=1) / np.sqrt(len(recalls)) if len(recalls) > 1 else 0.0
    return float(recalls.mean() - 2 * spread)


def exact_neighbours(queries: np.ndarray, vectors: np.ndarray, to_space: Callable[[np.ndarray], np.ndarray],
                     k: int, chunk: int = EXACT_CHUNK, exclude: np.ndarray | None = None) -> np.ndarray:
    """Row positions (nq, k) of each query's k largest inner products with `to_space(vectors)` (-1 pads),
    never one of the rows `exclude`.

    The database goes through `to_space` and FAISS brute force `chunk` rows at a time, merged in a heap, so
    memory stays at one chunk whatever the size (1M x 1280-d vectors would need 5 GB per full copy)."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    excluded = np.empty(0, np.int64) if exclude is None else np.asarray(exclude, np.int64)
    for start in range(0, len(vectors), chunk):
        rows = np.arange(start, min(start + chunk, len(vectors)))
        rows = rows[~np.isin(rows, excluded)]
        if not len(rows):
            continue
        block = np.ascontiguousarray(to_space(vectors[rows] if len(excluded) else vectors[start : start + chunk]),
                                     dtype=np.float32)
        scores, found = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(found >= 0, rows[np.maximum(found, 0)], -1))
    heap.finalize()
    return heap.I


class RecallProbe:
    """Queries with their exact neighbours, computed once, to score settings of one index (see module doc).

    Leave-one-out: `sample` random rows (seed `seed`) of what the index holds. Held out: the rows `held_out`,
    which the index must not hold; their exact neighbours are searched among the other rows."""

    def __init__(self, index: VectorIndex, vectors: np.ndarray, ids: np.ndarray, *, sample: int = 1000,
                 k: Sequence[int] = (1, 10), seed: int = 0, space: str = "input",
                 held_out: np.ndarray | None = None) -> None:
        if space not in ("input", "index"):
            raise OffshelfError(f"space must be 'input' or 'index', got {space!r}")
        # a matrix or a StoreVectors: only the sampled queries and one chunk at a time are read
        raw = vectors if isinstance(vectors, StoreVectors) else as_matrix(vectors, index.dim)
        ids = as_ids(ids, len(raw))
        if len(raw) < 2:
            raise OffshelfError("measuring recall needs at least 2 vectors")
        self.ks, self.kmax = tuple(k), max(k)
        self.leave_one_out = held_out is None
        if held_out is None:
            rows = np.sort(np.random.default_rng(seed).choice(len(raw), min(sample, len(raw)), replace=False))
        else:
            rows = np.sort(np.asarray(held_out, np.int64))
        self.queries, self.query_ids = as_matrix(raw[rows], index.dim), ids[rows]
        to_space = index.transform if space == "index" else normalize
        if self.leave_one_out:
            pos = exact_neighbours(to_space(self.queries), raw, to_space, self.kmax + 1)
            self.truth = _drop_self(np.where(pos >= 0, ids[pos], -1), self.query_ids, self.kmax)
        else:
            pos = exact_neighbours(to_space(self.queries), raw, to_space, self.kmax, exclude=rows)
            self.truth = np.where(pos >= 0, ids[pos], -1)

    def measure(self, index: VectorIndex) -> dict[str, float]:
        """recall@k for each k, `recall_at_10_lower` (see `lower_bound`), queries per second, and the number of
        queries."""
        start = time.perf_counter()
        _, found = index.search(self.queries, self.kmax + self.leave_one_out)
        seconds = time.perf_counter() - start
        if self.leave_one_out:
            found = _drop_self(found, self.query_ids, self.kmax)
        per_query = {k: _recalls(self.truth, found, k) for k in self.ks}
        recalls = {f"recall_at_{k}": float(r.mean()) if len(r) else 1.0 for k, r in per_query.items()}
        lower = {"recall_at_10_lower": lower_bound(per_query[10])} if 10 in per_query else {}
        return {**recalls, **lower, "qps": len(self.queries) / max(seconds, 1e-9), "queries": len(self.queries)}


def measure_recall(index: VectorIndex, vectors: np.ndarray, ids: np.ndarray, sample: int = 1000,
                   k: Sequence[int] = (1, 10), seed: int = 0, space: str = "input") -> dict[str, float]:
    """recall@k of `index` against exact search over `vectors`/`ids` (what the index holds); see module doc."""
    return RecallProbe(index, vectors, ids, sample=sample, k=k, seed=seed, space=space).measure(index)


def tune(kind: str, target_recall: float, vectors: np.ndarray | StoreVectors, ids: np.ndarray, *,
         sample: int = 1000, seed: int = 0, max_rebuilds: int = 2, pca: int | None = None, whiten: bool = False,
         identity: dict[str, Any] | None = None, **params: Any) -> tuple[VectorIndex, dict[str, Any]]:
    """Build an index of `kind` over `vectors`/`ids` whose search knob (efSearch / nprobe / rerank) is the
    cheapest that reaches `target_recall` for new queries.

    `min(sample, n // 10)` rows (seed `seed`) are held out: the index is built on the others (trained on a sample
    of all, as `build_index` does) and the knob raised until the held-out rows, as queries, reach recall@10
    (index space) >= target with two standard errors to spare (`lower_bound`). If the largest knob value falls
    short, the index is rebuilt with larger build parameters (HNSW M and efConstruction, PQ m; binary: keep float
    vectors for re-ranking), at most `max_rebuilds` times. The held-out rows are added last, so the index holds
    every row. Returns it, left at the cheapest setting that reached the target (else the largest tried), and a
    report: reached, params, recall_at_1, recall_at_10 (held out), qps, rebuilds, steps, held_out, message.
    """
    if not 0 < target_recall <= 1:
        raise OffshelfError(f"target recall must be in (0, 1], got {target_recall}")
    raw = vectors if isinstance(vectors, StoreVectors) else as_matrix(vectors)
    ids = as_ids(ids, len(raw))
    if len(raw) < 2:
        raise OffshelfError("measuring recall needs at least 2 vectors")
    held = np.sort(np.random.default_rng(seed).choice(len(raw), max(1, min(sample, len(raw) // 10)), replace=False))
    build: dict[str, Any] = {"pca": pca, "whiten": whiten, **params}
    steps: list[dict[str, Any]] = []
    rebuilds: list[dict[str, Any]] = []
    while True:
        index = train_index(raw, kind, identity=identity, **build)
        index.reserve(len(raw))
        add_rows(index, raw, ids, np.setdiff1d(np.arange(len(raw)), held))
        probe = RecallProbe(index, raw, ids, held_out=held, space="index")
        reached = False
        for value in index._knob_values() or [None]:
            if value is not None:
                index.set_params(**{index.knob: value})
            result = probe.measure(index)
            steps.append({"params": index.params, **result})
            if result["recall_at_10_lower"] >= target_recall:
                reached = True
                break
        larger = None if reached or len(rebuilds) == max_rebuilds else index._larger_params()
        if larger is None:
            break
        rebuilds.append(larger)
        build = {**index.params, **larger}
    add_rows(index, raw, ids, held)
    return index, {**_tune_report(index, target_recall, reached, result, rebuilds, steps), "held_out": len(held)}


def _tune_report(index: VectorIndex, target: float, reached: bool, result: dict[str, float],
                 rebuilds: list[dict[str, Any]], steps: list[dict[str, Any]]) -> dict[str, Any]:
    if reached:
        setting = f"{index.knob}={index.params[index.knob]}" if index.knob else "exact search"
        message = (f"recall@10 {result['recall_at_10']:.3f} (lower bound {result['recall_at_10_lower']:.3f}) "
                   f">= {target} on held-out queries with {setting}")
    else:
        message = (f"recall@10 {result['recall_at_10']:.3f} (lower bound {result['recall_at_10_lower']:.3f}) "
                   f"< {target}: unreachable with the largest settings tried")
    if rebuilds:
        message += f"; rebuilt with {', '.join(str(r) for r in rebuilds)}"
    return {"target_recall": target, "reached": reached, "params": index.params, **result, "rebuilds": rebuilds,
            "steps": steps, "message": message}
