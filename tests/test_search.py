"""Exact search against a numpy brute-force reference, and copy detection on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from offshelf import OffshelfError, Searcher, embed, search
from offshelf.images.copies import DEMO_TRANSFORMS


def distinct(photos: list[Path]) -> list[Path]:
    return [p for p in photos if p.name != "motorcycle_right.png"]


@pytest.fixture(scope="module")
def originals_store(tmp_path_factory: pytest.TempPathFactory, photos: list[Path]) -> Path:
    """Only distinct real photos: the photo set's random crops are copies of them too, and the right view
    of the motorcycle stereo pair is a near-copy of the left one."""
    store = tmp_path_factory.mktemp("originals") / "store"
    assert embed(distinct(photos), store, progress=False).failed == 0
    return store


@pytest.fixture(scope="module")
def photo_store(tmp_path_factory: pytest.TempPathFactory, small_photo_set: list[Path], photos: list[Path]) -> Path:
    store = tmp_path_factory.mktemp("search") / "store"
    summary = embed([*photos, *small_photo_set], store, progress=False)
    assert summary.failed == 0
    return store


TIE = 1e-5  # cosines closer than this are a tie: float32 scoring may order them either way


def check_against_brute_force(hits_per_query: list, queries: np.ndarray, ids: np.ndarray, paths: list[str],
                              vectors: np.ndarray, k: int) -> tuple[int, int]:
    """Compare search results with a float64 numpy brute force; returns (positions compared by id, tied ones).

    Scores must match at every rank. A rank whose reference score no other stored item comes within TIE of must
    hold exactly the reference item; at a tied rank, the hit must be one of the items tied at that score, and
    the hits of each tie group must be the reference's as a set when the whole group fits in the k results."""
    unit = vectors / np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    cosine = (queries / np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)) @ unit.T
    by_id, tied = 0, 0
    for q, hits in enumerate(hits_per_query):
        order = np.argsort(-cosine[q], kind="stable")[:k]
        assert [h.rank for h in hits] == list(range(1, k + 1))
        assert len({h.id for h in hits}) == k
        np.testing.assert_allclose([h.score for h in hits], cosine[q, order], rtol=0, atol=TIE)
        groups: dict[int, tuple[set, set]] = {}
        for hit, ref in zip(hits, order):
            near = np.flatnonzero(np.abs(cosine[q] - cosine[q, ref]) < TIE)
            if len(near) == 1:
                assert (hit.id, hit.path) == (ids[ref], paths[ref]), (q, hit.rank)
                by_id += 1
            else:
                assert hit.id in set(ids[near].tolist()), (q, hit.rank)
                found, expected = groups.setdefault(int(near.min()), (set(), set(ids[near].tolist())))
                found.add(hit.id)
                tied += 1
        for found, expected in groups.values():
            if len(expected) <= k and expected <= {h.id for h in hits}:
                assert found == expected
    return by_id, tied


def test_matches_numpy_brute_force(photo_store: Path) -> None:
    searcher = Searcher(photo_store)
    ids, paths, vectors = searcher.store.vectors()
    rng = np.random.default_rng(1)
    queries = np.vstack([vectors[rng.choice(len(vectors), 5)] + rng.normal(0, 0.05, (5, vectors.shape[1])),
                         rng.normal(0, 1, (3, vectors.shape[1]))]).astype(np.float32)
    k = 10
    by_id, tied = check_against_brute_force(searcher.search_vectors(queries, k), queries, ids, paths, vectors, k)
    # real descriptors rarely tie: nearly every position is checked by id (measured: all 80)
    assert by_id + tied == len(queries) * k and by_id >= 0.9 * len(queries) * k, (by_id, tied)


def test_exact_ties_compare_as_sets(tmp_path: Path) -> None:
    """Duplicated vectors (the same image stored under several paths) tie exactly: the search must return the
    whole tie group, in any order, and the untied positions by id."""
    from offshelf.store import FeatureStore, FileState, StoreConfig

    rng = np.random.default_rng(4)
    base = rng.normal(size=(40, 32)).astype(np.float32)
    vectors = np.vstack([base, base[:6], 2 * base[:6]])  # items 0-5 appear three times (scaled: same cosine)
    store = FeatureStore.open_or_create(tmp_path / "store", StoreConfig("test-model", "head", "gap", "none", 32))
    rows = store.new_rows()
    for i, vector in enumerate(vectors):
        rows.add(f"/img/{i}.jpg", FileState("0" * 64, 1, 1), vector)
    with store.writer() as writer:
        writer.commit(rows)
    searcher = Searcher(tmp_path / "store")
    ids, paths, stored = searcher.store.vectors()
    queries = np.vstack([base[:6] + 0.1 * rng.normal(size=(6, 32)), base[30:34]]).astype(np.float32)
    k = 8
    by_id, tied = check_against_brute_force(searcher.search_vectors(queries, k), queries, ids, paths, stored, k)
    assert tied >= 6 * 3 and by_id >= 4 * k, (by_id, tied)  # each of the six copies' groups, and clean queries


def test_k_larger_than_store_and_bad_queries(photo_store: Path, tmp_path: Path) -> None:
    searcher = Searcher(photo_store)
    hits = searcher.search_vectors(np.ones((1, 1280), np.float32), k=10_000)[0]
    assert len(hits) == len(searcher) and len({h.id for h in hits}) == len(hits)
    with pytest.raises(OffshelfError, match="dim"):
        searcher.search_vectors(np.ones((1, 7), np.float32))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(OffshelfError, match="cannot read image"):
        search(broken, photo_store)


@pytest.mark.parametrize("edit", sorted(DEMO_TRANSFORMS))
def test_edited_copy_finds_its_original_at_rank_1(originals_store: Path, photos: list[Path], tmp_path: Path, edit: str) -> None:
    searcher = Searcher(originals_store)
    for photo in distinct(photos):
        with Image.open(photo) as image:
            copy = DEMO_TRANSFORMS[edit](image.convert("RGB"))
        query = tmp_path / f"{photo.stem}.png"
        copy.save(query)
        hits = searcher.search_files([query], k=3)[0]
        assert hits[0].path == str(photo), (edit, photo.name, [(Path(h.path).name, h.score) for h in hits])


def test_item_paths_agree_with_a_dict_through_adds_and_removes() -> None:
    """The searcher's compact id -> path table answers as a plain dict would, before and after changes."""
    import pyarrow as pa

    from offshelf.search.item_paths import ItemPaths

    rng = np.random.default_rng(0)
    ids = rng.choice(10**12, 500, replace=False).astype(np.int64)
    reference = {int(i): f"/photos/{n}.jpg" for n, i in enumerate(ids)}
    table = ItemPaths(ids, pa.array(list(reference.values())))
    absent = [int(i) for i in rng.choice(10**12, 50) if int(i) not in reference]
    fresh = absent[:10]
    table.set(fresh + [int(ids[0])], [f"/new/{i}.png" for i in fresh] + ["/moved.jpg"])
    reference.update({i: f"/new/{i}.png" for i in fresh} | {int(ids[0]): "/moved.jpg"})
    gone = [int(ids[1]), int(ids[2]), fresh[0], absent[-1]]  # the last was never held: ignored
    table.discard(gone)
    for i in gone:
        reference.pop(i, None)
    assert len(table) == len(reference)
    for i in list(reference) + absent + gone:
        assert table.get(i) == reference.get(i)
    with pytest.raises(ValueError, match="500 ids but 2 paths"):
        ItemPaths(ids, pa.array(["a", "b"]))
