"""The reader: files to views, in a thread pool that runs ahead of the model.

Each worker reads a file's bytes once, hashes them, skips the file if its bytes are what the store already
holds, and otherwise decodes it and builds its views. Pillow, simplejpeg and hashlib release the GIL, so
decoding overlaps with ONNX Runtime in the calling thread. A file that cannot be read becomes a failed outcome
with the reason.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offshelf.images import (
    DEFAULT_MAX_PIXELS,
    Augment,
    FileBytes,
    ImageDecodeError,
    JpegDecoder,
    decode_image,
    make_views,
    read_file,
    views_min_size,
)
from offshelf.store import FileState


@dataclass(frozen=True)
class Outcome:
    """What a reading worker made of one file: views to embed, an unchanged file, or a failure."""

    path: str
    state: FileState | None
    views: np.ndarray | None = None
    unchanged: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Reader:
    """Reads, hashes and decodes files into the `(V, size, size, 3)` uint8 views a model takes."""

    size: int
    augment: Augment = "none"
    max_pixels: int = DEFAULT_MAX_PIXELS
    resize: int = 0  # the model's own recipe, if it has one (`Preprocessing.resize` and `resample`)
    resample: str = ""
    jpeg_decoder: JpegDecoder = "simplejpeg"  # who decodes JPEG pixels (`decode_image`); same picture either way

    def load(self, path: str, previous: FileState | None = None) -> Outcome:
        """One file's outcome; never raises for a bad file (a bad file must never stop a run)."""
        try:
            read = read_file(Path(path))
        except ImageDecodeError as exc:
            return Outcome(path, None, error=exc.reason)
        return self.load_bytes(path, read, previous)

    def load_bytes(self, path: str, read: FileBytes, previous: FileState | None = None) -> Outcome:
        """`load` of a file whose bytes were already read (by another engine, e.g. Ray Data)."""
        state = FileState(read.sha256, read.size, read.mtime_ns)
        try:
            if previous is not None and previous.sha256 == state.sha256:
                return Outcome(path, state, unchanged=True)
            min_size = views_min_size(self.size, self.augment, self.resample)
            image = decode_image(read.data, min_size=min_size, max_pixels=self.max_pixels,
                                 jpeg_decoder=self.jpeg_decoder)
            views = make_views(image, self.size, self.augment, resize=self.resize, resample=self.resample)
            return Outcome(path, state, views=views)
        except ImageDecodeError as exc:
            return Outcome(path, state, error=exc.reason)
        except Exception as exc:  # noqa: BLE001 - record why and go on
            return Outcome(path, state, error=f"{type(exc).__name__}: {exc}")

    def ordered(self, pool: ThreadPoolExecutor, todo: list[tuple[str, FileState | None]], window: int
                ) -> Iterator[Outcome]:
        """Load `todo` in the pool, at most `window` files ahead of the consumer, yielding in input order."""
        pending: deque[Future[Outcome]] = deque()
        for path, previous in todo:
            pending.append(pool.submit(self.load, path, previous))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
