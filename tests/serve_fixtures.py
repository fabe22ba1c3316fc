"""Fixtures of the service tests: a store of the real photos (embedded once per session), copies of it,
edited copies of a photo as queries, and an app or a server on a loopback port."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.harness.serve_process import ServerProcess
from offshelf.extract import embed
from offshelf.images.copies import central_crop
from offshelf.store import FeatureStore


@pytest.fixture(scope="session")
def photo_store(tmp_path_factory: pytest.TempPathFactory, photos: list[Path]) -> Path:
    """A store of the real photos (copied into a folder of their own), embedded once; tests copy it."""
    folder = tmp_path_factory.mktemp("serve-photos")
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    store = folder.parent / (folder.name + "-store")
    embed([folder], store, progress=False)
    return store


@pytest.fixture
def store_copy(tmp_path: Path, photo_store: Path) -> Path:
    """A private copy of the photo store (its items still point at the shared photo folder)."""
    return Path(shutil.copytree(photo_store, tmp_path / "store"))


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def edited_copy(path: str | Path) -> bytes:
    """A 70 % central crop of a photo, as PNG bytes: a query whose original should come first."""
    with Image.open(path) as opened:
        return png_bytes(central_crop(opened.convert("RGB"), 0.7))


def store_files(store: Path) -> dict[str, bytes]:
    """Every file of a store (and its index and uploads) with its bytes: to show a request changed nothing."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def exact_top(store: Path, query: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    """The reference: ids and cosine scores of the k nearest stored vectors, by numpy brute force."""
    ids, _, vectors = FeatureStore.open(store).vectors()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")[:k]
    return ids[order].tolist(), scores[order]


@pytest.fixture(scope="module")
def live_store(tmp_path_factory: pytest.TempPathFactory, photo_store: Path) -> Path:
    """A copy of the photo store for one module's server (its tests may add items)."""
    return Path(shutil.copytree(photo_store, tmp_path_factory.mktemp("live") / "store"))


@pytest.fixture(scope="module")
def live_server(live_store: Path) -> Iterator[ServerProcess]:
    """One `offshelf serve` per module (starting one loads the model: seconds)."""
    server = ServerProcess(live_store, "--max-batch", "8", "--max-wait-ms", "20")
    yield server
    server.stop()
