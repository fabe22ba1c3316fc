"""`POST /v1/search`: by an uploaded image (multipart) or by a stored item (JSON `{"id": ...}`)."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from offshelf.serve.deps import ServiceDep, get_batcher, read_image
from offshelf.serve.errors import describe_validation
from offshelf.serve.schemas import ERRORS, IdSearch, SearchOptions, SearchOut, TextSearch

router = APIRouter(tags=["search"])

_FORM_FIELDS = {"k": {"type": "integer", "minimum": 1}, "min_score": {"type": "number", "minimum": -1, "maximum": 1},
                "prefix": {"type": "string"}}
_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {"image": {"type": "string", "format": "binary"}, **_FORM_FIELDS}}},
        "application/json": {"schema": {"oneOf": [IdSearch.model_json_schema(), TextSearch.model_json_schema()]}},
    },
}


def _options(model: type[SearchOptions], values: Any) -> SearchOptions:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise HTTPException(422, describe_validation(list(exc.errors()))) from None


@router.post("/v1/search", response_model=SearchOut, responses=ERRORS, openapi_extra={"requestBody": _BODY},
             summary="Search by an uploaded image or by a stored item")
async def search(request: Request, service: ServiceDep) -> SearchOut:
    """Multipart: a file part `image` and optional fields `k`, `min_score`, `prefix`. JSON: `{"id": ID, "k": K,
    "min_score": S, "prefix": P}`, the neighbours of a stored item (itself first), or `{"text": "...", ...}`
    for a store of a CLIP-type model's image embeddings. Hits are best first."""
    started = time.perf_counter()
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form()
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise HTTPException(422, "a multipart search needs a file part named image")
        fields = {key: value for key, value in form.items() if key in _FORM_FIELDS and value != ""}
        options = _options(SearchOptions, fields)
        data = await read_image(image, service.config.max_upload_bytes)
        vector = await get_batcher(request).embed(data)
        query: dict[str, int | str] = {"image": image.filename or "upload"}
    elif kind == "application/json":
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise HTTPException(400, "the body is not valid JSON") from None
        if isinstance(body, dict) and "text" in body and "id" not in body:
            text_options = _options(TextSearch, body)
            vector = await run_in_threadpool(service.text_vector, text_options.text)
            options, query = text_options, {"text": text_options.text}
        else:
            id_options = _options(IdSearch, body)
            vector = service.vector_of(id_options.id)
            options, query = id_options, {"id": id_options.id}
    else:
        raise HTTPException(415, "send multipart/form-data with an image part, or application/json with an id")
    hits = await run_in_threadpool(service.search, vector, options.k, options.min_score, options.prefix)
    took = (time.perf_counter() - started) * 1000
    return SearchOut(hits=[hit.to_dict() for hit in hits], took_ms=took, k=options.k, query=query)
