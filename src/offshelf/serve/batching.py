"""Dynamic batching: image requests decoded in a thread pool, queued, and run through the model together.

The first queued image of a batch waits at most `max_wait_ms` for others, and a batch holds at most `max_batch`
images (as Triton's and Ray Serve's dynamic batchers). While the model runs one batch, requests keep being
decoded and queued, so under load batches fill without waiting. Decoding happens in `workers` threads (Pillow
releases the GIL), the model in one thread of its own (ONNX Runtime uses every core inside it), as in the
offline pipeline (`offshelf.extract.runner`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from offshelf.extract import Embedder
from offshelf.images import decode_image

BatchObserver = Callable[[int, Sequence[float], float], None]  # (size, queue waits in s, model seconds)


@dataclass
class _Pending:
    views: np.ndarray
    queued: float
    result: asyncio.Future[np.ndarray]


class DynamicBatcher:
    """`await embed(data)` -> the image's descriptor, computed in a batch with concurrent requests.

    Create and `start()` it inside the serving event loop; `close()` stops it. `embed` raises
    `ImageDecodeError` for bytes that are not a decodable image (nothing is queued then).
    """

    def __init__(self, embedder: Callable[[], Embedder], *, max_batch: int, max_wait_ms: float, max_pixels: int,
                 workers: int, observe: BatchObserver | None = None) -> None:
        self._embedder = embedder  # called when needed: the model may still be loading when the batcher starts
        self.max_pixels = max_pixels
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self._observe = observe
        self._decoders = ThreadPoolExecutor(workers, thread_name_prefix="offshelf-serve-decode")
        self._model = ThreadPoolExecutor(1, thread_name_prefix="offshelf-serve-model")
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="offshelf-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._decoders.shutdown(wait=False, cancel_futures=True)
        self._model.shutdown(wait=False, cancel_futures=True)

    def views(self, data: bytes) -> np.ndarray:
        """Decode (sniffed from the bytes, pixel limit first) and make the model's views; runs in a worker."""
        embedder = self._embedder()
        return embedder.views(decode_image(data, min_size=embedder.min_size, max_pixels=self.max_pixels))

    async def embed(self, data: bytes) -> np.ndarray:
        loop = asyncio.get_running_loop()
        views = await loop.run_in_executor(self._decoders, self.views, data)
        pending = _Pending(views, time.perf_counter(), loop.create_future())
        await self._queue.put(pending)
        return await pending.result

    async def _next_batch(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        deadline = batch[0].queued + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [item for item in batch if not item.result.cancelled()]  # clients that went away

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                vectors = await loop.run_in_executor(self._model, self._embedder().embed_views, [p.views for p in batch])
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure, the loop goes on
                for item in batch:
                    if not item.result.done():
                        item.result.set_exception(exc)
                continue
            if self._observe is not None:
                self._observe(len(batch), [started - p.queued for p in batch], time.perf_counter() - started)
            for item, vector in zip(batch, vectors):
                if not item.result.done():
                    item.result.set_result(vector)
