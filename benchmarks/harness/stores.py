"""Feature stores of benchmark datasets, embedded once and shared by every benchmark.

Stores live under `$OFFSHELF_HOME/bench/stores/<name>-<model>-<layer>-<pool>-<augment>`. Embedding is
resumable and incremental, so asking again for a store that exists only costs a stat of each file; if
another process is embedding the same store right now, this waits for it and then reuses its work.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from offshelf.errors import BusyError
from offshelf.extract import embed
from offshelf.models import get_model_spec, int8_report, offshelf_home
from offshelf.store import FeatureStore

WAIT_SECONDS = 5.0


def bench_home() -> Path:
    """Where benchmark data and stores are cached."""
    return offshelf_home() / "bench"


def dataset_store(name: str, paths: Sequence[str | Path], *, model: str = "efficientnet-lite0",
                  layer: str | None = None, pool: str | None = None, augment: str = "none",
                  progress: bool = True, timeout: float = 6 * 3600, precision: str = "fp32") -> FeatureStore:
    """The store holding `paths` embedded with the given model/layer/pool/augment/precision (embedding what is
    missing)."""
    parts = (name, model, layer or "default", pool or "default", augment)
    if precision != "fp32":  # the int8 graph's own sha256: a graph made by another recipe is another store
        parts += (precision, int8_report(get_model_spec(model))["onnx_sha256"][:12])
    key = "-".join(str(part) for part in parts)
    root = bench_home() / "stores" / key.replace(":", "_").replace("/", "_")
    deadline = time.monotonic() + timeout
    while True:
        try:
            embed(paths, root, model=model, layer=layer, pool=pool, augment=augment, progress=progress,
                  precision=precision)
            return FeatureStore.open(root)
        except BusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(WAIT_SECONDS)
