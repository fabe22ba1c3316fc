"""ANN indexes on real FAISS against numpy brute force: recall, tuning, ITQ, add/remove, threads, crash-safe saves.

Data: a Gaussian mixture (30 clusters, dim 64) whose within-cluster spread has a decaying spectrum, like image
descriptors; neighbours within a cluster are what the indexes must rank. FAISS runs single-threaded here so
that timings stay stable on a loaded machine (thread safety is tested with Python threads).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import normalize

from offshelf.errors import OffshelfError
from offshelf.index import (
    ITQ,
    RecallProbe,
    VectorIndex,
    build_index,
    build_store_index,
    load_store_index,
    measure_recall,
    tune,
    update_store_index,
)
from offshelf.index import base as index_base
from offshelf.index import itq as itq_module
from offshelf.index.itq import random_rotation
from offshelf.store import FeatureStore, FileState, StoreConfig, path_id

N, DIM = 3000, 64
# kind -> (build parameters, recall@10 it must reach against numpy brute force); see test_recall_of_every_kind
CASES: dict[str, tuple[dict, float]] = {
    "flat": ({}, 1.0),
    "hnsw": ({}, 0.995),
    "ivfpq": ({"rerank": 100}, 0.995),
    "binary": ({"rerank": 100}, 0.99),
}


def mixture(n: int = N, dim: int = DIM, clusters: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scales = 1 / np.sqrt(1 + np.arange(dim))
    centers = 2 * (rng.standard_normal((clusters, dim)) * scales) @ basis.T
    points = centers[rng.integers(clusters, size=n)] + (rng.standard_normal((n, dim)) * scales) @ basis.T
    return points.astype(np.float32)


@pytest.fixture(autouse=True, scope="module")
def single_threaded_faiss() -> Iterator[None]:
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.default_rng(1).choice(2**62, N, replace=False).astype(np.int64)
    return mixture(), ids


@pytest.fixture(scope="module")
def built(data: tuple[np.ndarray, np.ndarray]) -> dict[str, VectorIndex]:
    X, ids = data
    return {kind: build_index(X, ids, kind, **params) for kind, (params, _) in CASES.items()}


def numpy_recall(index: VectorIndex, X: np.ndarray, ids: np.ndarray, space: np.ndarray | None = None,
                 k: int = 10) -> float:
    """Leave-one-out recall@k over every vector, the reference by numpy brute force (cosine on `space`)."""
    unit = normalize(X if space is None else space)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    truth = ids[np.argsort(-sims, axis=1, kind="stable")[:, :k]]
    _, found = index.search(X, k + 1)
    found = [row[row != own][:k] for row, own in zip(found, ids)]
    return float(np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found)]))


def self_rank1(index: VectorIndex, X: np.ndarray, ids: np.ndarray) -> float:
    return float(np.mean(index.search(X, 1)[1][:, 0] == ids))


# -- search quality --------------------------------------------------------------------------------

def test_flat_is_exact(built: dict[str, VectorIndex], data: tuple[np.ndarray, np.ndarray]) -> None:
    X, ids = data
    rng = np.random.default_rng(2)
    queries = np.vstack([X[:20] + rng.normal(0, 0.05, (20, DIM)), rng.normal(0, 1, (5, DIM))]).astype(np.float32)
    sims = normalize(queries) @ normalize(X).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    scores, found = built["flat"].search(queries, 10)
    np.testing.assert_array_equal(found, ids[order])
    np.testing.assert_allclose(scores, np.take_along_axis(sims, order, 1), atol=1e-5)
    assert scores.dtype == np.float32 and found.dtype == np.int64


@pytest.mark.parametrize("kind", CASES)
def test_recall_of_every_kind(built: dict[str, VectorIndex], data: tuple[np.ndarray, np.ndarray], kind: str) -> None:
    """Thresholds: flat is exact; hnsw (M=32, efSearch=64) is near exact at this size. ivfpq and binary re-rank
    their best 100 candidates exactly, so they lose a true top-10 neighbour only when the coarse stage (probed
    cells; PQ at 16 bytes or 64-bit ITQ codes) ranks it below 100th of 3000. Measured on this mixture and on
    three other seeds of it: hnsw 1.0, ivfpq 1.0, binary 0.9965-0.998. Asserted: 0.995 for hnsw and ivfpq,
    0.99 for binary (at most 300 of the 30,000 true neighbours missed, 4x the worst measured), which leaves
    room for k-means/ITQ initialisation on other platforms but not for a broken coarse stage or re-ranking."""
    X, ids = data
    recall = numpy_recall(built[kind], X, ids)
    assert recall >= CASES[kind][1]
    measured = measure_recall(built[kind], X, ids, sample=N)
    # the same leave-one-out recall over every vector, computed by the library: equal (measured), up to
    # float32-vs-float64 ordering of exact near-ties in the reference (a few of 30,000 neighbours)
    assert measured["recall_at_10"] == pytest.approx(recall, abs=0.001)
    assert measured["qps"] > 0 and measured["queries"] == N and 0 <= measured["recall_at_1"] <= 1


def test_exact_neighbours_in_chunks_match_numpy(data: tuple[np.ndarray, np.ndarray]) -> None:
    """The chunked exact search behind every recall figure (memory bounded by one chunk) against numpy."""
    from sklearn.preprocessing import normalize

    from offshelf.index.recall import exact_neighbours

    X, _ = data
    queries = normalize(X[:40])
    for chunk in (37, 500, len(X)):  # chunks smaller than k, uneven tail, one chunk
        found = exact_neighbours(queries, X, normalize, 11, chunk=chunk)
        expected = np.argsort(-(queries @ normalize(X).T), axis=1, kind="stable")[:, :11]
        assert (found == expected).mean() > 0.999, chunk  # float32 vs float64 may swap exact near-ties
    assert (exact_neighbours(queries, X[:5], normalize, 8)[:, 5:] == -1).all()  # fewer vectors than k: padded


def test_memory_per_vector_is_measured(built: dict[str, VectorIndex], data: tuple[np.ndarray, np.ndarray]) -> None:
    X, ids = data
    assert built["flat"].bytes_per_vector == pytest.approx(4 * DIM, rel=0.01)
    assert built["hnsw"].bytes_per_vector > 4 * DIM + 4 * 32  # links to >= M neighbours on level 0
    codes = build_index(X, ids, "binary")
    assert codes.bytes_per_vector == pytest.approx(DIM / 8, rel=0.05)  # 64 bits, no float vectors kept
    assert built["binary"].bytes_per_vector == pytest.approx(DIM / 8 + 4 * DIM, rel=0.05)


def test_pca_variant_against_projected_reference(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, ids = data
    index = build_index(X, ids, "hnsw", pca=16)
    projected = PCA(16, svd_solver="full").fit_transform(normalize(X))
    assert numpy_recall(index, X, ids, space=projected) >= 0.95
    end_to_end = measure_recall(index, X, ids, sample=N)["recall_at_10"]
    assert end_to_end < measure_recall(index, X, ids, sample=N, space="index")["recall_at_10"]
    whitened = build_index(X, ids, "flat", pca=16, whiten=True)
    assert np.allclose(np.linalg.norm(whitened.transform(X), axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("pca,whiten", [(None, False), (16, False), (16, True)])
def test_working_space_matches_the_sklearn_pipeline(data: tuple[np.ndarray, np.ndarray], pca: int | None,
                                                    whiten: bool) -> None:
    """`transform` skips sklearn's per-call validation; it must still compute what the fitted pipeline does."""
    X, ids = data
    index = build_index(X, ids, "flat", pca=pca, whiten=whiten)
    queries = X[:50] * 3.0  # not normalized: the first step must normalize them
    np.testing.assert_allclose(index.transform(queries), index.pipeline.transform(queries), rtol=1e-4, atol=1e-5)


def test_tune_raises_the_search_knob(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, ids = data
    weak = {"M": 4, "efConstruction": 16, "efSearch": 16}
    before = measure_recall(build_index(X, ids, "hnsw", **weak), X, ids, space="index")["recall_at_10"]
    tuned, report = tune("hnsw", 0.97, X, ids, **weak)
    assert before < 0.97 <= report["recall_at_10_lower"] <= report["recall_at_10"]
    assert report["reached"] and not report["rebuilds"] and report["params"]["efSearch"] > 16
    assert report["held_out"] == len(X) // 10 and set(tuned.ids().tolist()) == set(ids.tolist())  # all added back
    # the step before the chosen one fell short: the cheapest setting was taken
    assert report["steps"][-2]["recall_at_10_lower"] < 0.97 and report["steps"][-1]["params"] == report["params"]

    _, report = tune("ivfpq", 0.95, X, ids, rerank=50, nprobe=1)
    assert report["reached"] and report["recall_at_10"] >= 0.95 and report["qps"] > 0


def test_tune_measures_recall_of_new_queries_on_the_held_out_rows(data: tuple[np.ndarray, np.ndarray]) -> None:
    """The recall `tune` reports for its held-out rows is what an index built without them gives, against a
    numpy brute force over the other rows."""
    X, ids = data
    held = np.arange(0, len(X), 10)
    rest = np.setdiff1d(np.arange(len(X)), held)
    index = build_index(X[rest], ids[rest], "hnsw", M=4, efConstruction=16, efSearch=16)
    probe_result = RecallProbe(index, X, ids, held_out=held).measure(index)
    unit = normalize(X)
    truth = ids[rest][np.argsort(-unit[held] @ unit[rest].T, axis=1, kind="stable")[:, :10]]
    _, found = index.search(X[held], 10)
    reference = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    assert probe_result["recall_at_10"] == pytest.approx(reference, abs=1e-9) and reference < 0.99
    assert probe_result["queries"] == len(held) and probe_result["recall_at_10_lower"] < reference


def test_tune_rebuilds_when_the_knob_is_not_enough(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, ids = data
    assert measure_recall(build_index(X, ids, "binary"), X, ids)["recall_at_10"] < 0.9
    tuned, report = tune("binary", 0.95, X, ids)
    assert report["reached"] and report["rebuilds"] == [{"rerank": 10}] and "rebuilt" in report["message"]
    assert measure_recall(tuned, X, ids)["recall_at_10"] >= 0.95


# -- ITQ ---------------------------------------------------------------------------------------------

def test_itq_rotation_is_orthogonal_and_reduces_quantization_loss(data: tuple[np.ndarray, np.ndarray],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    X = normalize(data[0])
    itq = ITQ(n_bits=32, n_iter=40).fit(X)
    R = itq.rotation_
    np.testing.assert_allclose(R.T @ R, np.eye(32), atol=1e-10)
    losses = np.array(itq.loss_)
    assert np.all(np.diff(losses) <= 1e-9 * losses[0])  # alternating minimisation never goes up
    # loss = n_bits + |v|^2 - 2 |V R|_1 per row: lower loss means projections further from the sign boundary
    V = (X - itq.mean_) @ itq.components_.T
    for seed in range(5):
        Z = V @ random_rotation(32, np.random.default_rng(100 + seed))
        assert losses[-1] < np.sum((np.where(Z >= 0, 1, -1) - Z) ** 2) / len(V)
        assert np.abs(V @ R).sum() > 1.05 * np.abs(Z).sum()  # measured 1.13
    assert itq.encode(X).shape == (N, 4) and itq.encode(X).dtype == np.uint8
    chunked = ITQ.from_arrays(itq.to_arrays())
    monkeypatch.setattr(itq_module, "ENCODE_CHUNK", 7)  # encoding in row chunks gives the same codes
    np.testing.assert_array_equal(chunked.encode(X), np.packbits(itq.transform(X) >= 0, axis=1))


# -- add / remove --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,params", [*((kind, params) for kind, (params, _) in CASES.items()),
                                         ("binary", {"rerank": 100, "hnsw": True})])
def test_add_remove_and_readd(data: tuple[np.ndarray, np.ndarray], kind: str, params: dict, tmp_path: Path) -> None:
    X, ids = data
    index = build_index(X[:2500], ids[:2500], kind, **params)
    index.add(X[2500:], ids[2500:])
    assert index.ntotal == N and self_rank1(index, X[2500:], ids[2500:]) == 1.0

    gone = ids[::10]
    assert index.remove(gone) == len(gone) and index.remove(gone) == 0 and index.ntotal == N - len(gone)

    def assert_never_returned(ix: VectorIndex) -> None:
        found = ix.search(X[::10], 50)[1]
        assert not np.isin(found, gone).any() and (found >= 0).all()

    assert_never_returned(index)
    index.save(tmp_path / "ix")
    loaded = VectorIndex.load(tmp_path / "ix")
    assert_never_returned(loaded)
    extra = mixture(200, seed=5)
    extra_ids = np.arange(200, dtype=np.int64)
    loaded.add(extra, extra_ids)
    assert_never_returned(loaded)
    assert self_rank1(loaded, extra, extra_ids) == 1.0

    moved = X[1] + 3 * (X[2] - X[1])  # id ids[1] re-added with another vector replaces the old entry
    loaded.add(moved[None], ids[1:2])
    scores, found = loaded.search(np.vstack([moved, X[1]]), 20)
    assert found[0, 0] == ids[1] and ids[1] not in found[1, :1]
    assert all(len(set(row)) == len(row) for row in found)
    assert loaded.ntotal == N - len(gone) + 200 and loaded.ntombstones == len(gone) + 1


def test_search_edge_cases(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, ids = data
    index = build_index(X[:5], ids[:5], "hnsw")
    scores, found = index.search(X[:2], 8)
    assert (found[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    index.remove(ids[:5])
    assert (index.search(X[:1], 3)[1] == -1).all()
    with pytest.raises(OffshelfError, match="shape"):
        index.search(np.ones((1, 7), np.float32))
    with pytest.raises(OffshelfError, match="distinct"):
        index.add(X[:2], [7, 7])
    with pytest.raises(OffshelfError, match="unknown index kind"):
        build_index(X, ids, "lsh")
    with pytest.raises(OffshelfError, match="not search-time"):
        index.set_params(M=8)
    with pytest.raises(OffshelfError, match="no float vectors"):
        build_index(X, ids, "binary").set_params(rerank=10)
    with pytest.raises(OffshelfError, match="at least 256"):
        build_index(X[:100], ids[:100], "ivfpq")


# -- threads -----------------------------------------------------------------------------------------

def test_searches_during_adds_and_removes(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, ids = data
    index = build_index(X[:1500], ids[:1500], "hnsw", efConstruction=40)
    may_exist = set(ids[:1500].tolist())
    removed_done: set[int] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        try:
            for start in range(1500, N, 100):
                may_exist.update(ids[start : start + 100].tolist())
                index.add(X[start : start + 100], ids[start : start + 100])
                victims = ids[start - 1500 : start - 1450]
                index.remove(victims)
                removed_done.update(victims.tolist())
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                gone_before = set(removed_done)
                found = index.search(X[rng.integers(N, size=8)], 10)[1]
                present = set(may_exist)
                for i in found.ravel().tolist():
                    assert i == -1 or (i in present and i not in gone_before), i
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[0]
    assert index.ntotal == N - len(removed_done)
    assert not np.isin(index.search(X, 10)[1], list(removed_done)).any()


# -- saving ------------------------------------------------------------------------------------------

def saved_pair(data: tuple[np.ndarray, np.ndarray], directory: Path) -> tuple[VectorIndex, tuple[np.ndarray, ...]]:
    """An index saved at `directory` and its answers; then changed in memory (not saved)."""
    X, ids = data
    index = build_index(X[:1000], ids[:1000], "binary", rerank=20)
    index.save(directory)
    answers = index.search(X[:50], 10)
    index.add(X[1000:1200], ids[1000:1200])
    index.remove(ids[:100])
    return index, answers


def assert_previous_index(directory: Path, data: tuple[np.ndarray, np.ndarray], answers: tuple) -> None:
    loaded = VectorIndex.load(directory)
    assert loaded.ntotal == 1000
    for got, expected in zip(loaded.search(data[0][:50], 10), answers):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("crash_at", ["second data file", "manifest"])
def test_crash_during_save_leaves_previous_index(data: tuple[np.ndarray, np.ndarray], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, crash_at: str) -> None:
    directory = tmp_path / "ix"
    index, answers = saved_pair(data, directory)
    calls: list[Path] = []

    def crash(path: Path, *args: object) -> None:
        calls.append(path)
        if crash_at == "manifest" or len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        original_bytes(path, *args)

    original_bytes = index_base.atomic_write  # data files are streamed through atomic_write
    monkeypatch.setattr(index_base, "atomic_write_json" if crash_at == "manifest" else "atomic_write", crash)
    with pytest.raises(KeyboardInterrupt, match="^simulated crash$"):
        index.save(directory)
    monkeypatch.undo()
    assert_previous_index(directory, data, answers)
    index.save(directory)  # the next save succeeds and leaves one generation of files
    assert VectorIndex.load(directory).ntotal == 1100
    assert sorted(p.name.split("-")[0] for p in directory.iterdir()) == [".lock", "arrays", "faiss", "index.json"]


def test_killed_process_during_save_leaves_previous_index(data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    directory = tmp_path / "ix"
    _, answers = saved_pair(data, directory)
    script = f"""
import os, numpy as np
from offshelf.index import VectorIndex, base
index = VectorIndex.load({str(directory)!r})
index.add(np.ones((3, {DIM}), np.float32), [1, 2, 3])
base.atomic_write_json = lambda *a: os._exit(9)  # SIGKILL-like: no cleanup runs
index.save({str(directory)!r})
"""
    assert subprocess.run([sys.executable, "-c", script], timeout=60).returncode == 9
    assert len(list(directory.glob("faiss-*"))) == 2  # the dead writer's files are there, unreferenced
    assert_previous_index(directory, data, answers)


def test_corrupt_or_missing_index_is_a_clear_error(data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    with pytest.raises(OffshelfError, match="no index"):
        VectorIndex.load(tmp_path)
    index = build_index(*data, "flat")
    index.save(tmp_path / "ix")
    data_file = next((tmp_path / "ix").glob("faiss-*"))
    data_file.write_bytes(data_file.read_bytes()[:100])
    with pytest.raises(OffshelfError, match="truncated"):
        VectorIndex.load(tmp_path / "ix")


# -- the index of a feature store ----------------------------------------------------------------------

def make_store(root: Path, vectors: np.ndarray, model: str = "test-model", shards: int = 1) -> FeatureStore:
    store = FeatureStore.open_or_create(root, StoreConfig(model, "head", "gap", "none", vectors.shape[1]))
    for chunk in np.array_split(np.arange(len(vectors)), shards):
        add_rows(store, {f"/img/{i}.jpg": vectors[i] for i in chunk})
    return store


def add_rows(store: FeatureStore, items: dict[str, np.ndarray]) -> None:
    rows = store.new_rows()
    for path, vector in items.items():
        rows.add(path, FileState("0" * 64, 1, 1), vector)
    with store.writer() as writer:
        writer.commit(rows)


def test_store_index_build_update_and_identity(tmp_path: Path) -> None:
    X = mixture(1500, seed=3)
    store = make_store(tmp_path / "store", X[:1200], shards=2)
    assert load_store_index(store.root) is None and update_store_index(store.root) is None
    report = build_store_index(store.root, "hnsw", target_recall=0.99, sample=500)
    json.dumps(report)
    assert report["kind"] == "hnsw" and report["n"] == 1200 and report["tuning"]["reached"]
    assert report["tuning"]["recall_at_10"] >= 0.99  # reached: on the tuning sample the target itself holds
    assert report["recall_at_10"] >= 0.97 and 0 < report["recall_at_1"] <= 1
    assert report["bytes_per_vector"] > 4 * DIM and report["qps"] > 0 and report["build_seconds"] > 0

    add_rows(store, {f"/img/{i}.jpg": X[i] for i in range(1200, 1500)})  # new files
    add_rows(store, {"/img/0.jpg": X[700] + 1.0})  # a changed file: same path and id, new vector
    first_shard = sorted((store.root / "shards").glob("*.parquet"))[0]
    gone = [path_id(f"/img/{i}.jpg") for i in range(1, 600)]
    first_shard.unlink()  # rows of the first shard (but /img/0.jpg, re-committed) leave the store
    assert update_store_index(store.root) == {"kind": "hnsw", "added": 300, "replaced": 1, "removed": 599,
                                              "from_seq": 2, "to_seq": 4,  # the store commits it caught up with
                                              "n": 901, "tombstones": 600}
    assert update_store_index(store.root)["added"] == 0
    index = load_store_index(store.root)
    ids, _, vectors = FeatureStore.open(store.root).vectors()
    # the index holds every stored vector under its id (its digest), and no other: what an update must do.
    # (Not "every item finds itself first": HNSW may leave a node unreachable, which no update changes.)
    assert index._live_digests() == dict(zip(ids.tolist(), index_base.digests(vectors).tolist()))
    assert self_rank1(index, vectors, ids) > 0.99
    assert not np.isin(index.search(X, 10)[1], gone).any()

    other = make_store(tmp_path / "other", X[:10], model="another-model")
    (other.root / "index").symlink_to(store.root / "index")
    with pytest.raises(OffshelfError, match="another-model"):
        load_store_index(other.root)
    with pytest.raises(OffshelfError, match="rebuild"):
        update_store_index(other.root)
