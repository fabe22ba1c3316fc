"""Operations: `/healthz` (alive), `/readyz` (model and index loaded), `/metrics` (Prometheus), `/v1/stats`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from offshelf.serve.deps import ServiceDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The model and the index are loaded (503 with the reason otherwise)",
            responses={503: {"description": "not ready, and why"}})
def readyz(service: ServiceDep) -> JSONResponse:
    body: dict[str, Any] = {"ready": service.embedder is not None, "items": len(service),
                            "model": service.store.config.model}
    if service.embedder is None:
        body["reason"] = f"model failed to load: {service.model_error}" if service.model_error else "model loading"
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    data, content_type = request.app.state.metrics.render()
    return Response(data, media_type=content_type)


@router.get("/v1/stats", summary="Items, model, index kind and its measured recall")
async def stats(service: ServiceDep) -> dict[str, Any]:
    return await run_in_threadpool(service.stats)
