"""Images to descriptors: the `Embedder` (one model, layer, pooling, views) and the resumable `embed` run.

The run reads and decodes files in a thread pool (Pillow releases the GIL while it decodes and resizes)
while the calling thread runs ONNX Runtime on full batches, so decoding and inference overlap on the
machine's cores. Results are committed to the store shard by shard; see `store` for why a killed run
resumes without duplicates or gaps.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .errors import OffshelfError
from .images import (
    DEFAULT_MAX_PIXELS,
    VIEW_COUNTS,
    Augment,
    ImageDecodeError,
    decode_image,
    find_images,
    make_views,
    views_min_size,
)
from .models import DEFAULT_MODEL, ModelSpec, get_model_spec, load_backbone
from .models.runtime import available_cores
from .pooling import Pooling
from .store import FeatureStore, FileState, StoreConfig, StoreWriter

DEFAULT_BATCH_SIZE = 32
DEFAULT_SHARD_SIZE = 1024


def make_config(spec: ModelSpec, layer: str | None = None, pool: str | None = None, augment: str = "none") -> StoreConfig:
    """Validate a model/layer/pooling/views choice and describe the features it makes."""
    chosen = spec.layer(layer)
    if augment not in VIEW_COUNTS:
        raise OffshelfError(f"unknown augment {augment!r}; choose from {', '.join(VIEW_COUNTS)}")
    if chosen.kind == "vector":
        if pool not in (None, "none"):
            raise OffshelfError(f"layer {chosen.name!r} of {spec.name} is already a vector; pooling does not apply")
        pool_name = "none"
    else:
        try:
            pool_name = Pooling.parse(pool or "gap").name
        except ValueError as exc:
            raise OffshelfError(str(exc)) from None
    return StoreConfig(spec.name, chosen.name, pool_name, augment, chosen.channels, spec.to_dict())


class Embedder:
    """Computes a store's kind of descriptor: views -> backbone layer -> pooling -> mean over views.

    Thread-safe for concurrent `embed_*` calls (ONNX Runtime sessions are).
    """

    def __init__(self, config: StoreConfig, *, threads: int | None = None) -> None:
        self.config = config
        self.spec = ModelSpec.from_dict(config.model_spec) if config.model_spec else get_model_spec(config.model)
        self.layer = self.spec.layer(config.layer)
        self.pooling = None if config.pool == "none" else Pooling.parse(config.pool)
        self.augment: Augment = config.augment  # type: ignore[assignment]
        self.size = self.spec.preprocessing.size
        self.min_size = views_min_size(self.size, self.augment)
        self.backbone = load_backbone(self.spec, threads=threads)

    def views(self, image: Image.Image) -> np.ndarray:
        """The `(V, size, size, 3)` uint8 views of one decoded image."""
        return make_views(image, self.size, self.augment)

    def view_features(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """One float32 descriptor per view, `(N, V, dim)`: for test-time combinations such as summing
        a probe's scores over views (Razavian et al.) rather than averaging descriptors."""
        if not views:
            return np.empty((0, VIEW_COUNTS[self.augment], self.config.dim), np.float32)
        features = self.backbone.forward(np.concatenate(views), [self.layer.name])[self.layer.name]
        if self.pooling is not None:
            features = self.pooling(features)
        return features.reshape(len(views), -1, features.shape[-1])

    def embed_views(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """One float32 descriptor per image, the mean over its views, `(N, dim)`."""
        return self.view_features(views).mean(axis=1, dtype=np.float32)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Descriptors of already decoded images (RGB PIL images)."""
        return self.embed_views([self.views(image) for image in images])

    def embed_files(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Descriptors of image files; OffshelfError names the first file that cannot be read."""
        views = []
        for path in paths:
            try:
                _, data = read_file(Path(path))
                views.append(self.views(decode_image(data, min_size=self.min_size)))
            except ImageDecodeError as exc:
                raise OffshelfError(f"cannot read image {path}: {exc.reason}") from None
        return self.embed_views(views)


def read_file(path: Path) -> tuple[FileState, bytes]:
    """Read a file's bytes once and describe them; ImageDecodeError if the file cannot be read."""
    try:
        stat = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"unreadable file: {exc.strerror or exc}") from None
    return FileState(hashlib.sha256(data).hexdigest(), stat.st_size, stat.st_mtime_ns), data


@dataclass(frozen=True)
class _Outcome:
    """What a decoding worker made of one file: views to embed, an unchanged file, or a failure."""

    path: str
    state: FileState | None
    views: np.ndarray | None = None
    unchanged: bool = False
    error: str | None = None


def _load(path: str, previous: FileState | None, embedder: Embedder, max_pixels: int) -> _Outcome:
    state: FileState | None = None
    try:
        state, data = read_file(Path(path))
        if previous is not None and previous.sha256 == state.sha256:
            return _Outcome(path, state, unchanged=True)
        image = decode_image(data, min_size=embedder.min_size, max_pixels=max_pixels)
        return _Outcome(path, state, views=embedder.views(image))
    except ImageDecodeError as exc:
        return _Outcome(path, state, error=exc.reason)
    except Exception as exc:  # noqa: BLE001 - a bad file must never stop a run; record why and go on
        return _Outcome(path, state, error=f"{type(exc).__name__}: {exc}")


@dataclass
class EmbedSummary:
    """Counts of one `embed` run: `skipped` files were already in the store, unchanged; `failures`
    lists each file that could not be embedded in this run with the reason; `index` reports how the
    store's ANN index (if it has one) was updated with the new rows."""

    embedded: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    store: str = ""
    failures: list[dict[str, str]] = field(default_factory=list)
    index: dict[str, object] | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _ordered_results(
    pool: ThreadPoolExecutor, todo: list[tuple[str, FileState | None]], embedder: Embedder, max_pixels: int, window: int
) -> Iterator[_Outcome]:
    """Decode `todo` in the pool, at most `window` files ahead of the consumer, yielding in input order."""
    pending: deque[Future[_Outcome]] = deque()
    items = iter(todo)
    for path, previous in items:
        pending.append(pool.submit(_load, path, previous, embedder, max_pixels))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


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
        from .index import update_store_index

        summary.index = update_store_index(feature_store.root)
    summary.seconds = time.perf_counter() - started
    return summary


def _same_stat(path: str, known: FileState) -> bool:
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return stat.st_size == known.size and stat.st_mtime_ns == known.mtime_ns


class _Committer:
    """Collects outcomes into batches for the backbone and rows into shards for the store."""

    def __init__(self, embedder: Embedder, writer: StoreWriter, summary: EmbedSummary, bar: tqdm,
                 batch_size: int, shard_size: int) -> None:
        self.embedder, self.writer, self.summary, self.bar = embedder, writer, summary, bar
        self.batch_size, self.shard_size = batch_size, shard_size
        self.rows = writer.store.new_rows()
        self.batch: list[_Outcome] = []

    def add(self, outcome: _Outcome) -> None:
        if outcome.error is not None:
            self.rows.add_error(outcome.path, outcome.state, outcome.error)
            self.summary.failed += 1
            self.summary.failures.append({"path": outcome.path, "reason": outcome.error})
            self.bar.update(1)
        elif outcome.unchanged:
            self.summary.skipped += 1
            self.bar.update(1)
        else:
            self.batch.append(outcome)
            if len(self.batch) >= self.batch_size:
                self.flush_batch()
        if len(self.rows) >= self.shard_size:
            self.commit()
        self.bar.set_postfix(failed=self.summary.failed, skipped=self.summary.skipped, refresh=False)

    def flush_batch(self) -> None:
        if not self.batch:
            return
        vectors = self.embedder.embed_views([item.views for item in self.batch])
        for item, vector in zip(self.batch, vectors):
            self.rows.add(item.path, item.state, vector)
        self.summary.embedded += len(self.batch)
        self.bar.update(len(self.batch))
        self.batch.clear()

    def commit(self) -> None:
        """Publish the rows collected so far as one shard (rows of embedded and failed files only)."""
        self.writer.commit(self.rows)
        self.rows = self.writer.store.new_rows()


def _run(todo: list[tuple[str, FileState | None]], embedder: Embedder, writer: StoreWriter,
         summary: EmbedSummary, batch_size: int, workers: int | None, shard_size: int, max_pixels: int,
         progress: bool) -> None:
    """The decode/infer/commit loop of `embed`; what was embedded is committed even if interrupted."""
    n_workers = workers or available_cores()
    window = batch_size * 2 + n_workers
    with tqdm(total=len(todo), unit="img", disable=not progress, dynamic_ncols=True, desc="embed") as bar:
        committer = _Committer(embedder, writer, summary, bar, batch_size, shard_size)
        try:
            with ThreadPoolExecutor(n_workers, thread_name_prefix="offshelf-decode") as pool:
                for outcome in _ordered_results(pool, todo, embedder, max_pixels, window):
                    committer.add(outcome)
                committer.flush_batch()
        finally:
            committer.commit()
