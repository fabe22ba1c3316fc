"""Every pair of items whose similarity reaches a threshold, by range search: never an n x n matrix.

Exact: FAISS `range_search` on a flat inner-product index, queries in chunks, so memory grows with the pairs
found, not with n squared. Both searches keep at most MAX_DEPTH partners per item (its closest), so a collection
where most items are alike at a low threshold cannot exhaust memory: a group of more than MAX_DEPTH copies is cut. Approximate, for large collections: the store's ANN index (`offshelf.index`) gives
candidates by nearest-neighbour search, deepened (k doubled) for the items whose k-th candidate still reaches
the threshold, and every candidate is re-scored exactly in the calibrated space.
"""

from __future__ import annotations

import faiss
import numpy as np
from tqdm import tqdm

from offshelf.index import VectorIndex
from offshelf.store import IdRows

QUERY_CHUNK = 2048
RANGE_CHUNK = 256  # queries per range search: bounds its result buffer at 256 x n pairs
FIRST_DEPTH = 16
MAX_DEPTH = 1024

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # rows a, rows b (a < b), scores; float32


def _keep(a: np.ndarray, b: np.ndarray, s: np.ndarray) -> Pairs:
    """Pairs of two different rows as (lower row, higher row, score); `_unique_pairs` then keeps each once."""
    keep = a != b
    a, b, s = a[keep], b[keep], s[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return lo.astype(np.int64), hi.astype(np.int64), s.astype(np.float32)


def exact_pairs(x: np.ndarray, threshold: float, queries: np.ndarray | None = None, progress: bool = False) -> Pairs:
    """Pairs of rows of `x` (unit rows, float32) with inner product >= threshold; with `queries` (row numbers),
    only pairs involving at least one of them."""
    rows = np.arange(len(x)) if queries is None else np.asarray(queries, np.int64)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    found: list[Pairs] = []
    with tqdm(total=len(rows), unit="img", disable=not progress, desc="pairs") as bar:
        for start in range(0, len(rows), RANGE_CHUNK):
            chunk = rows[start : start + RANGE_CHUNK]
            lims, scores, hits = index.range_search(x[chunk], float(threshold))
            best = _closest_per_query(lims, scores, MAX_DEPTH + 1)  # + the item itself
            owners = np.repeat(chunk, np.diff(lims).astype(np.int64))[best]
            found.append(_keep(owners, hits[best].astype(np.int64), scores[best]))
            bar.update(len(chunk))
    return _unique_pairs(_concat(found), len(x))


def _closest_per_query(lims: np.ndarray, scores: np.ndarray, cap: int) -> np.ndarray | slice:
    """Positions of each query's `cap` best results in a range-search answer (all of them when none has more)."""
    counts = np.diff(lims).astype(np.int64)
    if counts.max(initial=0) <= cap:
        return slice(None)
    owner = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((-scores, owner))  # by query, then best first; each query's results stay in its segment
    rank = np.arange(len(order)) - np.repeat(lims[:-1].astype(np.int64), counts)
    return np.sort(order[rank < cap])


def index_pairs(index: VectorIndex, ids: np.ndarray, raw: np.ndarray, x: np.ndarray, threshold: float,
                queries: np.ndarray | None = None, progress: bool = False) -> Pairs:
    """Approximate `exact_pairs` through an ANN `index` over the raw vectors `raw` (item ids `ids`); candidates
    are re-scored with `x` (the calibrated space). Rows whose deepest candidate still reaches the threshold
    are searched again with twice the depth, up to MAX_DEPTH."""
    rows = np.arange(len(x)) if queries is None else np.asarray(queries, np.int64)
    id_rows = IdRows(ids)
    found: list[Pairs] = []
    todo, depth = rows, FIRST_DEPTH
    with tqdm(total=len(rows), unit="img", disable=not progress, desc="pairs (index)") as bar:
        while len(todo):
            deeper = []
            for start in range(0, len(todo), QUERY_CHUNK):
                chunk = todo[start : start + QUERY_CHUNK]
                _, hit_ids = index.search(raw[chunk], depth)
                hits = np.where(hit_ids >= 0, id_rows.rows_of(hit_ids), -1)  # -1: FAISS found fewer
                exact = np.einsum("qkd,qd->qk", x[np.maximum(hits, 0)], x[chunk])
                valid = hits >= 0
                reached = valid & (exact >= threshold)
                owners = np.broadcast_to(chunk[:, None], hits.shape)
                found.append(_keep(owners[reached], hits[reached], exact[reached]))
                full = reached[:, -1] if depth < min(MAX_DEPTH, len(x)) else np.zeros(len(chunk), bool)
                deeper.append(chunk[full])
                bar.update(int((~full).sum()))
            todo, depth = np.concatenate(deeper), depth * 2
    return _unique_pairs(_concat(found), len(x))  # deeper passes find pairs again


def _unique_pairs(pairs: Pairs, n: int) -> Pairs:
    """Each pair once (a search finds a pair from both of its items' sides, or again from a deeper pass)."""
    a, b, s = pairs
    if not len(a):
        return a, b, s
    _, first = np.unique(a * n + b, return_index=True)
    return a[first], b[first], s[first]


def _concat(parts: list[Pairs]) -> Pairs:
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]
