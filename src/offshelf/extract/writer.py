"""The writer: outcomes into model batches, and rows into store shards committed one at a time."""

from __future__ import annotations

from tqdm import tqdm

from offshelf.extract.embedder import Embedder
from offshelf.extract.reader import Outcome
from offshelf.extract.summary import EmbedSummary
from offshelf.store import StoreWriter


class Committer:
    """Collects outcomes into batches for the backbone and rows into shards for the store."""

    def __init__(self, embedder: Embedder, writer: StoreWriter, summary: EmbedSummary, bar: tqdm,
                 batch_size: int, shard_size: int) -> None:
        self.embedder, self.writer, self.summary, self.bar = embedder, writer, summary, bar
        self.batch_size, self.shard_size = batch_size, shard_size
        self.rows = writer.store.new_rows()
        self.batch: list[Outcome] = []

    def add(self, outcome: Outcome) -> None:
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

