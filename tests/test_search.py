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


def test_matches_numpy_brute_force(photo_store: Path) -> None:
    searcher = Searcher(photo_store)
    ids, paths, vectors = searcher.store.vectors()
    rng = np.random.default_rng(1)
    queries = np.vstack([vectors[rng.choice(len(vectors), 5)] + rng.normal(0, 0.05, (5, vectors.shape[1])),
                         rng.normal(0, 1, (3, vectors.shape[1]))]).astype(np.float32)
    k = 10
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    for q, hits in enumerate(searcher.search_vectors(queries, k)):
        order = np.argsort(-cosine[q], kind="stable")[:k]
        assert [h.rank for h in hits] == list(range(1, k + 1))
        np.testing.assert_allclose([h.score for h in hits], cosine[q, order], atol=1e-5)
        # identical ids wherever the reference has no near-tie
        for hit, ref in zip(hits, order):
            if abs(cosine[q, ref] - hit.score) < 1e-6 and np.sum(np.abs(cosine[q] - cosine[q, ref]) < 1e-5) == 1:
                assert hit.id == ids[ref] and hit.path == paths[ref]


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
