"""Benchmark harness used by `benchmarks/*.py` and `python -m benchmarks.NAME`: cached feature stores of the offline
datasets, and the classification, retrieval and compatibility protocols built on them."""

from benchmarks.harness.stores import bench_home, dataset_store

__all__ = ["bench_home", "dataset_store"]
