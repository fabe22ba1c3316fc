"""Prometheus metrics of one app: requests and latency by route and status, model batches, queue wait, index size.

`MetricsMiddleware` is plain ASGI (no per-request task or body copy); the route label is the route's template
(`/v1/items/{item_id}`), never the raw path, so ids cannot blow up the number of series.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """The app's own registry (several apps in one process do not share series)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("offshelf_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("offshelf_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("offshelf_model_batch_size", "images per model batch",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram("offshelf_model_queue_wait_seconds", "time an image waited for its batch",
                                    buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("offshelf_model_batch_duration_seconds", "model time per batch",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.index_items = Gauge("offshelf_index_items", "items searchable in the index", registry=self.registry)

    def observe_batch(self, size: int, waits: Sequence[float], seconds: float) -> None:
        self.batch_size.observe(size)
        for wait in waits:
            self.queue_wait.observe(wait)
        self.batch_seconds.observe(seconds)

    def track_index(self, count: Callable[[], int]) -> None:
        self.index_items.set_function(count)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every HTTP request and times it, labelled by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or ("/static" if scope["path"].startswith("/static/")
                                                                  else "unmatched")
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"  # clients make up methods
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)
