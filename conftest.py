"""Shared fixtures: real photos from scikit-image, small photo sets built from them, stores."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.datasets.photos import build_photo_set
from offshelf.images import real_photos


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """The real photos bundled with scikit-image (and scikit-learn)."""
    found = real_photos()
    assert len(found) >= 10, found
    return found


@pytest.fixture(scope="session")
def small_photo_set(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """160 distinct small JPEGs (random crops of the real photos), built once per test session."""
    return build_photo_set(tmp_path_factory.mktemp("photo-set"), n=160, long_side=(200, 320), seed=7)


@pytest.fixture
def photo_dir(tmp_path: Path, photos: list[Path]) -> Path:
    """A folder tree holding copies of the real photos (some in a nested folder)."""
    root = tmp_path / "photos"
    for i, photo in enumerate(photos):
        dest = root / ("nested/deeper" if i % 3 == 0 else "") / photo.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, dest)
    return root
