"""`hnswpca`: an HNSW graph over PCA-reduced vectors that only proposes candidates, re-ranked exactly on the full
vectors; and `auto_choice`, the rule `offshelf index build --kind auto` follows.

Why: at d = 1280 an HNSW step reads 5 KB per distance, so the graph walk is memory-bound (FAISS HNSW at full
dimension: 10x brute force at 1M vectors, benchmarks/results/ann_scale.md). Walking the graph in `graph_dim`
(256) PCA dimensions costs a fifth of that; PCA loses the fine order of the nearest neighbours, which the exact
re-rank of the best `rerank` candidates (inner products with the kept, L2-normalized full vectors) restores.

The FAISS index is `IndexHNSWFlat(graph_dim, M, L2)` over the projections onto the top `graph_dim` principal
directions of (up to 20,000 of) the training vectors; the projection is saved with the index (`_state_arrays`).
The graph ranks by L2 distance between projections, which for unit vectors approximates 2 - 2 cos (an inner
product after centring would favour items with a small mean component).
Without re-ranking (`rerank=0`) scores are 1 - L2^2 / 2 in the reduced space.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from offshelf.errors import OffshelfError
from offshelf.index.base import VectorIndex

PCA_SAMPLE = 20_000  # training vectors the projection is fitted on
GRAPH_DIM = 256  # PCA dimensions the graph is walked in (at most the vectors' dimension)
AUTO_FLAT_MAX = 20_000  # up to this many vectors `auto` picks exact search (flat): fast enough and exact
AUTO_TARGET = 0.95  # `auto` tunes to this recall@10 (on held-out queries, see `tune`) when no target is given


def search_depths(start: int = 16, stop: int = 2048) -> list[int]:
    """16, 24, 32, 48, 64, 96, ... up to `stop`, from `start` on: steps of 1.5x and 2x (each doubling of a graph's
    search depth costs ~1.5x the time, so doublings alone may overshoot a target by that much)."""
    steps = [v for e in range(4, stop.bit_length()) for v in (2**e, 3 * 2 ** (e - 1))]
    return [v for v in steps if start <= v < stop] + [stop]


class HNSWPCAIndex(VectorIndex):
    """HNSW over `graph_dim` PCA dimensions (FAISS IndexHNSWFlat, L2) proposing candidates + exact re-rank.

    Build parameters: graph_dim (default min(d, n, 256)), M=32, efConstruction=80. Search: efSearch=64 (the
    graph's search depth, raised to `rerank` if smaller), rerank=64 (candidates re-scored on the full vectors).
    """

    kind = "hnswpca"
    knob = "efSearch"
    reranks = True
    build_defaults = {"graph_dim": None, "M": 32, "efConstruction": 80}
    search_defaults = {"efSearch": 64, "rerank": 64}

    def _resolve(self, params: dict[str, Any], n: int) -> dict[str, Any]:
        graph_dim = int(params["graph_dim"] or min(self.d, n, GRAPH_DIM))
        if not 1 <= graph_dim <= min(self.d, n):
            raise OffshelfError(f"hnswpca graph_dim must be between 1 and min(n, d) = {min(self.d, n)}, "
                                f"got {graph_dim}")
        for name in ("M", "efConstruction"):
            if isinstance(params[name], bool) or not isinstance(params[name], (int, np.integer)) or params[name] < 2:
                raise OffshelfError(f"hnswpca {name} must be an integer >= 2, got {params[name]!r}")
        return {**params, "graph_dim": graph_dim}

    def _new_faiss(self, x: np.ndarray) -> Any:
        fit = x[:PCA_SAMPLE].astype(np.float64)
        self._mean = fit.mean(axis=0)
        centred = fit - self._mean
        with threadpool_limits(1):  # LAPACK's threaded eigh is 10x slower on a busy 2-core machine
            variances, vectors = np.linalg.eigh(centred.T @ centred)
        top = np.argsort(variances)[::-1][: self._params["graph_dim"]]
        self._mean = self._mean.astype(np.float32)
        self._components = np.ascontiguousarray(vectors[:, top], dtype=np.float32)
        graph = faiss.IndexHNSWFlat(self._params["graph_dim"], self._params["M"], faiss.METRIC_L2)
        graph.hnsw.efConstruction = self._params["efConstruction"]
        return graph

    def _encode(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((x - self._mean) @ self._components, dtype=np.float32)

    def _search_codes(self, x: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParametersHNSW(efSearch=max(self._params["efSearch"], depth), sel=self._selector)
        distances, pos = self._faiss.search(self._encode(x), depth, params=params)
        return 1 - distances / 2, pos

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"graph.mean": self._mean, "graph.components": self._components}

    def _load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self._mean, self._components = arrays["graph.mean"], arrays["graph.components"]
        if self._components.shape != (self.d, self._faiss.d) or self._mean.shape != (self.d,):
            raise ValueError(f"projection of shape {self._components.shape} does not fit the index")

    def _knob_values(self) -> list[int]:
        return search_depths(max(16, self._params["rerank"]))  # below `rerank` the graph searches that deep anyway

    def _larger_params(self) -> dict[str, Any] | None:
        """A wider graph space first (what PCA loses bounds recall), then a denser graph."""
        graph_dim, M = self._params["graph_dim"], self._params["M"]
        if graph_dim < self.d:
            return {"graph_dim": min(self.d, 2 * graph_dim), "rerank": 2 * self._params["rerank"]}
        return {"M": 2 * M, "efConstruction": 2 * self._params["efConstruction"]} if M < 64 else None


def auto_target(target: float | None) -> float:
    """The recall@10 `auto` tunes to: `target`, checked, or AUTO_TARGET when it is None."""
    target = AUTO_TARGET if target is None else target
    if not 0 < target <= 1:
        raise OffshelfError(f"target recall must be in (0, 1], got {target}")
    return target


def auto_choice(n: int, dim: int) -> tuple[str, dict[str, Any]]:
    """The kind and build parameters `--kind auto` uses for `n` vectors of dimension `dim` (docs/index.md):
    exact search (flat) up to AUTO_FLAT_MAX vectors; beyond, hnswpca with the graph in min(dim, 256) PCA
    dimensions. The search depth is then tuned on a sample of the store (`tune`)."""
    if n <= AUTO_FLAT_MAX:
        return "flat", {}
    return "hnswpca", {"graph_dim": min(dim, GRAPH_DIM, n)}
