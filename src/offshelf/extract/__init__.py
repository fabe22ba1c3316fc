"""Extraction, as reader -> embedder -> writer -> runner: files to views in threads, views to descriptors on ONNX
Runtime, descriptors to committed store shards, and the resumable `embed` run that ties them together."""

from offshelf.extract.embedder import Embedder, make_config
from offshelf.extract.pooling import Pooling
from offshelf.extract.reader import Outcome, Reader
from offshelf.extract.runner import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, embed
from offshelf.extract.summary import EmbedSummary

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_SHARD_SIZE",
    "EmbedSummary",
    "Embedder",
    "Outcome",
    "Pooling",
    "Reader",
    "embed",
    "make_config",
]
