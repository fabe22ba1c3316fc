"""Benchmark harness used by `benchmarks/*.py` and `offshelf bench`: cached feature stores of the offline
datasets, and the classification, retrieval and compatibility protocols built on them."""

from .stores import bench_home, dataset_store

__all__ = ["bench_home", "dataset_store"]
