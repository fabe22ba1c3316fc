"""The Ray engine (offshelf.distributed) on a local 2-CPU Ray instance, against the local engine as reference:
the same store from both, decode failures in the errors table, a SIGKILLed run resumed with no duplicates or
gaps, and a sharded index build equal to the single-process one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from offshelf import FeatureStore, embed
from offshelf.distributed import build_index_on_ray, embed_on_ray
from offshelf.distributed.cluster import actor_pool, default_cpus_per_actor, ray_session
from offshelf.errors import OffshelfError
from offshelf.index import build_store_index, load_store_index
from offshelf.search import Searcher
from offshelf.store import path_id
from tests.test_index import make_store, mixture

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """One local Ray instance with 2 CPUs for the module; yields its address for subprocesses to join."""
    with ray_session(num_cpus=2):
        yield ray.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def inputs(small_photo_set: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 real photos and two files that cannot be decoded."""
    root = tmp_path_factory.mktemp("ray-inputs")
    for photo in small_photo_set[:24]:
        shutil.copy(photo, root / photo.name)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (root / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return root


def _rows(store: Path) -> dict[str, tuple[int, np.ndarray]]:
    ids, paths, vectors = FeatureStore.open(store).vectors()
    return {path: (int(i), v) for i, path, v in zip(ids, paths, vectors)}


def _errors(store: Path) -> dict[str, str]:
    table = FeatureStore.open(store).errors()
    return dict(zip(table.column("path").to_pylist(), table.column("reason").to_pylist()))


def test_ray_store_equals_the_local_store(cluster: str, inputs: Path, tmp_path: Path) -> None:
    local = embed([inputs], tmp_path / "local", batch_size=8, shard_size=16, progress=False)
    on_ray = embed_on_ray([inputs], tmp_path / "ray", actors=2, batch_size=8, shard_size=16, progress=False)
    assert (on_ray.embedded, on_ray.failed, on_ray.skipped) == (local.embedded, local.failed, 0) == (24, 2, 0)
    expected, found = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert sorted(found) == sorted(expected)
    assert all(found[p][0] == expected[p][0] for p in expected)
    assert max(np.abs(found[p][1] - expected[p][1]).max() for p in expected) <= 1e-5
    errors = _errors(tmp_path / "ray")
    assert errors == _errors(tmp_path / "local") and set(errors) == {str(inputs / "corrupt.jpg"),
                                                                      str(inputs / "truncated.png")}
    shards = list((tmp_path / "ray" / "shards").glob("*.parquet"))
    assert len(shards) == 2  # 26 outcomes, 16 rows per committed shard: the local engine's cadence
    again = embed_on_ray([inputs], tmp_path / "ray", actors=1, progress=False)
    assert (again.embedded, again.skipped, again.failed) == (0, 24, 2)  # failures are retried, as locally


def test_a_killed_ray_run_resumes_without_duplicates_or_gaps(cluster: str, inputs: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "offshelf.cli", "embed", str(inputs), "--store", str(store), "--engine", "ray",
               "--address", cluster, "--actors", "1", "--batch-size", "2", "--shard-size", "2", "--quiet"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list((store / "shards").glob("*.parquet")) and process.poll() is None:
            assert time.monotonic() < deadline, "no shard committed in 120 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read() if process.stderr else ""
    committed = _rows(store)
    assert 0 < len(committed) < 24, "the run must be killed part-way for this test to mean anything"

    resumed = embed_on_ray([inputs], store, actors=2, batch_size=8, progress=False)
    assert resumed.skipped == len(committed)  # what was committed is not embedded again
    assert (resumed.embedded, resumed.failed) == (24 - len(committed), 2)
    paths = FeatureStore.open(store).table().column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 24  # no gaps, no duplicates in the live table
    written = sum(pq.read_metadata(shard).num_rows for shard in (store / "shards").glob("*.parquet"))
    assert written == 24  # and no row was written twice: nothing committed was embedded again
    assert set(_errors(store)) == {str(inputs / "corrupt.jpg"), str(inputs / "truncated.png")}


def test_sharded_ivfpq_build_finds_what_a_single_process_build_finds(cluster: str, tmp_path: Path) -> None:
    vectors = mixture(1200, seed=5)
    store = make_store(tmp_path / "store", vectors, shards=6)
    single = build_store_index(store.root, "ivfpq", sample=300)
    single_index = load_store_index(store.root)
    sharded = build_index_on_ray(store.root, "ivfpq", tasks=3, sample=300)
    assert sharded["tasks"] == 3 and sharded["n"] == 1200 and sharded["engine"] == "ray"
    assert sharded["recall_at_10"] == single["recall_at_10"] and sharded["recall_at_1"] == single["recall_at_1"]
    index = load_store_index(store.root)  # the store's index, opened as any other
    queries = vectors[::40] + np.random.default_rng(0).normal(0, 0.01, vectors[::40].shape).astype(np.float32)
    scores, ids = index.search(queries, 10)
    expected_scores, expected_ids = single_index.search(queries, 10)
    assert (ids == expected_ids).all() and np.allclose(scores, expected_scores, atol=1e-6)
    exact = np.argsort(-(_unit(queries) @ _unit(vectors).T), axis=1)[:, :10]  # numpy brute force
    exact_ids = np.array([[path_id(f"/img/{j}.jpg") for j in row] for row in exact])  # make_store's paths
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_ids, ids)]) >= 0.5
    assert Searcher(store.root).index.kind == "ivfpq"  # what `offshelf search` and `serve` open
    assert not list(store.root.glob("index.parts-*"))  # the staging folder is gone


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_hnsw_cannot_be_built_in_shards(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", mixture(50, seed=1))
    with pytest.raises(OffshelfError, match="kind must be one of flat, ivfpq"):
        build_index_on_ray(store.root, "hnsw")


def test_actor_pool_argument_follows_the_installed_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray, "__version__", "2.20.0")
    assert actor_pool(2) == {"concurrency": 2}
    monkeypatch.setattr(ray, "__version__", "2.60.0")
    assert actor_pool(2)["compute"].min_size == actor_pool(2)["compute"].max_size == 2


def test_actors_share_the_cpus_left_after_decoding(cluster: str) -> None:
    assert default_cpus_per_actor(1) == 1.5 and default_cpus_per_actor(2) == 0.75  # 2 CPUs, 0.5 kept for decode tasks


@pytest.mark.parametrize(("argv", "message"), [
    (["embed", "x.jpg", "--store", "s", "--engine", "ray", "--workers", "2"], "--workers does not apply to --engine ray"),
    (["embed", "x.jpg", "--store", "s", "--actors", "2"], "--actors does not apply to --engine local"),
    (["index", "build", "--store", "s", "--kind", "flat", "--tasks", "2", "--address", "h:1"],
     "--address, --tasks do not apply to --engine local"),
    (["index", "build", "--store", "s", "--kind", "flat", "--engine", "ray", "--target-recall", "0.9"],
     "--target-recall does not apply to --engine ray"),
])
def test_options_of_the_other_engine_are_refused(argv: list[str], message: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from offshelf.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"offshelf: error: {message}"
    assert not (tmp_path / "s").exists()  # refused before anything was created
