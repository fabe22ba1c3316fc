"""Feature caches of the classification benchmark (`benchmarks.classify`).

Three kinds of features, each computed once and shared by re-runs, sweeps and other processes:

* descriptors of a model/layer/pooling/views choice: the shared benchmark stores (`dataset_store`); rows are
  picked out by path, since a store may hold more images than one benchmark asks for;
* per-view descriptors `(n, V, D)` for the test-time sum of scores over views: `.npy` files under
  `bench_home()/"views"`;
* hand-crafted baselines `(n, d)`: `.npy` files under `bench_home()/"baselines"`.

A `.npy` cache file is named by what it holds: dataset, model/config (and a hash of the full model
description) or baseline name, and a hash of the list of resolved paths with each file's size and mtime,
so a changed or re-materialized file makes a new entry rather than a stale hit. Files are written atomically
(`offshelf.io.atomic_write`); one process computes an entry while others wait on its lock file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.harness.stores import bench_home, dataset_store
from offshelf.baselines import extract_baseline
from offshelf.errors import OffshelfError
from offshelf.extract import Embedder, make_config
from offshelf.images import VIEW_COUNTS, ImageDecodeError, decode_image
from offshelf.io import atomic_write
from offshelf.models import get_model_spec
from offshelf.models.cache import blocking_lock
from offshelf.models.runtime import available_cores
from offshelf.store import FeatureStore, StoreConfig

#: Images per forward pass when computing per-view features (x 16 views with augment="paper").
VIEW_BATCH_IMAGES = 4


def _resolved(paths: Sequence[str | Path]) -> list[str]:
    return [str(Path(p).expanduser().resolve()) for p in paths]


def paths_digest(paths: Sequence[str | Path]) -> str:
    """Short hash of the resolved paths, in order, with each file's size and mtime."""
    digest = hashlib.sha256()
    for path in _resolved(paths):
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _safe(text: str) -> str:
    return text.replace("/", "_").replace(":", "_")


def cached_array(path: Path, compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """`(array, was_cached)`: the array saved at `path`, or `compute()` saved there atomically first."""
    with blocking_lock(path.with_name(path.name + ".lock")):
        if path.exists():
            try:
                return np.load(path), True
            except (OSError, ValueError):  # unreadable: recompute and replace
                pass
        array = np.ascontiguousarray(compute())

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, array)

        atomic_write(path, write)
        return array, False


# -- stores ----------------------------------------------------------------------------------------

def _complete_store(name: str, wanted: Sequence[str], model: str, layer: str | None, pool: str | None,
                    augment: str) -> FeatureStore | None:
    """The benchmark store for this choice if it already holds every wanted file, unchanged; else None.

    Reading needs no lock (shards are published atomically), so this does not wait while another process
    embeds more images into the same store, as `dataset_store` (which takes the writer's lock) would. The
    store's folder is named as `dataset_store` names it; if that naming ever changes, this finds nothing and
    the caller falls back to `dataset_store`.
    """
    key = "-".join(str(part) for part in (name, model, layer or "default", pool or "default", augment))
    root = bench_home() / "stores" / key.replace(":", "_").replace("/", "_")
    try:
        store = FeatureStore.open(root)
    except OffshelfError:
        return None
    if store.config.identity() != make_config(get_model_spec(model), layer, pool, augment).identity():
        return None
    known = store.known_files()
    for path in wanted:
        state = known.get(path)
        if state is None:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        if (stat.st_size, stat.st_mtime_ns) != (state.size, state.mtime_ns):
            return None
    return store


def _canonical(model: str, layer: str | None, pool: str | None) -> tuple[str | None, str | None]:
    """`(None, None)` for the model's default layer with GAP, so such requests share the default store."""
    spec = get_model_spec(model)
    layer = None if layer in (None, spec.default_layer) else layer
    kind = spec.layer(layer).kind
    pool = None if pool in (None, "gap") or kind == "vector" else pool
    return layer, pool


def store_features(name: str, paths: Sequence[str | Path], *, model: str, layer: str | None = None,
                   pool: str | None = None, augment: str = "none", progress: bool = True) -> np.ndarray:
    """`(len(paths), D)` descriptors of `paths`, in order, from the shared benchmark store (embedding what is
    missing)."""
    layer, pool = _canonical(model, layer, pool)
    wanted = _resolved(paths)
    store = _complete_store(name, wanted, model, layer, pool, augment)
    if store is None:
        store = dataset_store(name, paths, model=model, layer=layer, pool=pool, augment=augment, progress=progress)
    _, stored_paths, vectors = store.vectors()
    row = {path: i for i, path in enumerate(stored_paths)}
    missing = [path for path in wanted if path not in row]
    if missing:
        failed = {r["path"]: r["reason"] for r in store.errors().select(["path", "reason"]).to_pylist()}
        example = missing[0]
        raise OffshelfError(
            f"{len(missing)} of {len(wanted)} images are not in store {store.root} "
            f"(e.g. {example}: {failed.get(example, 'not embedded')})"
        )
    return vectors[[row[path] for path in wanted]]


# -- per-view features -----------------------------------------------------------------------------

def _config_tag(config: StoreConfig) -> str:
    spec_hash = hashlib.sha256(json.dumps(config.model_spec, sort_keys=True).encode()).hexdigest()[:8]
    return _safe(f"{config.model}-{config.layer}-{config.pool}-{config.augment}-{spec_hash}")


def _windowed(pool: ThreadPoolExecutor, fn: Callable[[str], np.ndarray], items: Sequence[str],
              window: int) -> Iterator[np.ndarray]:
    """`fn` over `items` in the pool, in order, at most `window` items ahead of the consumer."""
    pending: deque[Future[np.ndarray]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def compute_view_features(paths: Sequence[str | Path], config: StoreConfig, *, progress: bool = True,
                          desc: str = "views") -> np.ndarray:
    """`(n, V, D)` float32 per-view descriptors, decoded and viewed exactly as `embed` does for a store."""
    embedder = Embedder(config)
    files = _resolved(paths)

    def load(path: str) -> np.ndarray:
        try:
            return embedder.views(decode_image(Path(path).read_bytes(), min_size=embedder.min_size))
        except (OSError, ImageDecodeError) as exc:
            raise OffshelfError(f"cannot read image {path}: {getattr(exc, 'reason', exc)}") from None

    out = np.empty((len(files), VIEW_COUNTS[config.augment], config.dim), np.float32)
    workers = available_cores()
    batch: list[np.ndarray] = []
    done = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="offshelf-views") as pool, \
            tqdm(total=len(files), unit="img", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for views in _windowed(pool, load, files, window=2 * VIEW_BATCH_IMAGES + workers):
            batch.append(views)
            if len(batch) == VIEW_BATCH_IMAGES:
                out[done:done + len(batch)] = embedder.view_features(batch)
                done += len(batch)
                bar.update(len(batch))
                batch.clear()
        if batch:
            out[done:done + len(batch)] = embedder.view_features(batch)
            bar.update(len(batch))
    return out


def view_features(name: str, paths: Sequence[str | Path], *, model: str, layer: str | None = None,
                  pool: str | None = None, augment: str = "paper", progress: bool = True) -> tuple[np.ndarray, bool]:
    """`((n, V, D) per-view descriptors, was_cached)` of `paths`, cached under `bench_home()/"views"`."""
    config = make_config(get_model_spec(model), layer, pool, augment)
    target = bench_home() / "views" / f"{_safe(name)}-{_config_tag(config)}-{paths_digest(paths)}.npy"
    return cached_array(
        target, lambda: compute_view_features(paths, config, progress=progress, desc=f"{model} views")
    )


# -- baselines -------------------------------------------------------------------------------------

def baseline_features(name: str, baseline: str, paths: Sequence[str | Path], *,
                      progress: bool = True) -> tuple[np.ndarray, bool]:
    """`((n, d) hand-crafted features, was_cached)`, cached under `bench_home()/"baselines"`."""
    target = bench_home() / "baselines" / f"{_safe(name)}-{baseline}-{paths_digest(paths)}.npy"
    return cached_array(
        target, lambda: extract_baseline(baseline, list(paths), workers=available_cores(), progress=progress)
    )
