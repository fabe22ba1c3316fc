"""What every benchmark run records besides its numbers: stage timings with stamped log lines, the software
and machine it ran on, and its JSON written atomically."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from offshelf.io import atomic_write_bytes


class StageClock:
    """Elapsed seconds per stage, and log lines stamped with the time since the start."""

    def __init__(self, progress: bool) -> None:
        self.start = time.perf_counter()
        self.progress = progress
        self.seconds: dict[str, float] = {}

    def log(self, message: str) -> None:
        if self.progress:
            print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True)

    def stage(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    def __init__(self, clock: StageClock, name: str) -> None:
        self.clock, self.name = clock, name

    def __enter__(self) -> _Stage:
        self.clock.log(f"{self.name} ...")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self.t0
        self.clock.seconds[self.name] = round(self.clock.seconds.get(self.name, 0.0) + seconds, 2)
        self.clock.log(f"{self.name}: {seconds:.1f} s")


def environment_info() -> dict[str, Any]:
    import faiss
    import onnxruntime
    import sklearn

    from offshelf._version import __version__

    return {
        "offshelf": __version__, "python": platform.python_version(), "machine": platform.machine(),
        "cores": os.cpu_count(), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
        "faiss": faiss.__version__, "scikit-learn": sklearn.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False, default=float) + "\n").encode())
