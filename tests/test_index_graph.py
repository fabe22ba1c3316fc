"""The hnswpca kind (HNSW over PCA-reduced vectors + exact re-rank) and `--kind auto`, on real FAISS against numpy
brute force. Data: the Gaussian mixture of test_index.py (decaying spectrum, like image descriptors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.preprocessing import normalize

from benchmarks.harness.killpoints import run_offshelf_here
from offshelf.errors import OffshelfError
from offshelf.index import (
    HNSWPCAIndex,
    VectorIndex,
    auto_choice,
    auto_target,
    build_index,
    build_store_index,
    load_store_index,
    measure_recall,
)
from offshelf.index.graph import AUTO_FLAT_MAX
from tests.test_index import make_store, mixture, single_threaded_faiss  # noqa: F401 (autouse)

N, DIM, GRAPH_DIM = 3000, 64, 16


@pytest.fixture(scope="module")
def drawn() -> np.ndarray:
    return mixture(N + 200, DIM, seed=5)  # the first N are indexed, the rest are held-out queries


@pytest.fixture(scope="module")
def data(drawn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return drawn[:N], np.random.default_rng(2).choice(2**62, N, replace=False).astype(np.int64)


@pytest.fixture(scope="module")
def index(data: tuple[np.ndarray, np.ndarray]) -> VectorIndex:
    X, ids = data
    return build_index(X, ids, "hnswpca", graph_dim=GRAPH_DIM, efSearch=64, rerank=64)


def numpy_top(queries: np.ndarray, X: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    sims = normalize(queries) @ normalize(X).T
    return ids[np.argsort(-sims, axis=1, kind="stable")[:, :k]]


def test_recall_it_reports_is_the_numpy_recall(index: VectorIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    X, ids = data
    sample, seed = 300, 4
    reported = measure_recall(index, X, ids, sample=sample, seed=seed)
    rows = np.sort(np.random.default_rng(seed).choice(N, sample, replace=False))  # the queries measure_recall takes
    truth = numpy_top(X[rows], X, ids, 11)
    _, found = index.search(X[rows], 11)
    hits = [len(set(t[t != own][:10]) & set(f[f != own][:10])) / 10 for t, f, own in zip(truth, found, ids[rows])]
    assert reported["recall_at_10"] == pytest.approx(np.mean(hits), abs=1e-9)
    assert reported["recall_at_10"] >= 0.95  # a 16-d graph over 64-d vectors, made exact by the re-rank


def test_graph_alone_is_worse_and_rerank_scores_are_exact(index: VectorIndex, data: tuple[np.ndarray, np.ndarray],
                                                          drawn: np.ndarray) -> None:
    X, ids = data
    queries = drawn[N:]
    truth = numpy_top(queries, X, ids, 10)
    scores, found = index.search(queries, 10)
    by_id = dict(zip(ids.tolist(), normalize(X)))
    exact = np.array([[by_id[i] @ q for i in row] for row, q in zip(found.tolist(), normalize(queries))])
    np.testing.assert_allclose(scores, exact, atol=1e-5)  # re-ranked on the full vectors: exact cosines
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    reranked = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    index.set_params(rerank=0)
    try:
        _, graph_only = index.search(queries, 10)
    finally:
        index.set_params(rerank=64)
    graph_recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, graph_only)])
    assert reranked >= 0.93 and graph_recall < reranked - 0.1  # the 16-d graph alone misses what PCA loses


def test_save_load_remove_add(index: VectorIndex, data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    X, ids = data
    queries = mixture(50, DIM, seed=7)  # any directions
    before = index.search(queries, 10)
    index.save(tmp_path / "ix")
    loaded = VectorIndex.load(tmp_path / "ix")
    assert isinstance(loaded, HNSWPCAIndex) and loaded.params == index.params
    after = loaded.search(queries, 10)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)
    gone = before[1][:, 0]
    loaded.remove(gone)
    assert not np.isin(loaded.search(queries, 10)[1], gone).any()
    loaded.remove(ids[:1])
    loaded.add(X[:1] * 3, np.array([7]))  # its vector again, under a new id
    assert loaded.search(X[:1], 2)[1][0].tolist()[0] == 7 and ids[0] not in loaded.search(X[:1], 10)[1]


def test_bad_parameters_and_damaged_projection(data: tuple[np.ndarray, np.ndarray], index: VectorIndex,
                                               tmp_path: Path) -> None:
    X, ids = data
    with pytest.raises(OffshelfError, match="graph_dim must be between 1 and"):
        build_index(X, ids, "hnswpca", graph_dim=DIM + 1)
    with pytest.raises(OffshelfError, match="M must be an integer >= 2"):
        build_index(X, ids, "hnswpca", M=1)
    with pytest.raises(OffshelfError, match="target recall must be in"):
        auto_target(1.5)
    index.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "index.json").read_text())
    manifest["index_dim"] = DIM - 1  # the projection no longer fits the vectors
    (tmp_path / "ix" / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(OffshelfError, match="damaged index .* projection of shape"):
        VectorIndex.load(tmp_path / "ix")


def test_auto_rule() -> None:
    assert auto_choice(AUTO_FLAT_MAX, 1280) == ("flat", {})
    assert auto_choice(AUTO_FLAT_MAX + 1, 1280) == ("hnswpca", {"graph_dim": 256})
    assert auto_choice(10**6, 64) == ("hnswpca", {"graph_dim": 64})
    assert auto_target(None) == pytest.approx(0.95) and auto_target(0.99) == pytest.approx(0.99)


def test_store_auto_build_meets_the_target_on_held_out_queries(tmp_path: Path) -> None:
    n = AUTO_FLAT_MAX + 500
    drawn = mixture(n + 300, 32, clusters=60, seed=8)
    store = make_store(tmp_path / "store", drawn[:n])
    report = build_store_index(store.root, "auto", target_recall=0.9, sample=300)
    assert report["kind"] == "hnswpca" and report["n"] == n and report["tuning"]["reached"]
    assert report["tuning"]["target_recall"] == pytest.approx(auto_target(0.9))
    loaded = load_store_index(store.root)
    assert loaded is not None and loaded.kind == "hnswpca"
    queries = drawn[n:]  # new vectors from the same distribution
    stored_ids, _, vectors = store.vectors()  # the reference: numpy over the store's own vectors
    assert set(loaded.ids().tolist()) == set(stored_ids.tolist())
    truth = numpy_top(queries, vectors, stored_ids, 10)
    _, found = loaded.search(queries, 10)
    assert np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)]) >= 0.9


def test_cli_builds_auto_by_default_on_a_small_store(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", mixture(400, 32, seed=10))
    out = run_offshelf_here(["index", "build", "--store", str(store.root), "--json"])
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)  # no --kind: auto; a small store gets exact search
    assert report["kind"] == "flat" and report["recall_at_10"] == 1.0 and report["tuning"]["reached"]
    with pytest.raises(OffshelfError, match=r"target recall must be in \(0, 1\]"):
        build_store_index(store.root, "auto", target_recall=1.5)
