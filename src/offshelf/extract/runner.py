"""The resumable `embed` run: find files, skip what the store holds, read ahead in threads, embed, commit.

The reader decodes in a thread pool while the calling thread runs ONNX Runtime on full batches, so decoding
and inference overlap on the machine's cores. Results are committed to the store shard by shard; see
`offshelf.store` for why a killed run resumes without duplicates or gaps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from offshelf.errors import OffshelfError
from offshelf.extract.embedder import Embedder, make_config
from offshelf.extract.reader import Reader
from offshelf.extract.summary import EmbedSummary
from offshelf.extract.writer import Committer
from offshelf.images import DEFAULT_MAX_PIXELS, VIEW_COUNTS, find_images
from offshelf.models import DEFAULT_MODEL, ModelSpec, get_model_spec
from offshelf.models.runtime import available_cores
from offshelf.store import FeatureStore, FileState, StoreWriter

DEFAULT_BATCH_SIZE = 32
DEFAULT_SHARD_SIZE = 1024


def embed(
    paths: Sequence[str | Path],
    store: str | Path,
    *,
    model: str | ModelSpec = DEFAULT_MODEL,
    layer: str | None = None,
    pool: str | None = None,
    augment: str = "none",
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    threads: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> EmbedSummary:
    """Embed every image under `paths` (folders, files, globs) into the store at `store`.

    Files already in the store with the same bytes are skipped; changed files are re-embedded (the new
    row replaces the old); files that cannot be decoded are recorded in the store's errors table.
    `workers` decoding threads (default: the number of cores) overlap with inference; `threads` sets
    ONNX Runtime's intra-op threads (default: the number of cores). `batch_size` counts model inputs: with
    `augment` each image is several views, so a batch holds `batch_size // views` images (at least one), which
    keeps memory the same whatever the augmentation.
    """
    if batch_size < 1 or shard_size < 1:
        raise OffshelfError("batch size and shard size must be at least 1")
    started = time.perf_counter()
    files = [str(p) for p in find_images(paths)]
    spec = get_model_spec(model) if isinstance(model, str) else model
    feature_store = FeatureStore.open_or_create(store, make_config(spec, layer, pool, augment))
    summary = EmbedSummary(store=str(feature_store.root))
    with feature_store.writer() as writer:
        known = feature_store.known_files()
        todo: list[tuple[str, FileState | None]] = []
        for path in files:
            previous = known.get(path)
            if previous is not None and _same_stat(path, previous):
                summary.skipped += 1
            else:
                todo.append((path, previous))
        if todo:
            embedder = Embedder(feature_store.config, threads=threads)
            images_per_batch = max(1, batch_size // VIEW_COUNTS[augment])
            _run(todo, embedder, writer, summary, images_per_batch, workers, shard_size, max_pixels, progress)
    if summary.embedded:
        from offshelf.index import update_store_index  # FAISS only when a store has an index

        summary.index = update_store_index(feature_store.root)
    summary.seconds = time.perf_counter() - started
    return summary


def _same_stat(path: str, known: FileState) -> bool:
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return stat.st_size == known.size and stat.st_mtime_ns == known.mtime_ns


def _run(todo: list[tuple[str, FileState | None]], embedder: Embedder, writer: StoreWriter,
         summary: EmbedSummary, batch_size: int, workers: int | None, shard_size: int, max_pixels: int,
         progress: bool) -> None:
    """The decode/infer/commit loop of `embed`; what was embedded is committed even if interrupted."""
    n_workers = workers or available_cores()
    window = batch_size * 2 + n_workers
    with tqdm(total=len(todo), unit="img", disable=not progress, dynamic_ncols=True, desc="embed") as bar:
        committer = Committer(embedder, writer, summary, bar, batch_size, shard_size)
        try:
            with ThreadPoolExecutor(n_workers, thread_name_prefix="offshelf-decode") as pool:
                reader = Reader(embedder.size, embedder.augment, max_pixels, embedder.resize, embedder.resample)
                for outcome in reader.ordered(pool, todo, window):
                    committer.add(outcome)
                committer.flush_batch()
        finally:
            committer.commit()
