"""Spatial search: window layout, the multi-vector index against a brute-force max-over-windows, and
window descriptors computed with a real model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from offshelf.errors import OffshelfError
from offshelf.search.spatial import (
    SpatialIndex,
    max_over_windows,
    n_windows,
    window_boxes,
    window_descriptors,
    window_views,
)


def _brute_force(queries: np.ndarray, windows: np.ndarray, image_ids: np.ndarray, k: int):
    """Per query: images sorted by their best window's cosine (a plain double loop)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    w = windows / np.linalg.norm(windows, axis=-1, keepdims=True)
    out = []
    for query in q:
        best = {int(image): float(max(w[i] @ query)) for i, image in enumerate(image_ids)}
        ranked = sorted(best.items(), key=lambda item: -item[1])[:k]
        out.append(ranked)
    return out


def _loop_max_over_windows(queries: np.ndarray, windows: np.ndarray, image_ids: np.ndarray) -> dict[int, np.ndarray]:
    """Independent reference, in float64 with plain loops: image id -> (nq,) best cosine over its windows.
    `windows` is `(n_images, W, d)` with one id per image, or `(M, d)` with one id per window."""
    windows = np.asarray(windows, dtype=np.float64)
    ids = np.asarray(image_ids).reshape(-1)
    if windows.ndim == 3:
        ids = np.repeat(ids, windows.shape[1])
        windows = windows.reshape(-1, windows.shape[-1])
    best: dict[int, np.ndarray] = {}
    for q, query in enumerate(np.asarray(queries, dtype=np.float64)):
        for image, window in zip(ids.tolist(), windows):
            cosine = float(query @ window) / (np.linalg.norm(query) * np.linalg.norm(window))
            scores = best.setdefault(image, np.full(len(queries), -np.inf))
            scores[q] = max(scores[q], cosine)
    return best


def test_window_layout() -> None:
    assert [n_windows(levels) for levels in (1, 2, 3)] == [1, 5, 14]
    boxes = window_boxes(300, 200, 3)
    assert len(boxes) == 14
    assert boxes[0] == (0.0, 0.0, 300.0, 200.0)
    level2, level3 = boxes[1:5], boxes[5:]
    assert all(b[2] - b[0] == pytest.approx(200) and b[3] - b[1] == pytest.approx(400 / 3) for b in level2)
    assert all(b[2] - b[0] == pytest.approx(150) and b[3] - b[1] == pytest.approx(100) for b in level3)
    assert level3[4] == pytest.approx((75, 50, 225, 150))  # the centre window
    for box in boxes:
        assert 0 <= box[0] < box[2] <= 300 + 1e-9 and 0 <= box[1] < box[3] <= 200 + 1e-9
    assert window_boxes(300, 200, 3, first_level=2) == boxes[1:] and n_windows(3, first_level=2) == 13
    with pytest.raises(ValueError, match=r"need 1 <= first_level <= levels, got first_level=1, levels=0"):
        window_boxes(10, 10, 0)
    with pytest.raises(ValueError, match=r"need 1 <= first_level <= levels, got first_level=3, levels=2"):
        window_boxes(10, 10, 2, first_level=3)


def test_window_views_crop_the_right_part() -> None:
    pixels = np.zeros((120, 120, 3), np.uint8)
    pixels[:60, :60] = 255  # top-left quarter white
    views = window_views(Image.fromarray(pixels), 16, 3)
    assert views.shape == (14, 16, 16, 3) and views.dtype == np.uint8
    assert views[5].mean() > 250  # level-3 top-left window (half of each side) is all white
    assert views[13].mean() < 5  # level-3 bottom-right window is all black
    assert 50 < views[0].mean() < 80  # the full image: a quarter white


@pytest.mark.parametrize("windows_per_image", [1, 5, 14])
def test_flat_spatial_index_equals_brute_force(windows_per_image: int) -> None:
    rng = np.random.default_rng(windows_per_image)
    n_images, dim = 60, 24
    windows = rng.standard_normal((n_images, windows_per_image, dim)).astype(np.float32)
    image_ids = rng.choice(10_000, n_images, replace=False)
    queries = rng.standard_normal((25, dim)).astype(np.float32)
    queries[:5] = windows[:5, -1] + 0.01 * rng.standard_normal((5, dim))  # near one window of an image
    index = SpatialIndex.build(windows, image_ids)
    assert index.n_images == n_images and index.n_windows == n_images * windows_per_image
    for k in (1, 7, n_images, n_images + 5):
        scores, ids = index.search(queries, k)
        expected = _brute_force(queries, windows, image_ids, k)
        for q in range(len(queries)):
            got = [(int(i), float(s)) for i, s in zip(ids[q], scores[q]) if i >= 0]
            assert [i for i, _ in got] == [i for i, _ in expected[q]]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in expected[q]], rtol=1e-5, atol=1e-5)
        if k > n_images:
            assert (ids[:, n_images:] == -1).all() and np.isneginf(scores[:, n_images:]).all()
    # the first five queries find the image whose window they copy
    assert (index.search(queries[:5], 1)[1][:, 0] == image_ids[:5]).all()


def test_max_over_windows_reference_and_incremental_add() -> None:
    rng = np.random.default_rng(3)
    windows = rng.standard_normal((40, 6, 16)).astype(np.float32)
    ids = np.arange(40) * 3
    queries = rng.standard_normal((10, 16)).astype(np.float32)
    expected = _loop_max_over_windows(queries, windows, ids)
    ref_ids, ref_scores = max_over_windows(queries, windows, ids)
    assert ref_ids.tolist() == sorted(expected) == ids.tolist() and ref_scores.shape == (10, 40)
    # float32 cosines of 16-d unit vectors: rounding error well below 1e-6
    np.testing.assert_allclose(ref_scores, np.stack([expected[i] for i in ref_ids.tolist()], axis=1),
                               rtol=0, atol=1e-6)

    index = SpatialIndex()
    index.add(windows[:25], ids[:25])
    index.add(windows[25:].reshape(-1, 16), np.repeat(ids[25:], 6))  # flat (M, d) form
    scores, found = index.search(queries, 40)
    for q in range(10):
        ranked = sorted(expected, key=lambda image: -expected[image][q])
        gaps = np.diff([expected[image][q] for image in ranked])
        assert np.abs(gaps).min() > 1e-5  # no near-ties: the order is well defined
        assert found[q].tolist() == ranked
        np.testing.assert_allclose(scores[q], [expected[image][q] for image in ranked], rtol=0, atol=1e-6)
    assert index.bytes_per_image > 6 * 16 * 4


def test_crowded_windows_fetch_deeper() -> None:
    """One image owning every top window must not crowd the others out of the k results."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal(8).astype(np.float32)
    crowd = base + 0.001 * rng.standard_normal((1, 200, 8)).astype(np.float32)  # 200 windows, all near `base`
    others = rng.standard_normal((30, 200, 8)).astype(np.float32)
    index = SpatialIndex.build(np.concatenate([crowd, others]), np.arange(31))
    scores, ids = index.search(base[None], 5)
    expected = _loop_max_over_windows(base[None], np.concatenate([crowd, others]), np.arange(31))
    ranked = sorted(expected, key=lambda image: -expected[image][0])[:5]
    assert ids[0, 0] == 0 and ids[0].tolist() == ranked
    np.testing.assert_allclose(scores[0], [expected[image][0] for image in ranked], rtol=0, atol=1e-6)


def test_errors() -> None:
    with pytest.raises(OffshelfError, match=r"^3 images of windows but 2 image ids$"):
        SpatialIndex.build(np.zeros((3, 2, 4), np.float32) + 1, [1, 2])
    with pytest.raises(OffshelfError, match=r"^image ids must be non-negative"):
        SpatialIndex.build(np.ones((3, 2, 4), np.float32), [1, -2, 3])
    with pytest.raises(OffshelfError, match=r"^k must be at least 1, got 0$"):
        SpatialIndex().search(np.ones((1, 4)), 0)
    empty_scores, empty_ids = SpatialIndex().search(np.ones((2, 4)), 3)
    assert (empty_ids == -1).all() and np.isneginf(empty_scores).all() and empty_ids.shape == (2, 3)


def test_window_descriptors_with_a_model(photos) -> None:
    from offshelf.extract import Embedder, make_config
    from offshelf.models import get_model_spec

    embedder = Embedder(make_config(get_model_spec("efficientnet-lite0")), threads=2)
    images = photos[:3]
    windows = window_descriptors(embedder, images, levels=2, batch_size=2, workers=2)
    assert windows.shape == (3, 5, 1280) and windows.dtype == np.float32
    # the full-image window is the plain descriptor of the image; first_level=2 gives the other windows
    np.testing.assert_allclose(windows[:, 0], embedder.embed_files(images), rtol=1e-3, atol=1e-4)
    rest = window_descriptors(embedder, images[:1], levels=2, first_level=2, workers=1)
    np.testing.assert_allclose(rest[0], windows[0, 1:], rtol=1e-4, atol=1e-5)
    # a crop of the top-left third's window finds its own image first among the three
    with Image.open(images[1]) as im:
        w, h = im.size
        query = embedder.embed_images([im.convert("RGB").crop((0, 0, round(w * 2 / 3), round(h * 2 / 3)))])
    index = SpatialIndex.build(windows, [10, 11, 12])
    assert index.search(query, 1)[1][0, 0] == 11
    with pytest.raises(OffshelfError, match=r"^cannot read image /nonexistent\.png: "):
        window_descriptors(embedder, ["/nonexistent.png"], levels=1)
