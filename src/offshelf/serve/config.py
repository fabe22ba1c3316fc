"""`ServeConfig`: what one `offshelf serve` process serves and its limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from offshelf.errors import OffshelfError
from offshelf.images import DEFAULT_MAX_PIXELS

API_KEY_ENV = "OFFSHELF_API_KEY"
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # form fields and part headers around the image, allowed on top of the upload
MAX_K = 1000


@dataclass(frozen=True)
class ServeConfig:
    """The store (and probe) served, dynamic batching, and limits.

    `max_batch` images at most go through the model together; the first image of a batch waits at most
    `max_wait_ms` for others (`max_batch=1` turns batching off). `workers` decoding threads (default: the
    cores), `threads` ONNX Runtime threads (default: the cores). `api_key` guards the write endpoints
    (default: the environment variable OFFSHELF_API_KEY; None or empty: writes are open).
    """

    store: Path
    probe: Path | None = None
    max_batch: int = 16
    max_wait_ms: float = 5.0
    workers: int | None = None
    threads: int | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    api_key: str | None = field(default_factory=lambda: os.environ.get(API_KEY_ENV) or None)
    cors_origins: tuple[str, ...] = ()
    thumbnail_cache_bytes: int = 64 * 1024 * 1024
    precision: str | None = None  # None: the store's; else it must be the store's

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise OffshelfError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise OffshelfError(f"--max-wait-ms must be at least 0, got {self.max_wait_ms}")
        if self.workers is not None and self.workers < 1:
            raise OffshelfError(f"--workers must be at least 1, got {self.workers}")
        if self.max_upload_bytes < 1 or self.max_pixels < 1:
            raise OffshelfError("the upload and pixel limits must be at least 1")

    @property
    def max_body_bytes(self) -> int:
        return self.max_upload_bytes + MULTIPART_OVERHEAD
