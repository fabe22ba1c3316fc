"""Spatial search (Razavian et al. 2014, "CNN-ss"): database images described by several sub-windows,
a query matched to each image's best window.

    score(query, image) = max over the image's windows w of cos(query, w)

so that a query showing only part of an image (a crop, a detail, a thumbnail of a region) meets a
descriptor of about the same part, instead of the descriptor of the whole image.

The windows (our choice; the paper describes sub-patches of several sizes and positions without a
layout we could check here): at level l = 1..`levels`, an l x l grid of windows whose sides are
2/(l + 1) of the image's width and height, spread evenly from edge to edge. With the default 3 levels
that is 1 + 4 + 9 = 14 windows:

    level 1: the full image                       (side 1)
    level 2: 2 x 2 windows of 2/3 of each side    (at offsets 0 and 1/3: neighbours overlap by half a window)
    level 3: 3 x 3 windows of 1/2 of each side    (at offsets 0, 1/4, 1/2: half a window; includes the centre)

It is the rule R-MAC uses for its regions on a feature map (side 2 * min(H, W) / (l + 1)), applied to
the image itself, with windows following the image's aspect ratio. Each window is cropped from the decoded
image and resized to the network's input as a whole (aspect not kept, like offshelf's views), then
described by the store's model/layer/pooling (`window_descriptors`), so one image costs `n_windows`
forward passes. The paper also splits the query into sub-patches and averages their best matches; here
the query is one descriptor (the full image), as `offshelf search` makes it.

`SpatialIndex` is a multi-vector index: every window vector is one entry of an offshelf `VectorIndex`
(FAISS), mapped to its image id; a search retrieves windows best first and keeps each image's first
(hence best) window until it has `k` distinct images, fetching deeper when a query's best windows
crowd into fewer images. With `kind="flat"` this is exactly the max-over-windows ranking
(`max_over_windows` is the brute-force numpy reference); other kinds approximate it as they approximate
exact search.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from offshelf.errors import OffshelfError
from offshelf.images import RESAMPLE_REDUCING_GAP, ImageDecodeError, decode_image
from offshelf.vectors import l2_normalize

if TYPE_CHECKING:
    from offshelf.extract import Embedder
    from offshelf.index import VectorIndex

__all__ = [
    "DEFAULT_LEVELS",
    "SpatialIndex",
    "max_over_windows",
    "n_windows",
    "window_boxes",
    "window_descriptors",
    "window_views",
]

DEFAULT_LEVELS = 3
_RESAMPLE = Image.Resampling.BILINEAR  # as offshelf.images.make_views


def n_windows(levels: int = DEFAULT_LEVELS, first_level: int = 1) -> int:
    """How many windows levels `first_level`..`levels` make: 1 + 4 + ... + levels**2 from level 1."""
    return sum(level * level for level in range(first_level, levels + 1))


def window_boxes(width: int, height: int, levels: int = DEFAULT_LEVELS,
                 first_level: int = 1) -> list[tuple[float, float, float, float]]:
    """The windows `(left, top, right, bottom)` in pixels (floats) of a `width` x `height` image, level by
    level, each level's grid row by row: level l has l x l windows with sides 2/(l+1) of the image's.
    `first_level=2` leaves out the full image (when its descriptor is already at hand)."""
    if not 1 <= first_level <= levels:
        raise ValueError(f"need 1 <= first_level <= levels, got first_level={first_level}, levels={levels}")
    boxes = []
    for level in range(first_level, levels + 1):
        side = 2.0 / (level + 1)
        starts = [0.0] if level == 1 else [i * (1.0 - side) / (level - 1) for i in range(level)]
        for top in starts:
            for left in starts:
                boxes.append((left * width, top * height, (left + side) * width, (top + side) * height))
    return boxes


def window_views(image: Image.Image, size: int, levels: int = DEFAULT_LEVELS, first_level: int = 1) -> np.ndarray:
    """The `(n_windows, size, size, 3)` uint8 windows of an image, each resized to `size` x `size`."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    out = np.empty((n_windows(levels, first_level), size, size, 3), np.uint8)
    for i, box in enumerate(window_boxes(*image.size, levels, first_level)):
        out[i] = np.asarray(image.resize((size, size), _RESAMPLE, box=box, reducing_gap=RESAMPLE_REDUCING_GAP))
    return out


def _min_decode_size(size: int, levels: int) -> int:
    """Decode resolution at which the smallest windows (2/(levels+1) of a side) keep full detail."""
    return math.ceil(size * (levels + 1) / 2 - 1e-9)


def _load_windows(item: str | Path | Image.Image, size: int, levels: int, first_level: int) -> np.ndarray:
    if isinstance(item, Image.Image):
        return window_views(item, size, levels, first_level)
    try:
        data = Path(item).read_bytes()
    except OSError as exc:
        raise OffshelfError(f"cannot read image {item}: {exc.strerror or exc}") from None
    try:
        image = decode_image(data, min_size=_min_decode_size(size, levels))
    except ImageDecodeError as exc:
        raise OffshelfError(f"cannot read image {item}: {exc.reason}") from None
    return window_views(image, size, levels, first_level)


def window_descriptors(
    embedder: Embedder,
    images: Sequence[str | Path | Image.Image],
    *,
    levels: int = DEFAULT_LEVELS,
    first_level: int = 1,
    batch_size: int = 8,
    workers: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Descriptors of every window of every image, `(n_images, n_windows(levels, first_level), dim)` float32.

    Each window goes through the embedder's model, layer and pooling as one view (the embedder's own
    `augment` is not used: the windows are the views). Files are decoded in a thread pool of `workers`
    (default: the number of cores) while the calling thread runs the network on `batch_size` images
    (`batch_size * n_windows` crops) at a time. OffshelfError names the first image that cannot be read.
    """
    from offshelf.models.runtime import available_cores

    if batch_size < 1:
        raise OffshelfError(f"batch size must be at least 1, got {batch_size}")
    size, count = embedder.size, n_windows(levels, first_level)
    out = np.empty((len(images), count, embedder.config.dim), np.float32)
    n_workers = workers or available_cores()

    def loaded(pool: ThreadPoolExecutor) -> Iterator[np.ndarray]:
        pending: deque[Future[np.ndarray]] = deque()
        for item in images:
            pending.append(pool.submit(_load_windows, item, size, levels, first_level))
            if len(pending) >= 2 * batch_size + n_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    with ThreadPoolExecutor(n_workers, thread_name_prefix="offshelf-windows") as pool, \
            tqdm(total=len(images), unit="img", desc="windows", disable=not progress, dynamic_ncols=True) as bar:
        batch: list[np.ndarray] = []
        done = 0
        for views in loaded(pool):
            batch.append(views)
            if len(batch) == batch_size:
                out[done : done + len(batch)] = embedder.view_features(batch)
                done += len(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            out[done : done + len(batch)] = embedder.view_features(batch)
            bar.update(len(batch))
    return out


def _flatten(windows: np.ndarray, image_ids: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """`(n_images, W, d)` windows + `(n_images,)` ids, or `(M, d)` windows + `(M,)` per-window image ids,
    as `(M, d)` float32 and `(M,)` int64."""
    windows = np.asarray(windows, dtype=np.float32)
    ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
    if windows.ndim == 3:
        if len(ids) != len(windows):
            raise OffshelfError(f"{len(windows)} images of windows but {len(ids)} image ids")
        ids = np.repeat(ids, windows.shape[1])
        windows = windows.reshape(-1, windows.shape[-1])
    if windows.ndim != 2 or len(ids) != len(windows):
        raise OffshelfError(f"expected (n, W, d) or (M, d) windows with matching ids, got {windows.shape}, {ids.shape}")
    if (ids < 0).any():
        raise OffshelfError("image ids must be non-negative (-1 marks missing results)")
    return windows, ids


def max_over_windows(queries: np.ndarray, windows: np.ndarray,
                     image_ids: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force reference: `(ids, scores)` with `ids` the distinct image ids (sorted) and `scores[q, i]` =
    max over the windows of image `ids[i]` of the cosine between query q and the window."""
    flat, owner = _flatten(windows, image_ids)
    sims = l2_normalize(np.atleast_2d(queries)) @ l2_normalize(flat).T
    ids, column = np.unique(owner, return_inverse=True)
    scores = np.full((sims.shape[0], len(ids)), -np.inf, np.float32)
    for j in range(len(ids)):
        scores[:, j] = sims[:, column == j].max(axis=1)
    return ids, scores


class SpatialIndex:
    """Multi-vector cosine index: several window vectors per image, an image scored by its best window.

        index = SpatialIndex.build(window_descriptors(embedder, paths), image_ids)
        scores, ids = index.search(query_vectors, k=10)   # (nq, k) each; ids -1 / scores -inf pad

    `kind` and `index_params` choose the underlying offshelf index (`flat` = exact; `hnsw`, `ivfpq`,
    `binary` with their parameters, optionally `pca`/`whiten`). Searching is thread-safe; `add` is not
    meant to run concurrently with searches.
    """

    def __init__(self, kind: str = "flat", **index_params: Any) -> None:
        self.kind = kind
        self.index_params = index_params
        self._index: VectorIndex | None = None
        self._owner = np.empty(0, np.int64)  # image id of each window position

    @classmethod
    def build(cls, windows: np.ndarray, image_ids: np.ndarray | Sequence[int], kind: str = "flat",
              **index_params: Any) -> SpatialIndex:
        """An index over `windows` `(n_images, W, d)` with `image_ids` `(n_images,)` (or `(M, d)` + `(M,)`)."""
        index = cls(kind, **index_params)
        index.add(windows, image_ids)
        return index

    def add(self, windows: np.ndarray, image_ids: np.ndarray | Sequence[int]) -> None:
        """Add windows of images (the first call trains the underlying index on them). Windows added later
        under an image id already present are added to that image's windows."""
        from offshelf.index import build_index

        flat, owner = _flatten(windows, image_ids)
        if not len(flat):
            return
        positions = np.arange(len(self._owner), len(self._owner) + len(flat), dtype=np.int64)
        if self._index is None:
            self._index = build_index(flat, positions, self.kind, **self.index_params)
        else:
            self._index.add(flat, positions)
        self._owner = np.concatenate([self._owner, owner])

    @property
    def n_windows(self) -> int:
        return len(self._owner)

    @property
    def n_images(self) -> int:
        return len(np.unique(self._owner))

    @property
    def bytes_per_image(self) -> float:
        """Memory of the underlying index (see `VectorIndex.bytes_per_vector`) per image, plus the 8-byte
        window-to-image map."""
        if self._index is None or not self.n_images:
            return 0.0
        return (self._index.bytes_per_vector + 8) * self.n_windows / self.n_images

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """`(scores float32 (nq, k), image ids int64 (nq, k))`, best first: each image's best window score."""
        if k < 1:
            raise OffshelfError(f"k must be at least 1, got {k}")
        x = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        scores = np.full((len(x), k), -np.inf, np.float32)
        ids = np.full((len(x), k), -1, np.int64)
        if self._index is None:
            return scores, ids
        total = self.n_windows
        depth = min(total, max(4 * k, k + 32))
        pending = np.arange(len(x))
        while len(pending):
            found_scores, positions = self._index.search(x[pending], depth)
            unfinished = []
            for row, query in enumerate(pending):
                valid = positions[row] >= 0
                owners = self._owner[positions[row][valid]]
                _, first = np.unique(owners, return_index=True)
                first.sort()  # each image at its best (first) window, in rank order
                if len(first) < k and depth < total:
                    unfinished.append(query)
                    continue
                take = first[:k]
                ids[query, : len(take)] = owners[take]
                scores[query, : len(take)] = found_scores[row][valid][take]
            pending = np.asarray(unfinished, dtype=np.int64)
            depth = min(total, depth * 4)
        return scores, ids
