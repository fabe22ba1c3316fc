"""The HTTP service (`offshelf serve`): a FastAPI app over one feature store, with dynamic batching and a page.

    from offshelf.serve import ServeConfig, create_app, serve
    app = create_app(ServeConfig(store="feats/"))     # an ASGI app (uvicorn, or FastAPI's TestClient)
    serve(ServeConfig(store="feats/"), port=8000)    # blocks; uvicorn on 127.0.0.1

The contract (routes, shapes, statuses) is in docs/serve.md; the OpenAPI schema at /openapi.json.
"""

from offshelf.serve.app import create_app
from offshelf.serve.batching import DynamicBatcher
from offshelf.serve.config import API_KEY_ENV, ServeConfig
from offshelf.serve.runner import serve
from offshelf.serve.service import Service

__all__ = ["API_KEY_ENV", "DynamicBatcher", "ServeConfig", "Service", "create_app", "serve"]
