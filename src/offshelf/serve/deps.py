"""Dependencies of the routes: the service, the write key, and the uploaded image read within its limit."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, File, Header, HTTPException, Request, UploadFile

from offshelf.serve.batching import DynamicBatcher
from offshelf.serve.config import ServeConfig
from offshelf.serve.service import Service


def get_service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


def get_batcher(request: Request) -> DynamicBatcher:
    service: Service = request.app.state.service
    service.require_embedder()  # 503 naming why while the model is loading or failed
    return request.app.state.batcher  # type: ignore[no-any-return]


ServiceDep = Annotated[Service, Depends(get_service)]
BatcherDep = Annotated[DynamicBatcher, Depends(get_batcher)]


def require_write_key(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """Writes need header X-API-Key when the server has a key (401 without it, 403 with a wrong one)."""
    config: ServeConfig = request.app.state.service.config
    if config.api_key is None:
        return
    if not x_api_key:
        raise HTTPException(401, "this server needs an API key for writes: send it in header X-API-Key",
                            headers={"WWW-Authenticate": "X-API-Key"})
    if not secrets.compare_digest(x_api_key.encode(), config.api_key.encode()):
        raise HTTPException(403, "the API key in header X-API-Key is not the server's")


async def read_image(upload: UploadFile, limit: int) -> bytes:
    """The bytes of an uploaded image: 413 above `limit`, 400 when empty (its type is sniffed later)."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"the image is larger than the server's limit of {limit} bytes")
    if not data:
        raise HTTPException(400, "the image part is empty")
    return data


async def image_bytes(request: Request, image: Annotated[UploadFile, File(description="an image file")]) -> bytes:
    return await read_image(image, request.app.state.service.config.max_upload_bytes)


ImageDep = Annotated[bytes, Depends(image_bytes)]
