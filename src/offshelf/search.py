"""Exact nearest-neighbour search over a feature store: cosine similarity with a FAISS flat index.

Vectors are L2-normalized, so the inner product FAISS computes is the cosine similarity. Queries are
embedded with exactly the store's model, layer, pooling and views (the store's `Embedder`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from .errors import OffshelfError
from .extract import Embedder
from .store import FeatureStore


@dataclass(frozen=True)
class Hit:
    """One search result; `score` is the cosine similarity (higher is closer)."""

    rank: int
    id: int
    path: str
    score: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


class Searcher:
    """Searches one store. Build once, query many times; `search_*` are safe to call from several threads."""

    def __init__(self, store: FeatureStore | str | Path, *, threads: int | None = None) -> None:
        self.store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
        self.ids, self.paths, vectors = self.store.vectors()
        self.index = faiss.IndexFlatIP(self.store.config.dim)
        self.index.add(l2_normalize(vectors))
        self._threads = threads
        self._embedder: Embedder | None = None

    @property
    def embedder(self) -> Embedder:
        """The store's embedder, loaded on first use (searching by vector needs no model)."""
        if self._embedder is None:
            self._embedder = Embedder(self.store.config, threads=self._threads)
        return self._embedder

    def __len__(self) -> int:
        return self.index.ntotal

    def search_vectors(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The `k` nearest stored items of each query vector, best first."""
        if k < 1:
            raise OffshelfError(f"k must be at least 1, got {k}")
        queries = np.atleast_2d(queries)
        if queries.shape[1] != self.store.config.dim:
            raise OffshelfError(f"query vectors have dim {queries.shape[1]}, the store has {self.store.config.dim}")
        scores, positions = self.index.search(l2_normalize(queries), min(k, max(len(self), 1)))
        return [
            [
                Hit(rank, int(self.ids[pos]), self.paths[pos], float(score))
                for rank, (score, pos) in enumerate(zip(row_scores, row_pos), start=1)
                if pos >= 0
            ]
            for row_scores, row_pos in zip(scores, positions)
        ]

    def search_files(self, paths: Sequence[str | Path], k: int = 10) -> list[list[Hit]]:
        """Embed image files as queries and search; ImageDecodeError if a query cannot be read."""
        return self.search_vectors(self.embedder.embed_files(paths), k)


def search(query: str | Path, store: str | Path, k: int = 10) -> list[Hit]:
    """The `k` stored images most similar to the image file `query`, best first."""
    return Searcher(store).search_files([query], k)[0]
