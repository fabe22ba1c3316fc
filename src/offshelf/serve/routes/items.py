"""`/v1/items`: add an uploaded image, read an item's metadata and thumbnail, remove an item."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Path, Query, Response
from fastapi.concurrency import run_in_threadpool

from offshelf.serve.deps import BatcherDep, ImageDep, ServiceDep, require_write_key
from offshelf.serve.schemas import ERRORS, ID_DESCRIPTION, MAX_ID, ItemInfo, ItemOut, RemovedOut

router = APIRouter(prefix="/v1/items", tags=["items"])
ItemPath = Annotated[int, Path(ge=0, le=MAX_ID, description=ID_DESCRIPTION)]
WriteKey = Depends(require_write_key)


@router.post("", response_model=ItemOut, status_code=201, responses=ERRORS, dependencies=[WriteKey],
             summary="Add an image to the store (needs X-API-Key when the server has a key)")
async def add_item(data: ImageDep, service: ServiceDep, batcher: BatcherDep,
                   name: Annotated[str | None, Form(max_length=255)] = None) -> ItemOut:
    """Keeps the upload in the store's `uploads/` folder under a name the server makes (its sha256 prefix and
    the client's `name` in safe letters), embeds it and indexes it; searchable when this returns."""
    vector = await batcher.embed(data)
    return ItemOut(**await run_in_threadpool(service.add, data, vector, name))


@router.get("/{item_id}", response_model=ItemInfo, responses=ERRORS, summary="An item's metadata")
def get_item(item_id: ItemPath, service: ServiceDep) -> ItemInfo:
    return ItemInfo(**service.item(item_id))


@router.get("/{item_id}/thumbnail", response_class=Response, responses={
    **ERRORS, 200: {"content": {"image/jpeg": {}}, "description": "a JPEG thumbnail"}},
    summary="A JPEG thumbnail of a stored item (made on demand, cached)")
def thumbnail(item_id: ItemPath, service: ServiceDep,
              size: Annotated[int, Query(ge=16, le=1024, description="longest side in pixels")] = 256) -> Response:
    return Response(service.thumbnail(item_id, size), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})


@router.delete("/{item_id}", response_model=RemovedOut, responses=ERRORS, dependencies=[WriteKey],
               summary="Remove an item from the store and its index (needs X-API-Key when the server has a key)")
def remove_item(item_id: ItemPath, service: ServiceDep) -> RemovedOut:
    return RemovedOut(**service.remove(item_id))
