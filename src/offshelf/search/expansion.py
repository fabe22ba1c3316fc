"""Average query expansion (AQE) and database-side augmentation (DBA) for retrieval.

AQE (Chum et al. 2007, in its descriptor-average form): a query is replaced by the mean of itself and its
`n` best database matches, then searched again. DBA (Arandjelovic & Zisserman 2012, Gordo et al. 2017):
every database vector is replaced by the mean of itself and its `k - 1` nearest database neighbours, so
that near-duplicates pull each other closer. Both work on L2-normalized vectors and return L2-normalized
vectors; cosine similarity stays the score.
"""

from __future__ import annotations

import faiss
import numpy as np

from offshelf.vectors import l2_normalize


def _neighbours(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    return index.search(queries, min(k, len(database)))[1]


def average_query_expansion(queries: np.ndarray, database: np.ndarray, n: int) -> np.ndarray:
    """Each query averaged with its `n` nearest database vectors (both sets L2-normalized first)."""
    queries, database = l2_normalize(queries), l2_normalize(database)
    if n < 1 or len(database) == 0:
        return queries
    top = _neighbours(database, queries, n)
    return l2_normalize(queries + database[top].sum(axis=1))


def database_side_augmentation(database: np.ndarray, k: int) -> np.ndarray:
    """Each database vector averaged with its `k - 1` nearest other database vectors (k >= 1)."""
    database = l2_normalize(database)
    if k <= 1 or len(database) == 0:
        return database
    top = _neighbours(database, database, k)  # includes the vector itself (similarity 1)
    return l2_normalize(database[top].sum(axis=1))
