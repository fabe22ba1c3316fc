"""`embed_on_ray`: the `embed` run with Ray Data doing the reading, decoding and inference.

Ray Data reads the files' bytes (`read_binary_files`), tasks hash and decode them into views (the local
engine's `Reader.load_bytes`), and `map_batches` over a fixed pool of actors embeds them, each actor holding
one ONNX Runtime session (`Embedder`) with as many threads as the CPUs Ray gave it. Only the driver writes:
it plans the run and commits shards exactly as the local engine does (`embed_session`, `Committer`), so the
store, the errors table and the resume rule are the same, whichever engine embedded what.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from offshelf.distributed.cluster import DECODE_TASK_CPUS, actor_pool, default_cpus_per_actor, ray_session
from offshelf.errors import OffshelfError
from offshelf.extract.embedder import Embedder
from offshelf.extract.reader import Outcome, Reader
from offshelf.extract.runner import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SHARD_SIZE,
    EmbedSession,
    check_sizes,
    embed_session,
    images_per_batch,
)
from offshelf.extract.summary import EmbedSummary
from offshelf.extract.writer import Committer
from offshelf.images import DEFAULT_MAX_PIXELS, VIEW_COUNTS, FileBytes
from offshelf.models import ModelSpec, resolve_spec
from offshelf.store import MANIFEST, FileState, StoreConfig

MISSING = "unreadable file: gone before Ray read it"


def embed_on_ray(
    paths: Sequence[str | Path],
    store: str | Path,
    *,
    address: str | None = None,
    actors: int = 1,
    cpus_per_actor: float | None = None,
    model: str | ModelSpec | None = None,
    layer: str | None = None,
    pool: str | None = None,
    augment: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    readd: bool = False,
) -> EmbedSummary:
    """`offshelf.embed` on Ray: the same store, errors table and resume rule, the work spread over a cluster.

    Runs on the Ray instance this process already joined, else joins the cluster at `address`, else starts a
    local instance for the run. `actors` ONNX Runtime actors each ask Ray for `cpus_per_actor` CPUs (default: the
    cluster's CPUs less a quarter per node for decoding, split over the actors) and run that many threads.
    Every path must be readable under the same name on every node (a shared filesystem). The other options are
    the local engine's (`offshelf.embed`).
    """
    check_sizes(batch_size, shard_size)
    if actors < 1 or (cpus_per_actor is not None and not cpus_per_actor > 0):
        raise OffshelfError("the Ray engine needs at least 1 actor and a positive number of CPUs per actor")
    with embed_session(paths, store, model=model, layer=layer, pool=pool, augment=augment, readd=readd) as run:
        if run.todo:
            with ray_session(address):
                _run(run, actors, cpus_per_actor, images_per_batch(batch_size, run.store.config.augment),
                     shard_size, max_pixels, progress)
    return run.summary


def _run(run: EmbedSession, actors: int, cpus: float | None, batch_size: int, shard_size: int, max_pixels: int,
         progress: bool) -> None:
    """Stream the todo list through Ray Data and commit what comes back; what arrived is committed even if
    interrupted, and a file Ray did not return is recorded as failed."""
    import ray

    config, origin = run.store.config, run.store.root / MANIFEST
    recipe = resolve_spec(config.model, config.model_spec, origin).preprocessing  # the model loads in the actors
    reader = Reader(recipe.size, config.augment, max_pixels, recipe.resize, recipe.resample)  # type: ignore[arg-type]
    previous = {path: state for path, state in run.todo if state is not None}
    # a read task per batch of files (at least one per actor, so that every actor gets work)
    blocks = min(len(run.todo), max(actors, -(-len(run.todo) // batch_size)))
    data = ray.data.read_binary_files([path for path, _ in run.todo], include_paths=True, num_cpus=DECODE_TASK_CPUS,
                                      ignore_missing_paths=True, override_num_blocks=blocks)
    decoded = data.map_batches(_decode, fn_kwargs={"reader": reader, "previous": previous}, batch_size=batch_size,
                               num_cpus=DECODE_TASK_CPUS, batch_format="numpy")
    embedded = decoded.map_batches(_EmbedActor, fn_constructor_kwargs={"config": config, "origin": str(origin)},
                                   batch_size=batch_size, num_cpus=cpus or default_cpus_per_actor(actors),
                                   batch_format="numpy", **actor_pool(actors))
    seen: set[str] = set()
    with tqdm(total=len(run.todo), unit="img", disable=not progress, dynamic_ncols=True, desc="embed (ray)") as bar:
        committer = Committer(None, run.writer, run.summary, bar, batch_size, shard_size)
        try:
            for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
                for outcome, vector in zip(_outcomes(batch), batch["embedding"]):
                    seen.add(outcome.path)
                    committer.record(outcome, vector)
            for path, state in run.todo:
                if path not in seen:
                    committer.record(Outcome(path, state, error=MISSING))
        finally:
            committer.commit()


def _decode(batch: dict[str, np.ndarray], reader: Reader, previous: dict[str, FileState]) -> dict[str, np.ndarray]:
    """A Ray Data task: hash and decode each file's bytes into views, as the local engine's reader does."""
    outcomes = [reader.load_bytes(path, FileBytes(data, hashlib.sha256(data).hexdigest(), len(data), _mtime_ns(path)),
                                  previous.get(path))
                for data, path in zip(batch["bytes"], batch["path"])]
    shape = (VIEW_COUNTS[reader.augment], reader.size, reader.size, 3)
    views = np.zeros((len(outcomes), *shape), np.uint8)  # failed and unchanged files keep zeros
    for row, outcome in enumerate(outcomes):
        if outcome.views is not None:
            views[row] = outcome.views
    return {**_columns(outcomes), "views": views}


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0  # read but gone since: never equal to a later stat, so the next run looks at it again


def _columns(outcomes: list[Outcome]) -> dict[str, np.ndarray]:
    """Outcomes without their views as Ray Data columns; `_outcomes` reads them back."""
    states = [outcome.state or FileState("", 0, 0) for outcome in outcomes]
    return {
        "path": np.array([outcome.path for outcome in outcomes], dtype=object),
        "sha256": np.array([state.sha256 for state in states], dtype=object),
        "size": np.array([state.size for state in states], dtype=np.int64),
        "mtime_ns": np.array([state.mtime_ns for state in states], dtype=np.int64),
        "error": np.array([outcome.error or "" for outcome in outcomes], dtype=object),
        "unchanged": np.array([outcome.unchanged for outcome in outcomes], dtype=bool),
    }


def _outcomes(batch: dict[str, np.ndarray]) -> list[Outcome]:
    rows = zip(batch["path"], batch["sha256"], batch["size"], batch["mtime_ns"], batch["error"], batch["unchanged"])
    return [Outcome(str(path), FileState(str(sha), int(size), int(mtime)) if sha else None, error=str(error) or None,
                    unchanged=bool(unchanged))
            for path, sha, size, mtime, error, unchanged in rows]


def _to_embed(batch: dict[str, np.ndarray]) -> np.ndarray:
    """Rows of a decoded batch that hold views to embed (not failed, not unchanged)."""
    return np.flatnonzero((batch["error"] == "") & ~batch["unchanged"])


class _EmbedActor:
    """A Ray Data actor: one ONNX Runtime session, with as many threads as the CPUs Ray gave the actor."""

    def __init__(self, config: StoreConfig, origin: str) -> None:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        self.embedder = Embedder(config, threads=max(1, round(cpus)), origin=origin)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        rows = _to_embed(batch)
        vectors = np.zeros((len(batch["path"]), self.embedder.config.dim), np.float32)
        if len(rows):
            vectors[rows] = self.embedder.embed_views(list(batch["views"][rows]))
        return {**{key: value for key, value in batch.items() if key != "views"}, "embedding": vectors}
