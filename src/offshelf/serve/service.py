"""`Service`: the served store, its searcher, the model, the probe, and the write operations.

Everything the HTTP routes do goes through here, so the rules live in one place: searches read the in-memory
index under its readers-writer lock; writes are serialized in this process, take the store's single-writer
lock (`FeatureStore.writer`), commit one shard, bring the saved index up to date (`update_store_index`) and
only then make the change visible to searches. A write that fails leaves the store, its index and the upload
folder as they were.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from offshelf.errors import OffshelfError, StoreError, UnknownItemsError
from offshelf.extract import Embedder
from offshelf.images import ImageDecodeError
from offshelf.io import atomic_write_bytes
from offshelf.search import Hit, Searcher
from offshelf.serve.config import ServeConfig
from offshelf.serve.uploads import UPLOADS_DIR, ThumbnailCache, make_thumbnail, sniff_extension, upload_name
from offshelf.store import FileState, path_id

if TYPE_CHECKING:
    from offshelf.probe import LinearProbe

RECALL_SAMPLE = 200
#: `/v1/stats` measures recall again once the number of items has moved this much (a fraction) since the last
#: measurement: measuring streams every stored vector (5 GB at 1M items), and a sample's recall does not move
#: with a handful of writes.
RECALL_STALE = 0.01


def recall_is_stale(measured_items: int, items: int) -> bool:
    """Whether a recall measured with `measured_items` items must be measured again now that there are `items`."""
    return abs(items - measured_items) > RECALL_STALE * measured_items


class ItemNotFound(OffshelfError):
    """The request names an id the store does not hold (HTTP 404)."""


class ModelUnavailable(OffshelfError):
    """The model is still loading or failed to load (HTTP 503); the server stays up and says why."""


class NoProbe(OffshelfError):
    """Classification was asked of a server started without --probe (HTTP 404)."""


class Service:
    """One store served: search by image or id, embed, classify, add and remove items, thumbnails, stats."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.searcher = Searcher(config.store, threads=config.threads, precision=config.precision)
        self.store = self.searcher.store
        # the store's vectors stay on disk: an item's vector is read when asked for (search by id), and only
        # the ones added through this server are kept in memory
        self._view = self.store.vector_view()
        self._added: dict[int, np.ndarray] = {}
        self.uploads = self.store.root.resolve() / UPLOADS_DIR
        self.probe: LinearProbe | None = None
        if config.probe is not None:
            from offshelf.probe.estimator import check_compatible, load_probe

            self.probe, identity = load_probe(config.probe)
            check_compatible(identity, self.store.config.identity())
        self.embedder: Embedder | None = None
        self.model_error: str | None = None
        self.thumbnails = ThumbnailCache(config.thumbnail_cache_bytes)
        self._write_lock = threading.Lock()
        self._recall: dict[str, Any] | None = None
        self._recall_lock = threading.Lock()

    # -- the model ---------------------------------------------------------------------------------
    def load_model(self) -> None:
        """Load the store's model; a failure is kept (and reported by /readyz and image routes), never raised."""
        try:
            self.embedder = self.searcher.embedder
        except Exception as exc:  # noqa: BLE001 - the server stays up and says why
            self.model_error = f"{type(exc).__name__}: {exc}"

    def require_embedder(self) -> Embedder:
        if self.embedder is None:
            why = f"failed to load: {self.model_error}" if self.model_error else "is still loading; retry shortly"
            raise ModelUnavailable(f"the model {self.store.config.model} {why}")
        return self.embedder

    # -- reading -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.searcher)

    def path_of(self, item_id: int) -> str:
        path = self.searcher.path(item_id)
        if path is None:
            raise ItemNotFound(f"no item with id {item_id} in the store")
        return path

    def vector_of(self, item_id: int) -> np.ndarray:
        self.path_of(item_id)  # ItemNotFound unless it is served
        vector = self._added.get(item_id)
        if vector is not None:
            return vector
        for attempt in range(2):
            view = self._view
            row = view.rows_of(np.array([item_id], np.int64))[0]
            try:
                if row >= 0:
                    return view[[row]][0]
            except StoreError:
                if attempt:
                    raise
            self._view = self.store.vector_view()  # the store was compacted, or the item is newer than the view
        raise ItemNotFound(f"no item with id {item_id} in the store")

    def text_vector(self, text: str) -> np.ndarray:
        """A text query embedded by the store's model's text tower; OffshelfError (HTTP 400) if it has none."""
        problem = self.searcher.text_problem
        if problem is not None:
            raise OffshelfError(f"this store cannot be searched by text: {problem}")
        return self.searcher.text_encoder.encode([text])[0]

    def search(self, vector: np.ndarray, k: int, min_score: float | None = None, prefix: str | None = None
               ) -> list[Hit]:
        """The `k` best items, best first, keeping those scoring at least `min_score` under path `prefix`.

        With a filter, more candidates are fetched (10 k, at least 100) and filtered, so a filter that few
        items pass may return fewer than k even when more exist further down."""
        filtered = min_score is not None or bool(prefix)
        fetch = min(max(len(self), 1), max(10 * k, 100)) if filtered else k
        hits = self.searcher.search_vectors(vector[None, :], fetch)[0]
        kept = [h for h in hits if (min_score is None or h.score >= min_score)
                and (not prefix or h.path.startswith(prefix))][:k]
        return [replace(hit, rank=rank) for rank, hit in enumerate(kept, start=1)]

    def require_probe(self) -> LinearProbe:
        if self.probe is None:
            raise NoProbe("no probe is loaded: start the server with --probe PROBE_DIR")
        return self.probe

    def classify(self, vector: np.ndarray) -> list[dict[str, Any]]:
        """Every class of the probe with its score and probability, best first."""
        probe = self.require_probe()
        scores = probe.decision_function(vector[None, :])[0]
        probabilities = probe.predict_proba(vector[None, :])[0]
        order = np.argsort(-scores, kind="stable")
        return [{"label": str(probe.classes_[i]), "score": float(scores[i]),
                 "probability": float(probabilities[i])} for i in order]

    def item(self, item_id: int) -> dict[str, Any]:
        path = self.path_of(item_id)
        try:
            stat = os.stat(path)
            size, exists = stat.st_size, True
        except OSError:
            size, exists = None, False
        return {"id": item_id, "path": path, "name": Path(path).name, "uploaded": self.is_upload(path),
                "exists": exists, "bytes": size}

    def thumbnail(self, item_id: int, size: int) -> bytes:
        path = self.path_of(item_id)
        try:
            stat = os.stat(path)
        except OSError:
            raise ItemNotFound(f"the file of item {item_id} is no longer on disk: {path}") from None
        key = (item_id, size, stat.st_size, stat.st_mtime_ns)
        data = self.thumbnails.get(key)
        if data is None:
            try:
                data = make_thumbnail(path, size, self.config.max_pixels)
            except ImageDecodeError as exc:
                raise ItemNotFound(f"the file of item {item_id} cannot be read any more: {exc.reason}") from None
            self.thumbnails.put(key, data)
        return data

    def recall(self) -> dict[str, Any]:
        """The index's recall against exact search on a sample of its items (`items`: how many it held when
        measured; measured again once the count has moved by more than RECALL_STALE)."""
        with self._recall_lock:
            if self._recall is None or recall_is_stale(self._recall["items"], len(self)):
                from offshelf.index import measure_recall

                with self._write_lock:  # the store as searched now (writes go through this lock)
                    vectors = self.store.vector_view()
                ids = vectors.ids
                measured: dict[str, Any] = {"recall_at_1": None, "recall_at_10": None}
                if len(ids) >= 2:
                    measured = measure_recall(self.searcher.index, vectors, ids, sample=min(RECALL_SAMPLE, len(ids)))
                self._recall = {"recall_at_1": measured["recall_at_1"], "recall_at_10": measured["recall_at_10"],
                                "sample": min(RECALL_SAMPLE, len(ids)), "items": len(ids)}
            return self._recall

    def stats(self) -> dict[str, Any]:
        config, index = self.store.config, self.searcher.index
        return {
            "items": len(self), "store": str(self.store.root), "model": config.model, "layer": config.layer,
            "pool": config.pool, "augment": config.augment, "dim": config.dim,
            "index": {"kind": index.kind, "n": index.ntotal, "tombstones": index.ntombstones, **self.recall()},
            "batching": {"max_batch": self.config.max_batch, "max_wait_ms": self.config.max_wait_ms},
            "probe": None if self.probe is None else [str(c) for c in self.probe.classes_],
            "model_loaded": self.embedder is not None, "writes_need_key": self.config.api_key is not None,
            "text": self.searcher.has_text,
        }

    # -- writing -----------------------------------------------------------------------------------
    def is_upload(self, path: str) -> bool:
        return Path(path).parent == self.uploads

    def add(self, data: bytes, vector: np.ndarray, name: str | None = None) -> dict[str, Any]:
        """Keep an uploaded image in the store's upload folder, commit its descriptor, index it."""
        from offshelf.index import update_store_index

        sha256 = hashlib.sha256(data).hexdigest()
        path = self.uploads / upload_name(sha256, sniff_extension(data), name)
        item_id = path_id(str(path))
        with self._write_lock, self.store.writer() as writer:
            existed = path.exists()
            atomic_write_bytes(path, data)
            try:
                stat = path.stat()
                rows = self.store.new_rows()
                rows.add(str(path), FileState(sha256, stat.st_size, stat.st_mtime_ns), vector)
                writer.commit(rows)
            except BaseException:
                if not existed:
                    path.unlink(missing_ok=True)
                raise
            update_store_index(self.store.root)
            self.searcher.add(vector[None, :], np.array([item_id]), [str(path)])
            self._added[item_id] = np.asarray(vector, np.float32)
        return {"id": item_id, "path": str(path)}

    def remove(self, item_id: int) -> dict[str, Any]:
        """Remove an item from the store and its index; an uploaded file is deleted too."""
        from offshelf.index import update_store_index

        with self._write_lock:
            path = self.path_of(item_id)
            try:
                self.store.remove(ids=[item_id])
            except UnknownItemsError:  # removed meanwhile by another process (`offshelf remove`)
                self._forget(item_id)
                raise ItemNotFound(f"no item with id {item_id} in the store") from None
            update_store_index(self.store.root)
            self._forget(item_id)
        if self.is_upload(path):
            Path(path).unlink(missing_ok=True)
        return {"id": item_id, "path": path, "removed": True}

    def _forget(self, item_id: int) -> None:
        """Stop serving an item the store no longer holds."""
        self.searcher.remove([item_id])
        self._added.pop(item_id, None)
