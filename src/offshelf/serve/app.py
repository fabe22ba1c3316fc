"""`create_app`: the FastAPI application of one served store (routers, dependencies, limits, metrics, page)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from offshelf._version import __version__
from offshelf.models.runtime import available_cores
from offshelf.serve.batching import DynamicBatcher
from offshelf.serve.config import ServeConfig
from offshelf.serve.errors import install_error_handlers
from offshelf.serve.metrics import Metrics, MetricsMiddleware
from offshelf.serve.routes import embed, items, operations, page, search
from offshelf.serve.service import Service

DESCRIPTION = """Search a feature store by image or by item, embed and classify images, add and remove items.

Write endpoints need header `X-API-Key` when the server was started with `OFFSHELF_API_KEY` set. Every bad
request gets a 4xx with `{"detail": "<what is wrong>"}`; no request names a path on disk."""


def create_app(config: ServeConfig, service: Service | None = None) -> FastAPI:
    """The app serving `config.store`. The store (and probe) load now; the model loads in the background
    once the app starts (`/readyz` says when), so a model that fails to load never takes the server down."""
    service = service or Service(config)
    metrics = Metrics()
    metrics.track_index(lambda: len(service))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.get_running_loop().run_in_executor(None, service.load_model)
        batcher = DynamicBatcher(service.require_embedder, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                                 max_pixels=config.max_pixels, workers=config.workers or available_cores(),
                                 observe=metrics.observe_batch)
        batcher.start()
        app.state.batcher = batcher
        try:
            yield
        finally:
            await batcher.close()
            await loading

    app = FastAPI(title="offshelf", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  max_body_size=config.max_body_bytes)
    app.state.service, app.state.metrics = service, metrics
    install_error_handlers(app)
    for module in (search, embed, items, operations, page):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
