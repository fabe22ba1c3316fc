"""`serve`: run the app under uvicorn until interrupted."""

from __future__ import annotations

from collections.abc import Callable

from offshelf.serve.app import create_app
from offshelf.serve.config import ServeConfig
from offshelf.serve.service import Service


def serve(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000,
          on_ready: Callable[[Service, str], None] | None = None, log_level: str = "warning") -> None:
    """Load the store, then serve it on `host:port` (blocks). `on_ready(service, url)` runs just before
    uvicorn starts listening (with the store loaded; the model then loads in the background)."""
    import uvicorn

    service = Service(config)
    app = create_app(config, service)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"  # an IPv6 address goes in brackets
    if on_ready is not None:
        on_ready(service, url)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
