"""The resumable `embed` run: find files, skip what the store holds, read ahead in threads, embed, commit.

The reader decodes in a thread pool while full batches run in ONNX Runtime in a second pool (by default one
intra-op thread per batch and a batch per core: `inference_plan`), so decoding and inference overlap on the
machine's cores. Results are committed to the store shard by shard; see
`offshelf.store` for why a killed run resumes without duplicates or gaps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from offshelf.errors import OffshelfError
from offshelf.extract.embedder import Embedder, make_config
from offshelf.extract.reader import Reader
from offshelf.extract.summary import EmbedSummary
from offshelf.extract.writer import Committer
from offshelf.images import DEFAULT_MAX_PIXELS, VIEW_COUNTS, find_images
from offshelf.models import (
    DEFAULT_MODEL,
    ModelSpec,
    calibration_images,
    calibration_sha256,
    check_precision,
    get_model_spec,
)
from offshelf.models.runtime import THREADS_ENV, available_cores, resolve_threads
from offshelf.store import MANIFEST, UPGRADE_MARKER, FeatureStore, FileState, StoreWriter, resolve_store

DEFAULT_BATCH_SIZE = 32
MAX_BATCHES_AT_ONCE = 4  # batches in ONNX Runtime at once, whatever the cores (see `inference_plan`)
DEFAULT_SHARD_SIZE = 1024


def embed(
    paths: Sequence[str | Path],
    store: str | Path,
    *,
    model: str | ModelSpec | None = None,
    layer: str | None = None,
    pool: str | None = None,
    augment: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    threads: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    readd: bool = False,
    precision: str | None = None,
    calibrate_on: str | Path | None = None,
) -> EmbedSummary:
    """Embed every image under `paths` (folders, files, globs) into the store at `store`.

    Files already in the store with the same bytes are skipped; changed files are re-embedded (the new
    row replaces the old); files that cannot be decoded are recorded in the store's errors table. Files
    removed from the store (`offshelf remove`) stay out, counted as `removed`, unless `readd`.
    An existing store (after an upgrade switch: the store that replaced it) keeps its features: `model`,
    `layer`, `pool`, `augment` and `precision` left as None take its values, and given ones must agree with them; a
    new store takes the defaults. `precision="int8"` embeds with the int8 graph (`offshelf.models.quantize`),
    calibrated on the shipped photos or on the images under `calibrate_on`; a store never mixes precisions.
    `workers` decoding threads (default: the number of cores) overlap with inference; `threads` sets
    ONNX Runtime's intra-op threads per batch, and as many batches as fit in the cores run at once (default: one
    thread per batch, a batch per core; see `inference_plan`). `batch_size` counts model inputs: with
    `augment` each image is several views, so a batch holds `batch_size // views` images (at least one), which
    keeps memory the same whatever the augmentation.
    """
    check_sizes(batch_size, shard_size)
    with embed_session(paths, store, model=model, layer=layer, pool=pool, augment=augment, readd=readd,
                       precision=precision, calibrate_on=calibrate_on) as run:
        if run.todo:
            threads, streams = inference_plan(threads)
            embedder = Embedder(run.store.config, threads=threads, origin=run.store.root / MANIFEST,
                                calibrate_on=calibrate_on)
            _run(run.todo, embedder, run.writer, run.summary, images_per_batch(batch_size, run.store.config.augment),
                 workers, shard_size, max_pixels, progress, streams)
    return run.summary


def check_sizes(batch_size: int, shard_size: int) -> None:
    if batch_size < 1 or shard_size < 1:
        raise OffshelfError("batch size and shard size must be at least 1")


def images_per_batch(batch_size: int, augment: str) -> int:
    """Images per model call when `batch_size` counts model inputs (views): at least one."""
    return max(1, batch_size // VIEW_COUNTS[augment])


@dataclass
class EmbedSession:
    """An `embed` run between planning and committing, whatever engine computes the vectors: the store, its
    writer (held for the whole run), the files to embed with what the store knew of them, and the summary."""

    store: FeatureStore
    writer: StoreWriter
    todo: list[tuple[str, FileState | None]]
    summary: EmbedSummary


@contextmanager
def embed_session(paths: Sequence[str | Path], store: str | Path, *, model: str | ModelSpec | None = None,
                  layer: str | None = None, pool: str | None = None, augment: str | None = None,
                  readd: bool = False, precision: str | None = None,
                  calibrate_on: str | Path | None = None) -> Iterator[EmbedSession]:
    """Find the files, open (or create) the store, take its writer and list what is not committed yet (the
    resume rule); after the body, bring the store's index up to date and time the run."""
    started = time.perf_counter()
    files = [str(p) for p in find_images(paths)]
    feature_store = _open_store(Path(store), model, layer, pool, augment or None, precision, calibrate_on)
    summary = EmbedSummary(store=str(feature_store.root))
    with feature_store.writer() as writer:
        known = feature_store.known_files()
        removed = set() if readd else set(feature_store.removed().column("path").to_pylist())
        todo: list[tuple[str, FileState | None]] = []
        for path in files:
            previous = known.get(path)
            if path in removed:
                summary.removed += 1
            elif previous is not None and _same_stat(path, previous):
                summary.skipped += 1
            else:
                todo.append((path, previous))
        yield EmbedSession(feature_store, writer, todo, summary)
    from offshelf.index import update_store_index  # FAISS only when a store has an index

    # also when nothing was embedded: a killed run may have committed shards the index does not cover yet
    summary.index = update_store_index(feature_store.root)
    summary.seconds = time.perf_counter() - started


def _open_store(root: Path, model: str | ModelSpec | None, layer: str | None, pool: str | None,
                augment: str | None, precision: str | None, calibrate_on: str | Path | None) -> FeatureStore:
    """The store to embed into (resolved through upgrade markers), created with the defaults if absent."""
    calibration = None
    if (root / MANIFEST).is_file() or (root / UPGRADE_MARKER).is_file():
        existing = resolve_store(root)
        if model is layer is pool is augment is precision is calibrate_on is None:
            return existing
        config, root = existing.config, existing.root
        if precision in (None, config.precision) and calibrate_on is None:
            precision, calibration = config.precision, config.calibration
        augment = augment or config.augment
        if model is None or model == config.model:  # the store's model: its layer and pooling unless given
            if layer is None:
                layer, pool = config.layer, config.pool if pool is None else pool
            model = config.model
    spec = get_model_spec(model or DEFAULT_MODEL) if not isinstance(model, ModelSpec) else model
    precision = check_precision(precision or "fp32")
    if calibrate_on is not None and precision != "int8":
        raise OffshelfError("--calibrate-on calibrates an int8 graph; it needs --precision int8")
    if calibration is None:
        calibration = calibration_sha256(calibration_images(calibrate_on)) if precision == "int8" else ""
    return FeatureStore.open_or_create(root, make_config(spec, layer, pool, augment or "none", precision, calibration))


def _same_stat(path: str, known: FileState) -> bool:
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return stat.st_size == known.size and stat.st_mtime_ns == known.mtime_ns


def inference_plan(threads: int | None) -> tuple[int, int]:
    """ONNX Runtime intra-op threads per batch and batches run at once: `threads` (or `$OFFSHELF_ORT_THREADS`)
    threads and as many batches as fit in the cores (at most MAX_BATCHES_AT_ONCE), else a batch per core up to
    MAX_BATCHES_AT_ONCE, the cores shared out among them (one thread each on up to that many cores).

    One thread per batch wastes nothing on synchronisation: a multi-threaded run's threads wait for each other
    at every operator, and while a decoding thread holds a core the waiting one spins (docs/pipeline.md). The cap
    bounds memory: each running batch holds its decoded images and ONNX Runtime's working buffers.
    """
    cores = available_cores()
    if threads is None and not os.environ.get(THREADS_ENV):
        streams = min(cores, MAX_BATCHES_AT_ONCE)
        return cores // streams, streams
    count = resolve_threads(threads)
    return count, max(1, min(cores // count, MAX_BATCHES_AT_ONCE))


def _run(todo: list[tuple[str, FileState | None]], embedder: Embedder, writer: StoreWriter,
         summary: EmbedSummary, batch_size: int, workers: int | None, shard_size: int, max_pixels: int,
         progress: bool, streams: int) -> None:
    """The decode/infer/commit loop of `embed`: `workers` threads decode, `streams` batches run in ONNX Runtime at
    once; what was embedded is committed even if interrupted."""
    n_workers = workers or available_cores()
    window = batch_size * (streams + 1) + n_workers
    with tqdm(total=len(todo), unit="img", disable=not progress, dynamic_ncols=True, desc="embed") as bar, \
            ThreadPoolExecutor(streams, thread_name_prefix="offshelf-infer") as inference:
        committer = Committer(embedder, writer, summary, bar, batch_size, shard_size, inference, streams)
        try:
            with ThreadPoolExecutor(n_workers, thread_name_prefix="offshelf-decode") as pool:
                reader = Reader(embedder.size, embedder.augment, max_pixels, embedder.resize, embedder.resample)
                for outcome in reader.ordered(pool, todo, window):
                    committer.add(outcome)
                committer.flush_batch()
        finally:
            try:
                committer.drain()
            finally:
                committer.commit()
