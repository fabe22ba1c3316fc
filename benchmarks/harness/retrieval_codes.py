"""Bytes per vector against copy-detection mAP: the same descriptors stored as float32, float16, fewer PCA
dimensions, product-quantization codes and binary (ITQ) codes, with and without float re-ranking.

Every quantizer (PCA, PQ codebooks, IVF centroids, ITQ rotation) is trained on the distractors' vectors
only; the database (originals + distractors) is encoded with it and the queries search it.

Two byte counts per row: `code_bytes`, what one database vector costs (4 d for float32, m * nbits / 8
for PQ, nbits / 8 for binary codes) — the number the goal "32x less memory" is about — and, for rows
backed by a FAISS/offshelf index, `index_bytes_per_vector`, the measured serialized index over the
number of vectors (codebooks, coarse centroids and the 8-byte ids of inverted lists included, which
dominate at this small database size). Re-ranking reads the float32 vectors of the `RERANK` best
candidates of each query; they are not counted in `code_bytes` (they can live on disk or in a second
tier) but `with_rerank_floats_bytes` shows the cost if they were kept in memory too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import faiss
import numpy as np

from benchmarks.harness.retrieval_eval import LIST_DEPTH, apply, dense_ranks, fit_pipeline, list_ranks
from offshelf.index import BinaryIndex, IVFPQIndex

RERANK = 100
PQ_SUBQUANTIZERS = (64, 32, 16, 8)
PCA_DIMS = (256, 128, 64, 32)
IVFPQ_M = 32


def _rerank(found: np.ndarray, queries: np.ndarray, database: np.ndarray, depth: int) -> np.ndarray:
    """Re-score the first `depth` ids of each list with float vectors (exact inner product) and re-sort
    them; the rest of the list keeps its order."""
    out = found.copy()
    for q in range(len(found)):
        head = found[q, :depth]
        head = head[head >= 0]
        order = np.argsort(-(database[head] @ queries[q]), kind="stable")
        out[q, : len(head)] = head[order]
    return out


def bytes_vs_map(
    distractors: np.ndarray,
    database: np.ndarray,
    queries: np.ndarray,
    true_index: np.ndarray,
    d0: int,
    summarize: Callable[[np.ndarray], dict],
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Rows of (bytes, mAP) for raw GAP vectors (`distractors`, `database`, `queries` before any
    post-processing). `d0` is the full pipeline dimension; `summarize(ranks)` gives the metrics."""
    rows: list[dict] = []
    depth = min(LIST_DEPTH, len(database))
    n_fit = len(distractors)

    def add(name: str, kind: str, code_bytes: float, ranks: np.ndarray, seconds: float, **extra: object) -> None:
        metrics = summarize(ranks)
        rows.append({"name": name, "kind": kind, "code_bytes": float(code_bytes), "mAP": metrics["mAP"],
                     "recall_at_1": metrics["recall_at_1"], "recall_at_10": metrics["recall_at_10"],
                     "families": {f: {"mAP": b["mAP"], "recall_at_1": b["recall_at_1"]}
                                  for f, b in metrics["families"].items()},
                     "seconds": round(seconds, 3), **extra})
        log(f"  bytes-vs-mAP {name}: {code_bytes:g} B, mAP {metrics['mAP']:.3f}")

    start = time.perf_counter()
    raw_db, raw_q = database / np.linalg.norm(database, axis=1, keepdims=True), queries / np.linalg.norm(
        queries, axis=1, keepdims=True)
    add(f"GAP float32 {database.shape[1]}-d (no post-processing)", "float", 4 * database.shape[1],
        dense_ranks(raw_q, raw_db, true_index), time.perf_counter() - start, dim=database.shape[1])

    start = time.perf_counter()
    pipeline = fit_pipeline(distractors, d0)
    fit_p, db_p, q_p = apply(pipeline, distractors), apply(pipeline, database), apply(pipeline, queries)
    float_ranks = dense_ranks(q_p, db_p, true_index)
    add(f"pipeline float32 {d0}-d", "float", 4 * d0, float_ranks, time.perf_counter() - start, dim=d0)
    start = time.perf_counter()
    db16, q16 = db_p.astype(np.float16).astype(np.float32), q_p.astype(np.float16).astype(np.float32)
    add(f"pipeline float16 {d0}-d", "float16", 2 * d0, dense_ranks(q16, db16, true_index),
        time.perf_counter() - start, dim=d0)

    for d in PCA_DIMS:
        if d >= d0:
            continue
        start = time.perf_counter()
        small = fit_pipeline(distractors, d)
        add(f"pipeline float32 PCA {d}-d", "pca", 4 * d,
            dense_ranks(apply(small, queries), apply(small, database), true_index), time.perf_counter() - start, dim=d)

    # product quantization (plain PQ: no coarse quantizer, exhaustive over the codes)
    nbits = 8 if n_fit >= 256 else max(1, int(math.log2(max(2, n_fit))))
    for m in PQ_SUBQUANTIZERS:
        if m > d0 or d0 % m:
            continue
        start = time.perf_counter()
        pq = faiss.IndexPQ(d0, m, nbits, faiss.METRIC_INNER_PRODUCT)
        pq.pq.cp.min_points_per_centroid = 1  # FAISS warns below 39 points per centroid; mAP is what counts
        pq.train(fit_p)
        pq.add(db_p)
        _, found = pq.search(q_p, depth)
        add(f"PQ m={m} x {nbits} bits", "pq", m * nbits / 8, list_ranks(found, true_index),
            time.perf_counter() - start, index_bytes_per_vector=faiss.serialize_index(pq).nbytes / len(db_p))

    # IVF-PQ through offshelf's index (quantizers trained on the distractors)
    if n_fit >= 256 and d0 % IVFPQ_M == 0:
        start = time.perf_counter()
        ivf = IVFPQIndex(d0, m=IVFPQ_M).train(fit_p)
        ivf.add(db_p, np.arange(len(db_p)))
        _, found = ivf.search(q_p, depth)
        add(f"IVF-PQ m={IVFPQ_M} (nlist={ivf.params['nlist']}, nprobe={ivf.params['nprobe']})", "ivfpq", IVFPQ_M,
            list_ranks(found, true_index), time.perf_counter() - start,
            index_bytes_per_vector=ivf.bytes_per_vector)

    # binary ITQ codes, Hamming ranking, then optionally re-ranked with the float32 vectors
    # nbits = d0 is the 32x point (one bit per float32 dimension), then 2x and 4x fewer bits
    for bits in dict.fromkeys(b // 8 * 8 for b in (d0, d0 // 2, d0 // 4)):
        if not 8 <= bits <= min(d0, n_fit):
            continue
        start = time.perf_counter()
        binary = BinaryIndex(d0, nbits=bits).train(fit_p)
        binary.add(db_p, np.arange(len(db_p)))
        _, found = binary.search(q_p, depth)
        hamming_seconds = time.perf_counter() - start
        ratio = 4 * d0 / (bits / 8)
        add(f"binary ITQ {bits} bits ({ratio:g}x smaller)", "binary", bits / 8, list_ranks(found, true_index),
            hamming_seconds, index_bytes_per_vector=binary.bytes_per_vector, compression=ratio)
        start = time.perf_counter()
        reranked = _rerank(found, q_p, db_p, RERANK)
        add(f"binary ITQ {bits} bits + float re-rank top {RERANK}", "binary+rerank", bits / 8,
            list_ranks(reranked, true_index), hamming_seconds + time.perf_counter() - start,
            index_bytes_per_vector=binary.bytes_per_vector, compression=ratio,
            with_rerank_floats_bytes=bits / 8 + 4 * d0)

    float_map = rows[1]["mAP"]
    for row in rows:
        row["fraction_of_float_mAP"] = row["mAP"] / float_map if float_map > 0 else float("nan")
    goal_rows = [r for r in rows if r["kind"] == "binary+rerank" and r.get("compression", 0) >= 32]
    goal = None
    if goal_rows:
        best = goal_rows[0]
        goal = {
            "statement": "binary codes at 32x less memory than the float32 pipeline vectors keep >= 90% of "
                         "its copy-detection mAP after re-ranking",
            "float_row": rows[1]["name"], "float_mAP": float_map, "binary_row": best["name"],
            "binary_mAP": best["mAP"], "fraction": best["fraction_of_float_mAP"],
            "met": bool(best["fraction_of_float_mAP"] >= 0.9),
        }
    return {"pipeline_dim": d0, "rerank_depth": RERANK, "list_depth": depth, "rows": rows, "goal": goal}
