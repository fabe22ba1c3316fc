"""Approximate nearest-neighbour indexes over feature-store vectors, one interface, FAISS underneath.

Kinds: `flat` (exact), `hnsw` (graph), `ivfpq` (inverted lists + product quantization, optional exact
re-ranking), `binary` (ITQ sign codes by Hamming distance, optional exact re-ranking), `hnswpca` (a graph over
PCA-reduced vectors proposing candidates, re-ranked on the full vectors; what `auto` picks at scale); each optionally after
PCA / PCA-whitening to `pca` dimensions. Cosine similarity throughout: vectors are L2-normalized before and
after PCA, and the index ranks by inner product.

    index = build_index(vectors, ids, "hnsw", pca=256)
    scores, ids = index.search(queries, k=10)          # (nq, k) float32, (nq, k) int64; -1 pads
    index.add(new_vectors, new_ids); index.remove(old_ids)
    measure_recall(index, vectors, ids)                # {"recall_at_1", "recall_at_10", "qps", ...}
    index, report = tune("hnsw", 0.95, vectors, ids)   # built with the cheapest efSearch reaching 0.95
    index.save(directory); VectorIndex.load(directory)

For a feature store: `build_store_index`, `load_store_index`, `update_store_index`. See docs/index.md.
"""

from offshelf.index.base import VectorIndex, build_index
from offshelf.index.graph import HNSWPCAIndex, auto_choice, auto_target
from offshelf.index.itq import ITQ
from offshelf.index.kinds import BinaryIndex, FlatIndex, HNSWIndex, IVFPQIndex
from offshelf.index.recall import RecallProbe, measure_recall, tune
from offshelf.index.store_index import (
    INDEX_DIR,
    build_store_index,
    check_store_index,
    load_store_index,
    update_store_index,
)

KINDS = ("flat", "hnsw", "ivfpq", "binary", "hnswpca")

__all__ = [
    "KINDS", "INDEX_DIR", "VectorIndex", "FlatIndex", "HNSWIndex", "IVFPQIndex", "BinaryIndex", "HNSWPCAIndex", "ITQ",
    "auto_choice", "auto_target",
    "build_index", "measure_recall", "tune", "RecallProbe",
    "build_store_index", "check_store_index", "load_store_index", "update_store_index",
]
