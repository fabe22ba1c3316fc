"""The writer: outcomes into model batches, and rows into store shards committed one at a time."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Executor, Future

import numpy as np
from tqdm import tqdm

from offshelf.extract.embedder import Embedder
from offshelf.extract.reader import Outcome
from offshelf.extract.summary import EmbedSummary
from offshelf.store import StoreWriter


class Committer:
    """Collects outcomes into batches for the backbone and rows into shards for the store.

    Full batches run in the `inference` executor, up to `in_flight` at a time, while the caller goes on
    collecting the next batch; the rows of embedded files are recorded in input order all the same (`drain`
    waits for the rest), while a failed or unchanged file is recorded when it is read, so an error row may come
    before the rows of files read just before it. If a batch fails, the batches already running are still
    recorded (`drain`) before the error propagates: the store then lacks that batch's files, which a re-run
    embeds (files are matched by path, not by position). Without an `embedder` (another engine computed the
    vectors) outcomes are only `record`ed.
    """

    def __init__(self, embedder: Embedder | None, writer: StoreWriter, summary: EmbedSummary, bar: tqdm,
                 batch_size: int, shard_size: int, inference: Executor | None = None, in_flight: int = 1) -> None:
        self.embedder, self.writer, self.summary, self.bar = embedder, writer, summary, bar
        self.batch_size, self.shard_size = batch_size, shard_size
        self.inference, self.in_flight = inference, max(1, in_flight)
        self.rows = writer.store.new_rows()
        self.batch: list[Outcome] = []
        self.pending: deque[tuple[list[Outcome], Future[np.ndarray]]] = deque()

    def add(self, outcome: Outcome) -> None:
        """Queue a decoded file for the backbone; record a failed or unchanged one."""
        if outcome.views is None:
            self.record(outcome)
            return
        self.batch.append(outcome)
        if len(self.batch) >= self.batch_size:
            self.flush_batch()

    def flush_batch(self) -> None:
        if not self.batch:
            return
        assert self.embedder is not None and self.inference is not None, "outcomes with views need an embedder"
        batch, self.batch = self.batch, []
        self.pending.append((batch, self.inference.submit(self.embedder.embed_views, [item.views for item in batch])))
        while len(self.pending) > self.in_flight:
            self._record_oldest()

    def drain(self) -> None:
        """Wait for the batches still running and record their rows."""
        while self.pending:
            self._record_oldest()

    def _record_oldest(self) -> None:
        batch, vectors = self.pending.popleft()
        for item, vector in zip(batch, vectors.result()):
            self.record(item, vector)

    def record(self, outcome: Outcome, vector: np.ndarray | None = None) -> None:
        """Count one file's outcome and add its row (an embedded file's with its `vector`); commit a full shard."""
        if outcome.error is not None:
            self.rows.add_error(outcome.path, outcome.state, outcome.error)
            self.summary.failed += 1
            self.summary.failures.append({"path": outcome.path, "reason": outcome.error})
        elif outcome.unchanged:
            self.summary.skipped += 1
        else:
            assert outcome.state is not None and vector is not None
            self.rows.add(outcome.path, outcome.state, vector)
            self.summary.embedded += 1
        self.bar.update(1)
        if len(self.rows) >= self.shard_size:
            self.commit()
        self.bar.set_postfix(failed=self.summary.failed, skipped=self.summary.skipped, refresh=False)

    def commit(self) -> None:
        """Publish the rows collected so far as one shard (rows of embedded and failed files only)."""
        self.writer.commit(self.rows)
        self.rows = self.writer.store.new_rows()

