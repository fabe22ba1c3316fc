"""offshelf's stages on an existing distributed engine, Ray: embedding with Ray Data over an actor pool
(`embed_on_ray`) and sharded index builds (`build_index_on_ray`). Ray is imported only when they run, and FAISS
only when an index is built."""

from typing import Any

from offshelf.distributed.embed import embed_on_ray

__all__ = ["build_index_on_ray", "embed_on_ray"]


def __getattr__(name: str) -> Any:
    if name == "build_index_on_ray":
        from offshelf.distributed.index import build_index_on_ray

        return build_index_on_ray
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
