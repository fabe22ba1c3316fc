"""Recall measured against exact search, and `tune`: the cheapest search setting that reaches a target.

Protocol (leave-one-out): `sample` of the indexed vectors themselves are the queries. For each query its own
id is dropped from both result lists, so the exact top-k are the k nearest *other* vectors (exact cosine,
FAISS IndexFlatIP on the same vectors), and the approximate top-k the first k other ids the index returns.

    recall@k = mean over queries of |exact top-k  ∩  approximate top-k| / k

(recall@1: how often the approximate first result is the true nearest neighbour). With `space="input"` the
exact reference is computed on the L2-normalized input vectors — end to end, PCA losses included; with
`space="index"` on the index's working space (after its PCA) — the ANN structure's own error, the only part a
search-time knob can fix, and what `tune` uses. Without `pca` both are the same. `qps` is the throughput of
the index answering all the sampled queries as one batch (FAISS uses every core).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import faiss
import numpy as np
from sklearn.preprocessing import normalize

from offshelf.errors import OffshelfError
from offshelf.index.base import VectorIndex, as_ids, as_matrix, build_index
from offshelf.store.streaming import CHUNK_ROWS, StoreVectors

EXACT_CHUNK = CHUNK_ROWS  # database rows scored at once (one streamed chunk of a store)


def _drop_self(found: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """The first k ids of each row of `found` (k + 1 wide) other than the row's own id."""
    keep = found != self_ids[:, None]
    keep[keep.all(axis=1), -1] = False
    return found[keep].reshape(len(found), k)


def _recall(truth: np.ndarray, found: np.ndarray, k: int) -> float:
    """Mean fraction of each row's exact top-k (ignoring -1 pads) present in its approximate top-k."""
    exact, approx = truth[:, :k], found[:, :k]
    valid = exact >= 0
    hits = ((exact[:, :, None] == approx[:, None, :]).any(axis=2) & valid).sum(axis=1)
    counted = valid.sum(axis=1) > 0
    return float(np.mean(hits[counted] / valid.sum(axis=1)[counted])) if counted.any() else 1.0


def exact_neighbours(queries: np.ndarray, vectors: np.ndarray, to_space: Callable[[np.ndarray], np.ndarray],
                     k: int, chunk: int = EXACT_CHUNK) -> np.ndarray:
    """Row positions (nq, k) of each query's k largest inner products with `to_space(vectors)` (-1 pads).

    The database goes through `to_space` and FAISS brute force `chunk` rows at a time, merged in a heap, so
    memory stays at one chunk whatever the size (1M x 1280-d vectors would need 5 GB per full copy)."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    for start in range(0, len(vectors), chunk):
        block = np.ascontiguousarray(to_space(vectors[start : start + chunk]), dtype=np.float32)
        scores, found = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(found >= 0, found + start, -1))
    heap.finalize()
    return heap.I


class RecallProbe:
    """Sampled queries with their exact neighbours, computed once, to score settings of one index."""

    def __init__(self, index: VectorIndex, vectors: np.ndarray, ids: np.ndarray, *, sample: int = 1000,
                 k: Sequence[int] = (1, 10), seed: int = 0, space: str = "input") -> None:
        if space not in ("input", "index"):
            raise OffshelfError(f"space must be 'input' or 'index', got {space!r}")
        # a matrix or a StoreVectors: only the sampled queries and one chunk at a time are read
        raw = vectors if isinstance(vectors, StoreVectors) else as_matrix(vectors, index.dim)
        ids = as_ids(ids, len(raw))
        if len(raw) < 2:
            raise OffshelfError("measuring recall needs at least 2 vectors")
        self.ks, self.kmax = tuple(k), max(k)
        rows = np.sort(np.random.default_rng(seed).choice(len(raw), min(sample, len(raw)), replace=False))
        self.queries, self.query_ids = as_matrix(raw[rows], index.dim), ids[rows]
        to_space = index.transform if space == "index" else normalize
        pos = exact_neighbours(to_space(self.queries), raw, to_space, self.kmax + 1)
        self.truth = _drop_self(np.where(pos >= 0, ids[pos], -1), self.query_ids, self.kmax)

    def measure(self, index: VectorIndex) -> dict[str, float]:
        """recall@k for each k, queries per second, and the number of queries."""
        start = time.perf_counter()
        _, found = index.search(self.queries, self.kmax + 1)
        seconds = time.perf_counter() - start
        found = _drop_self(found, self.query_ids, self.kmax)
        recalls = {f"recall_at_{k}": _recall(self.truth, found, k) for k in self.ks}
        return {**recalls, "qps": len(self.queries) / max(seconds, 1e-9), "queries": len(self.queries)}


def measure_recall(index: VectorIndex, vectors: np.ndarray, ids: np.ndarray, sample: int = 1000,
                   k: Sequence[int] = (1, 10), seed: int = 0, space: str = "input") -> dict[str, float]:
    """recall@k of `index` against exact search over `vectors`/`ids` (what the index holds); see module doc."""
    return RecallProbe(index, vectors, ids, sample=sample, k=k, seed=seed, space=space).measure(index)


def tune(index: VectorIndex, target_recall: float, vectors: np.ndarray, ids: np.ndarray, *, sample: int = 1000,
         seed: int = 0, max_rebuilds: int = 2) -> tuple[VectorIndex, dict[str, Any]]:
    """Raise the kind's search knob (efSearch / nprobe / rerank) until recall@10 (index space) >= target.

    If the largest knob value falls short, rebuild from `vectors`/`ids` with larger build parameters (HNSW M and
    efConstruction, PQ m; binary: keep float vectors for re-ranking), at most `max_rebuilds` times. Returns the
    (possibly rebuilt) index, left at the cheapest setting that reached the target (else the best tried), and a
    report: reached, params, recall_at_1, recall_at_10, qps, rebuilds, steps.
    """
    if not 0 < target_recall <= 1:
        raise OffshelfError(f"target recall must be in (0, 1], got {target_recall}")
    steps: list[dict[str, Any]] = []
    rebuilds: list[dict[str, Any]] = []
    while True:
        probe = RecallProbe(index, vectors, ids, sample=sample, seed=seed, space="index")
        for value in index._knob_values() or [None]:
            if value is not None:
                index.set_params(**{index.knob: value})
            result = probe.measure(index)
            steps.append({"params": index.params, **result})
            if result["recall_at_10"] >= target_recall:
                return index, _tune_report(index, target_recall, True, result, rebuilds, steps)
        larger = index._larger_params()
        if larger is None or len(rebuilds) == max_rebuilds:
            return index, _tune_report(index, target_recall, False, result, rebuilds, steps)
        rebuilds.append(larger)
        index = build_index(vectors, ids, index.kind, identity=index.identity, **{**index.params, **larger})


def _tune_report(index: VectorIndex, target: float, reached: bool, result: dict[str, float],
                 rebuilds: list[dict[str, Any]], steps: list[dict[str, Any]]) -> dict[str, Any]:
    if reached:
        setting = f"{index.knob}={index.params[index.knob]}" if index.knob else "exact search"
        message = f"recall@10 {result['recall_at_10']:.3f} >= {target} with {setting}"
    else:
        message = f"recall@10 {result['recall_at_10']:.3f} < {target}: unreachable with the largest settings tried"
    if rebuilds:
        message += f"; rebuilt with {', '.join(str(r) for r in rebuilds)}"
    return {"target_recall": target, "reached": reached, "params": index.params, **result, "rebuilds": rebuilds,
            "steps": steps, "message": message}
