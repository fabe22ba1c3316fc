"""Scoring helpers of the retrieval benchmark: ranks of the relevant item, mAP / recall per query family,
class-level mAP, the fitted post-processing, the hand-crafted baselines and cached window descriptors.

Copy detection has exactly one relevant database item per query (its original), so a query's AP is
1 / rank of the original (`offshelf.metrics.ranked_average_precision` with one relevant id; 0 if the
original is not in the returned list). For exhaustive (dense) scoring the rank counts every database item
scoring at least as high as the original (ties count against the query); for indexes the rank is the
original's position in the returned list (`LIST_DEPTH` items).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from benchmarks.harness.stores import bench_home
from offshelf.baselines import color_histogram, raw_pixels
from offshelf.images import ImageDecodeError, decode_image
from offshelf.metrics import mean_average_precision_ranked
from offshelf.transforms import retrieval_pipeline
from offshelf.vectors import l2_normalize

LIST_DEPTH = 1000
PIPELINE_DIM = 512
CACHE_CHUNK = 500


# -- ranks and metrics ---------------------------------------------------------------------------

def dense_ranks(queries: np.ndarray, database: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """Rank (1 = first) of each query's relevant row of `database` by inner product (ties count against)."""
    ranks = np.empty(len(queries), np.int64)
    for start in range(0, len(queries), 256):
        scores = queries[start : start + 256] @ database.T
        truth = scores[np.arange(len(scores)), true_index[start : start + 256]]
        ranks[start : start + 256] = (scores >= truth[:, None]).sum(axis=1)
    return ranks


def list_ranks(found: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """Rank of each query's relevant id in its returned list `found` (nq, depth); inf where absent."""
    hit = found == np.asarray(true_index)[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1.0, np.inf)


def _block(ranks: np.ndarray) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    return {
        "mAP": float(np.mean(1.0 / ranks)),
        "recall_at_1": float(np.mean(ranks <= 1)),
        "recall_at_10": float(np.mean(ranks <= 10)),
        "queries": int(len(ranks)),
    }


def summarize_ranks(ranks: np.ndarray, families: Sequence[str], strengths: Sequence[str]) -> dict:
    """Overall and per-family (and per-strength) mAP / recall@1 / recall@10 from the ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    families, strengths = np.asarray(families), np.asarray(strengths)
    out = _block(ranks)
    out["families"] = {}
    for family in dict.fromkeys(families.tolist()):
        mask = families == family
        block = _block(ranks[mask])
        block["strengths"] = {s: _block(ranks[mask & (strengths == s)]) for s in dict.fromkeys(strengths[mask].tolist())}
        out["families"][family] = block
    return out


def class_retrieval_scores(x: np.ndarray, labels: Sequence[str], gallery: np.ndarray | None = None
                           ) -> dict[str, float]:
    """Each row queries all the others by inner product; relevant = same label. mAP and precision@1/@10.

    `gallery` (default `x`): the same images as the database side, e.g. as another model embedded them
    (row i of `gallery` is image i; a query never retrieves its own image)."""
    labels = np.asarray(labels)
    n = len(x)
    sims = x @ (x if gallery is None else gallery).T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, : n - 1]  # the query itself (last) left out
    relevant = [set(np.flatnonzero((labels == labels[q]) & (np.arange(n) != q)).tolist()) for q in range(n)]
    mAP, _ = mean_average_precision_ranked(relevant, order)
    same = labels[order] == labels[:, None]
    return {"mAP": float(mAP), "precision_at_1": float(same[:, 0].mean()),
            "precision_at_10": float(same[:, :10].mean()), "queries": int(n)}


# -- post-processing -----------------------------------------------------------------------------

def pipeline_dim(n_fit: int, dim: int, wanted: int = PIPELINE_DIM) -> int:
    """The PCA dimension: `wanted`, but below the number of fitting vectors and the input dimension, and a
    multiple of 8 (for PQ sub-vectors and binary codes) when that is possible."""
    d = min(wanted, n_fit - 1, dim)
    return d // 8 * 8 if d >= 8 else max(1, d)


def fit_pipeline(fit_on: np.ndarray, d: int) -> Pipeline:
    """The paper's L2 -> PCA(d)-whitening -> L2 -> signed sqrt -> L2, fitted on `fit_on`."""
    return retrieval_pipeline(d).fit(np.asarray(fit_on, dtype=np.float32))


def apply(pipeline: Pipeline, x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pipeline.transform(np.asarray(x, dtype=np.float32)), dtype=np.float32)


def hellinger(x: np.ndarray) -> np.ndarray:
    """sqrt then L2: histograms compared with the Hellinger kernel."""
    return l2_normalize(np.sqrt(np.maximum(x, 0)))


# -- baselines: one decode per image for both hand-crafted features ------------------------------

def _baseline_row(path: Path) -> tuple[np.ndarray, np.ndarray] | str:
    try:
        image = decode_image(Path(path).read_bytes(), min_size=color_histogram.size)
    except (OSError, ImageDecodeError) as exc:
        return getattr(exc, "reason", str(exc))
    return raw_pixels.vector(image), color_histogram.vector(image)


def baseline_features(paths: Sequence[Path], workers: int = 2) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """`(raw_pixels, color_histogram, failed positions)` of the files (as `offshelf.baselines`; each file
    decoded once for both). Failed rows are zeros."""
    with ThreadPoolExecutor(workers) as pool:
        rows = list(pool.map(_baseline_row, paths))
    failed = [i for i, row in enumerate(rows) if isinstance(row, str)]
    raw = np.zeros((len(paths), 3 * raw_pixels.size**2), np.float32)
    hist = np.zeros((len(paths), 8**3), np.float32)
    for i, row in enumerate(rows):
        if not isinstance(row, str):
            raw[i], hist[i] = row
    return raw, hist, failed


# -- cached window descriptors ---------------------------------------------------------------------

def cached_windows(embedder, paths: Sequence[Path], levels: int, progress: bool,  # noqa: ANN001
                   first_level: int = 1) -> np.ndarray:
    """`offshelf.search.spatial.window_descriptors` of `paths`, computed in chunks of CACHE_CHUNK images, each cached
    under `bench_home()/spatial-windows/` by the model description, levels and the files' paths, sizes and
    mtimes (a killed run resumes at the first missing chunk)."""
    from offshelf.search.spatial import window_descriptors

    folder = bench_home() / "spatial-windows"
    folder.mkdir(parents=True, exist_ok=True)
    identity = json.dumps(embedder.config.identity(), sort_keys=True)
    parts = []
    for start in range(0, len(paths), CACHE_CHUNK):
        chunk = [Path(p) for p in paths[start : start + CACHE_CHUNK]]
        key = hashlib.sha256(json.dumps(
            [identity, levels, first_level, [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in chunk]]).encode()
        ).hexdigest()[:32]
        file = folder / f"{key}.npy"
        if file.exists():
            try:
                parts.append(np.load(file))
                continue
            except (OSError, ValueError):
                pass
        windows = window_descriptors(embedder, chunk, levels=levels, first_level=first_level, progress=progress)
        tmp = folder / f".tmp-{key}.npy"
        np.save(tmp, windows)
        tmp.replace(file)
        parts.append(windows)
    return np.concatenate(parts) if parts else np.empty((0, 0, 0), np.float32)
