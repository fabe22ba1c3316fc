"""`POST /v1/embed` and `POST /v1/classify`: an uploaded image's descriptor, and the probe's labels for it."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from offshelf.serve.deps import BatcherDep, ImageDep, ServiceDep
from offshelf.serve.schemas import ERRORS, ClassifyOut, EmbedOut

router = APIRouter(tags=["features"])


@router.post("/v1/embed", response_model=EmbedOut, responses=ERRORS, summary="The descriptor of an uploaded image")
async def embed(data: ImageDep, service: ServiceDep, batcher: BatcherDep) -> EmbedOut:
    """The image's descriptor, exactly as the store's items were embedded (model, layer, pooling, views)."""
    started = time.perf_counter()
    vector = await batcher.embed(data)
    config = service.store.config
    return EmbedOut(model=config.model, layer=config.layer, pool=config.pool, augment=config.augment, dim=config.dim,
                    embedding=vector.tolist(), took_ms=(time.perf_counter() - started) * 1000)


@router.post("/v1/classify", response_model=ClassifyOut, responses=ERRORS,
             summary="The probe's labels for an uploaded image (needs --probe)")
async def classify(data: ImageDep, service: ServiceDep, batcher: BatcherDep) -> ClassifyOut:
    """Every class of the probe with its score (decision function) and probability, best first."""
    started = time.perf_counter()
    service.require_probe()  # before the model runs
    vector = await batcher.embed(data)
    labels = await run_in_threadpool(service.classify, vector)
    return ClassifyOut(labels=labels, took_ms=(time.perf_counter() - started) * 1000)
