"""The duplicate threshold, calibrated on the user's own images.

A sample of the collection is edited with the library's copy transforms (`offshelf.images.copies`), the
copies are embedded like the store's items, and each copy is compared with its original (a duplicate pair)
and with the rest of the collection (different images). The threshold is the lowest score at which the
pairs above it keep the target precision; the share of copy-original pairs above it estimates the recall.

Both descriptor spaces are tried: `plain` (L2-normalized cosine) and, for collections large enough to fit it,
`pipeline` (the paper's retrieval post-processing, `offshelf.transforms.retrieval_pipeline`, fitted on the
collection); the one with the higher estimated recall at the target precision is used.
"""

from __future__ import annotations

import json
import random
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sklearn.pipeline import Pipeline

from offshelf.errors import OffshelfError
from offshelf.images import ImageDecodeError, decode_image, read_file
from offshelf.images.copies import COPY_FAMILIES
from offshelf.io import atomic_write_bytes
from offshelf.io.bundles import arrays_from_bytes, arrays_to_bytes
from offshelf.transforms import pipeline_from_bundle, pipeline_to_bundle, retrieval_pipeline
from offshelf.vectors import l2_normalize

DEFAULT_TARGET_PRECISION = 0.95
DEFAULT_SAMPLE = 60
CALIBRATION_LEVELS = (1, 2, 3)  # the strengths a calibration copy is drawn from (4 is beyond "near" duplicate)
PIPELINE_MIN_ITEMS = 2000  # below this, PCA-whitening fitted on the collection overfits (measured: worse)
PIPELINE_FIT_SAMPLE = 20_000
NEGATIVE_DEPTH = 32  # nearest other items per copy; counts above any threshold over their scores are exact
DUPLICATE_QUANTILE = 0.05  # an item this close to an original (as close as 95 % of its copies) is its duplicate


@dataclass
class Calibration:
    """A threshold and how it was chosen; `transform` maps store vectors into the space it applies to."""

    threshold: float
    target_precision: float
    precision: float
    recall: float
    space: str  # "plain" or "pipeline"
    n_sample: int
    n_copies: int
    n_negatives: int
    reached: bool
    identity: dict[str, Any]
    spaces: dict[str, dict[str, float]] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(8))  # names this calibration in run state
    pipeline: Pipeline | None = None

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors in the calibrated space, float32, rows of unit norm."""
        x = l2_normalize(vectors)
        if self.pipeline is not None:
            x = np.asarray(self.pipeline.transform(x), dtype=np.float32)
        return np.ascontiguousarray(l2_normalize(x))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the fitted pipeline's arrays)."""
        return {k: v for k, v in asdict(self).items() if k != "pipeline"}

    def save(self, path: Path) -> None:
        """One file, written atomically: the summary and the pipeline's arrays in an .npz (no pickle)."""
        meta, arrays = self.to_dict(), {}
        if self.pipeline is not None:
            meta["steps"], arrays = pipeline_to_bundle(self.pipeline)
        arrays["meta"] = np.array(json.dumps(meta))
        atomic_write_bytes(path, arrays_to_bytes(arrays))

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            arrays = arrays_from_bytes(path.read_bytes())
            meta = json.loads(str(arrays.pop("meta")))
            steps = meta.pop("steps", None)
            pipeline = pipeline_from_bundle(steps, arrays) if steps else None
            return cls(**meta, pipeline=pipeline)
        except (ValueError, KeyError, TypeError) as exc:
            raise OffshelfError(f"unreadable dedup calibration {path}: {exc}; delete it to calibrate again") from None


def copy_edits(n_sample: int, seed: int = 0) -> list[list[tuple[str, Any]]]:
    """For each sampled item, one edit per copy family at a seeded strength in CALIBRATION_LEVELS."""
    rng = random.Random(seed)
    return [[(f"{family}-{level}", edits[level - 1]) for family, edits in COPY_FAMILIES.items()
             for level in [rng.choice(CALIBRATION_LEVELS)]] for _ in range(n_sample)]


def make_copies(paths: list[str], embed_images: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embed edited copies of `paths`: `(vectors (m, dim), original index (m,), edit keys)`. Unreadable files
    are skipped (they are not in the store either)."""
    vectors, owners, keys = [], [], []
    for i, (path, edits) in enumerate(zip(paths, copy_edits(len(paths), seed))):
        try:
            image = decode_image(read_file(path).data)
        except (ImageDecodeError, OSError):
            continue
        copies = [edit.apply(image, f"{Path(path).name}/{key}") for key, edit in edits]  # same pixels wherever the folder is
        vectors.append(embed_images(copies))
        owners += [i] * len(copies)
        keys += [key for key, _ in edits]
    if not vectors:
        raise OffshelfError("none of the sampled images could be read to calibrate the duplicate threshold")
    return np.concatenate(vectors), np.asarray(owners), keys


def precision_threshold(positives: np.ndarray, negatives: np.ndarray, n_negative: int, observed: np.ndarray,
                        n_observed: int, target: float) -> tuple[float, float, float, bool]:
    """`(threshold, precision, recall, reached)` for `target` precision, estimated as an empirical false
    discovery rate: of the `observed` pair scores of the collection (a sample of `n_observed` pairs), about
    `n_observed * FPR(t)` are false, where FPR(t) is the share of the `n_negative` different-image pairs whose
    score (the high ones are `negatives`) reaches t. Recall is the share of copy pairs (`positives`) above t.
    The threshold is the lowest at which the estimated precision holds there and at every higher score; if
    none does, the one of highest precision."""
    if not len(positives):
        raise OffshelfError("no copy pairs to calibrate on")
    candidates = np.unique(positives)[::-1]  # descending
    above = lambda sorted_scores, t: len(sorted_scores) - np.searchsorted(sorted_scores, t, side="left")  # noqa: E731
    tp = above(np.sort(positives), candidates)
    false = above(np.sort(negatives), candidates) / max(n_negative, 1) * n_observed
    precision = 1.0 - false / np.maximum(above(np.sort(observed), candidates), 1)
    ok = np.minimum.accumulate(precision) >= target
    i = int(np.flatnonzero(ok)[-1]) if ok.any() else int(np.flatnonzero(precision == precision.max())[-1])
    return float(candidates[i]), float(max(precision[i], 0.0)), float(tp[i] / len(positives)), bool(ok.any())


def score_space(store_x: np.ndarray, copies_x: np.ndarray, owners: np.ndarray, sample_rows: np.ndarray,
                target: float) -> dict[str, Any]:
    """Calibrate in one space: positives (copy vs its original) and negatives (copy vs other items)."""
    positives = np.einsum("ij,ij->i", copies_x, store_x[sample_rows[owners]])
    index = faiss.IndexFlatIP(store_x.shape[1])
    index.add(store_x)
    depth = min(len(store_x), NEGATIVE_DEPTH + 1)
    scores, rows = index.search(copies_x, depth)
    originals = store_x[sample_rows[owners]]
    to_original = np.einsum("qkd,qd->qk", store_x[np.maximum(rows, 0)], originals)
    # the collection's own duplicates of the original are not "different images"
    duplicate_bar = float(np.quantile(positives, DUPLICATE_QUANTILE))
    different = (rows >= 0) & (rows != sample_rows[owners][:, None]) & (to_original < duplicate_bar)
    negatives = scores[different]
    own_scores, own_rows = index.search(store_x[sample_rows], depth)  # the sampled items' own pairs
    observed = own_scores[(own_rows >= 0) & (own_rows != sample_rows[:, None])]
    n_negative = len(copies_x) * (len(store_x) - 1)
    threshold, precision, recall, reached = precision_threshold(
        positives, negatives, n_negative, observed, len(sample_rows) * (len(store_x) - 1), target)
    return {"threshold": threshold, "precision": precision, "recall": recall, "reached": reached,
            "n_negatives": n_negative}


def calibrate(vectors: np.ndarray, paths: list[str], embed_images: Any, identity: dict[str, Any], *,
              target_precision: float = DEFAULT_TARGET_PRECISION, sample: int = DEFAULT_SAMPLE,
              seed: int = 0) -> Calibration:
    """Choose the threshold (and the space) for `target_precision` on copies of a sample of the collection.

    `vectors` and `paths` are the collection's stored items; `embed_images` turns PIL images into vectors
    of the same kind (an `Embedder.embed_images`).
    """
    if not 0 < target_precision < 1:
        raise OffshelfError(f"target precision must be between 0 and 1, got {target_precision}")
    n = len(vectors)
    if n < 2:
        raise OffshelfError(f"need at least 2 images to calibrate a duplicate threshold, got {n}")
    rows = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    copies, owners, _ = make_copies([paths[r] for r in rows], embed_images, seed)
    candidates: dict[str, Pipeline | None] = {"plain": None}
    if n >= PIPELINE_MIN_ITEMS:
        fit_rows = np.random.default_rng(seed).choice(n, min(n, PIPELINE_FIT_SAMPLE), replace=False)
        candidates["pipeline"] = retrieval_pipeline(min(256, n // 8)).fit(l2_normalize(vectors[fit_rows]))
    results = {}
    for name, pipeline in candidates.items():
        space = Calibration(0.0, target_precision, 0.0, 0.0, name, 0, 0, 0, False, identity, pipeline=pipeline)
        results[name] = (space, score_space(space.transform(vectors), space.transform(copies), owners, rows,
                                            target_precision))
    best = max(results, key=lambda k: (results[k][1]["reached"], results[k][1]["recall"], k == "plain"))
    chosen, report = results[best]
    chosen.threshold, chosen.precision, chosen.recall = report["threshold"], report["precision"], report["recall"]
    chosen.reached, chosen.n_negatives = report["reached"], report["n_negatives"]
    chosen.n_sample, chosen.n_copies = len(np.unique(owners)), len(copies)
    chosen.spaces = {k: {m: r[m] for m in ("threshold", "precision", "recall")} for k, (_, r) in results.items()}
    return chosen
