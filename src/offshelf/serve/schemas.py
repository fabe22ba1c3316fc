"""The request and answer shapes of the HTTP API (pydantic models; they are the OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from offshelf.serve.config import MAX_K

MAX_ID = 2**63 - 1
ID_DESCRIPTION = "an item id (the first 63 bits of the sha256 of its path)"


class SearchOptions(BaseModel):
    k: int = Field(10, ge=1, le=MAX_K, description="how many results")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, allow_inf_nan=False,
                                    description="drop results whose cosine similarity is below this")
    prefix: str | None = Field(None, max_length=4096, description="keep only items whose path starts with this")


class IdSearch(SearchOptions):
    id: int = Field(ge=0, le=MAX_ID, description=ID_DESCRIPTION)


class TextSearch(SearchOptions):
    text: str = Field(min_length=1, max_length=1000, description="a description of the images to find "
                      "(stores of a CLIP-type model's image embeddings; see GET /v1/stats `text`)")


class HitOut(BaseModel):
    rank: int
    id: int
    path: str
    score: float


class SearchOut(BaseModel):
    hits: list[HitOut]
    took_ms: float
    k: int
    query: dict[str, int | str]


class EmbedOut(BaseModel):
    model: str
    layer: str
    pool: str
    augment: str
    dim: int
    embedding: list[float]
    took_ms: float


class LabelOut(BaseModel):
    label: str
    score: float
    probability: float


class ClassifyOut(BaseModel):
    labels: list[LabelOut]
    took_ms: float


class ItemOut(BaseModel):
    id: int
    path: str


class ItemInfo(ItemOut):
    name: str
    uploaded: bool
    exists: bool
    bytes: int | None


class RemovedOut(ItemOut):
    removed: bool


class ErrorOut(BaseModel):
    detail: str


ERRORS = {status: {"model": ErrorOut} for status in (400, 401, 403, 404, 409, 413, 415, 422, 503)}
