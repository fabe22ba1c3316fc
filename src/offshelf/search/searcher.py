"""Nearest-neighbour search over a feature store by cosine similarity.

The store's own index (`offshelf index build`, saved in the store) is used when there is one; otherwise
an exact FAISS flat index over the L2-normalized vectors. Queries are embedded with exactly the store's
model, layer, pooling and views (the store's `Embedder`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from offshelf.errors import OffshelfError
from offshelf.extract import Embedder
from offshelf.search.item_paths import ItemPaths
from offshelf.store import MANIFEST, FeatureStore

if TYPE_CHECKING:
    from offshelf.models.text import TextEncoder


@dataclass(frozen=True)
class Hit:
    """One search result; `score` is the cosine similarity (higher is closer)."""

    rank: int
    id: int
    path: str
    score: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Searcher:
    """Searches one store. Build once, query many times; `search_*` are safe to call from several threads."""

    def __init__(self, store: FeatureStore | str | Path, *, exact: bool = False, threads: int | None = None,
                 precision: str | None = None) -> None:
        """Queries are embedded at the store's precision; a given `precision` must be it (OffshelfError)."""
        from offshelf.index import build_index, load_store_index  # sklearn/FAISS only when searching
        from offshelf.index.store_index import sync_index, update_store_index
        from offshelf.store import resolve_store

        # an upgraded store (marker STORE/upgrade.json, see offshelf.upgrade) is searched in its new store
        self.store = resolve_store(store)
        check_store_precision(self.store, precision)
        # ids and paths in memory; the vectors are streamed from the shards only if the index must be built or
        # caught up, so the store's matrix is never held next to the index
        snapshot, vectors = self.store.snapshot_view(paths=True)
        ids = vectors.ids
        if vectors.paths is None:
            raise OffshelfError(f"store {self.store.root} has no path column; it cannot be searched")
        self._paths = ItemPaths(ids, vectors.paths)
        saved = None if exact else load_store_index(self.store.root)
        #: how a saved index that lagged behind the store was caught up before answering (None: it was current)
        self.caught_up: dict[str, object] | None = None
        if saved is not None and saved.store_seq != snapshot.seq:
            self.caught_up = {"from_seq": saved.store_seq or 0, "to_seq": snapshot.seq,
                              **sync_index(saved, ids, vectors), "saved": update_store_index(self.store.root)}
            saved.store_seq = snapshot.seq
        self.index = saved or build_index(vectors, ids, "flat", identity=self.store.config.identity())
        self._threads = threads
        self._embedder: Embedder | None = None
        self._text_encoder: TextEncoder | None = None

    @property
    def embedder(self) -> Embedder:
        """The store's embedder, loaded on first use (searching by vector needs no model)."""
        if self._embedder is None:
            self._embedder = Embedder(self.store.config, threads=self._threads, origin=self.store.root / MANIFEST)
        return self._embedder

    @property
    def text_problem(self) -> str | None:
        """Why text queries cannot search this store (None when they can: a CLIP-type model's image embeddings)."""
        from offshelf.models.huggingface import text_problem

        return text_problem(self.store.config.model_spec, self.store.config.layer)

    @property
    def has_text(self) -> bool:
        """Whether `search_text` works on this store."""
        return self.text_problem is None

    @property
    def text_encoder(self) -> TextEncoder:
        """The store's model's text tower, loaded on first use; OffshelfError if it has none."""
        if self._text_encoder is None:
            from offshelf.models.text import store_text_encoder

            self._text_encoder = store_text_encoder(self.store.config.model_spec, self.store.config.layer,
                                                    threads=self._threads)
        return self._text_encoder

    def __len__(self) -> int:
        return len(self._paths)

    def search_vectors(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The `k` nearest stored items of each query vector, best first."""
        if k < 1:
            raise OffshelfError(f"k must be at least 1, got {k}")
        queries = np.atleast_2d(queries)
        if queries.shape[1] != self.store.config.dim:
            raise OffshelfError(f"query vectors have dim {queries.shape[1]}, the store has {self.store.config.dim}")
        scores, found = self.index.search(queries, min(k, max(len(self), 1)))
        results = []
        for row_scores, row_ids in zip(scores, found):
            # ids the store no longer holds (an index not yet updated) are dropped, never shown
            live = [(int(i), self._paths.get(i), float(s)) for s, i in zip(row_scores, row_ids) if i >= 0]
            found_live = [(i, p, s) for i, p, s in live if p is not None]
            results.append([Hit(rank, i, p, s) for rank, (i, p, s) in enumerate(found_live, start=1)])
        return results

    def path(self, item_id: int) -> str | None:
        """The stored path of `item_id`, None if the searcher does not hold it."""
        return self._paths.get(item_id)

    def add(self, vectors: np.ndarray, ids: np.ndarray, paths: Sequence[str]) -> None:
        """Make items just committed to the store searchable (an id already held is replaced).

        Only this searcher's in-memory index changes (under its writer lock); the caller commits the store and
        its saved index. Searches running meanwhile see the items either entirely or not at all."""
        self.index.add(vectors, ids)
        self._paths.set(ids, paths)

    def remove(self, ids: Sequence[int]) -> int:
        """Stop returning items just removed from the store; returns how many were held."""
        removed = self.index.remove(np.asarray(ids, np.int64))
        self._paths.discard(ids)
        return removed

    def search_files(self, paths: Sequence[str | Path], k: int = 10) -> list[list[Hit]]:
        """Embed image files as queries and search; ImageDecodeError if a query cannot be read."""
        return self.search_vectors(self.embedder.embed_files(paths), k)

    def search_text(self, texts: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Embed texts with the model's text tower and search (CLIP-type models; see `has_text`)."""
        return self.search_vectors(self.text_encoder.encode(texts), k)


def search(query: str | Path, store: str | Path, k: int = 10, precision: str | None = None) -> list[Hit]:
    """The `k` stored images most similar to the image file `query`, best first (`precision`: see `Searcher`)."""
    return Searcher(store, precision=precision).search_files([query], k)[0]


def check_store_precision(store: FeatureStore, precision: str | None) -> None:
    """OffshelfError unless `precision` is None or the precision of the store's features."""
    if precision is not None and precision != store.config.precision:
        raise OffshelfError(f"store {store.root} holds {store.config.precision} features; --precision {precision} "
                            "cannot search them (leave it out to use the store's)")


def search_text(text: str, store: str | Path, k: int = 10) -> list[Hit]:
    """The `k` stored images that best match `text`, best first (a store of a CLIP-type model's image embeddings)."""
    return Searcher(store).search_text([text], k)[0]
