"""Errors as HTTP answers: every failure is a JSON body `{"detail": "<one line>"}` with a fitting status.

Bad input is always a 4xx: a request that fails validation 422, an image that cannot be decoded 422, one with
too many pixels 413, an unknown id 404, a store or index locked by another process 409, other `OffshelfError`s
400. A part that is not loaded (the model) is 503. Anything else is a bug: 500 with its type, no traceback.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from offshelf.errors import BusyError, OffshelfError
from offshelf.images import ImageDecodeError
from offshelf.serve.service import ItemNotFound, ModelUnavailable, NoProbe


def error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def describe_validation(errors: list[dict]) -> str:  # type: ignore[type-arg]
    """One line naming each invalid field: `k: Input should be greater than or equal to 1`."""
    parts = []
    for item in errors:
        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path", "form"))
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else str(item.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, describe_validation(list(exc.errors())))

    @app.exception_handler(ImageDecodeError)
    async def _decode(_: Request, exc: ImageDecodeError) -> JSONResponse:
        status = 413 if exc.reason.startswith("too many pixels") else 422
        return error(status, f"the upload is not a usable image: {exc.reason}")

    @app.exception_handler(OffshelfError)
    async def _offshelf(_: Request, exc: OffshelfError) -> JSONResponse:
        status = (404 if isinstance(exc, (ItemNotFound, NoProbe)) else 409 if isinstance(exc, BusyError)
                  else 503 if isinstance(exc, ModelUnavailable) else 400)
        return error(status, str(exc))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error: {type(exc).__name__}")
