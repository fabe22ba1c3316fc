"""The `Embedder`: one model, layer, pooling and set of views, from decoded images to descriptors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from offshelf.errors import OffshelfError
from offshelf.extract.pooling import Pooling
from offshelf.images import VIEW_COUNTS, Augment, ImageDecodeError, decode_image, make_views, read_file, views_min_size
from offshelf.models import ModelSpec, check_precision, load_backbone, resolve_spec
from offshelf.store import StoreConfig


def make_config(spec: ModelSpec, layer: str | None = None, pool: str | None = None, augment: str = "none",
                precision: str = "fp32", calibration: str = "") -> StoreConfig:
    """Validate a model/layer/pooling/views/precision choice and describe the features it makes (`calibration`:
    an int8 graph's calibration set, `offshelf.models.quantize.calibration_sha256`)."""
    chosen = spec.layer(layer)
    if augment not in VIEW_COUNTS:
        raise OffshelfError(f"unknown augment {augment!r}; choose from {', '.join(VIEW_COUNTS)}")
    if chosen.kind == "vector":
        if pool not in (None, "none"):
            raise OffshelfError(f"layer {chosen.name!r} of {spec.name} is already a vector; pooling does not apply")
        pool_name = "none"
    else:
        try:
            pool_name = Pooling.parse(pool or "gap").name
        except ValueError as exc:
            raise OffshelfError(str(exc)) from None
    check_precision(precision)
    return StoreConfig(spec.name, chosen.name, pool_name, augment, chosen.channels, spec.to_dict(), precision,
                       calibration if precision == "int8" else "")


class Embedder:
    """Computes a store's kind of descriptor: views -> backbone layer -> pooling -> mean over views.

    Thread-safe for concurrent `embed_*` calls (ONNX Runtime sessions are). The model is the registry's for
    `config.model`; the spec recorded in `config` (from a store manifest or a map) is only checked against it
    (`offshelf.models.resolve_spec`), so a file cannot choose what code runs.
    """

    def __init__(self, config: StoreConfig, *, threads: int | None = None, origin: str | Path | None = None,
                 calibrate_on: str | Path | None = None) -> None:
        """`origin` is the file `config` was read from (a store manifest), named in errors; `calibrate_on` the
        images an int8 graph not yet cached is calibrated on (they must be the set `config.calibration` names)."""
        self.config = config
        self.spec = resolve_spec(config.model, config.model_spec, origin)
        self.layer = self.spec.layer(config.layer)
        self.pooling = None if config.pool == "none" else Pooling.parse(config.pool)
        self.augment: Augment = config.augment  # type: ignore[assignment]
        self.size = self.spec.preprocessing.size
        self.resize, self.resample = self.spec.preprocessing.resize, self.spec.preprocessing.resample
        self.min_size = views_min_size(self.size, self.augment, self.resample)
        self.backbone = load_backbone(self.spec, threads=threads, precision=config.precision,
                                      calibration=config.calibration or None, calibrate_on=calibrate_on)

    def views(self, image: Image.Image) -> np.ndarray:
        """The `(V, size, size, 3)` uint8 views of one decoded image."""
        return make_views(image, self.size, self.augment, resize=self.resize, resample=self.resample)

    def view_features(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """One float32 descriptor per view, `(N, V, dim)`: for test-time combinations such as summing
        a probe's scores over views (Razavian et al.) rather than averaging descriptors."""
        if not views:
            return np.empty((0, VIEW_COUNTS[self.augment], self.config.dim), np.float32)
        features = self.backbone.forward(np.concatenate(views), [self.layer.name])[self.layer.name]
        if self.pooling is not None:
            features = self.pooling(features)
        return features.reshape(len(views), -1, features.shape[-1])

    def embed_views(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """One float32 descriptor per image, the mean over its views, `(N, dim)`."""
        return self.view_features(views).mean(axis=1, dtype=np.float32)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Descriptors of already decoded images (RGB PIL images)."""
        return self.embed_views([self.views(image) for image in images])

    def embed_files(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Descriptors of image files; OffshelfError names the first file that cannot be read."""
        views = []
        for path in paths:
            try:
                views.append(self.views(decode_image(read_file(path).data, min_size=self.min_size)))
            except ImageDecodeError as exc:
                raise OffshelfError(f"cannot read image {path}: {exc.reason}") from None
        return self.embed_views(views)
