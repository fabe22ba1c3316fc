"""The offline real photos and the reproducible photo sets built from them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.datasets import build_photo_set, build_wallpaper_set, wallpapers
from benchmarks.datasets import photos as photos_mod
from offshelf.images import real_photos, samples


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_real_photos_are_decodable_rgb_photos():
    found = real_photos()
    assert len(found) >= 8  # scikit-image is a dependency: its 8 colour photos are always there
    assert found == real_photos()  # deterministic order
    assert len(set(found)) == len(found)
    for path in found:
        assert path.is_file()
        with Image.open(path) as im:
            assert im.mode == "RGB", path
            pixels = np.asarray(im)
        assert min(pixels.shape[:2]) >= 256, path
        assert pixels.std() > 10, path  # not a flat or near-flat synthetic image
    names = {p.name for p in found}
    assert not names & {"chessboard_RGB.png", "logo.png", "phantom.png", "page.png", "text.png", "horse.png"}


def test_real_photos_grayscale_adds_gray_ones_after_colour():
    colour, every = real_photos(), real_photos(grayscale=True)
    assert set(colour) < set(every)
    extra = [p for p in every if p not in colour]
    assert extra and all(p.name in samples.SKIMAGE_GRAY_PHOTOS for p in extra)


INSTALL_WALLPAPERS = (
    "no wallpaper photos under /usr/share/wallpapers: install Debian's plasma-workspace-wallpapers "
    "(and gnome-backgrounds): apt-get install plasma-workspace-wallpapers gnome-backgrounds"
)


def _name_pixels(path: Path) -> tuple[int, int]:
    width, height = (int(v) for v in path.stem.split("x"))
    return width * height, max(width, height)


def _largest_plasma(theme: Path, folder: str) -> Path | None:
    """The largest `WxH.<raster>` file of a Plasma theme's folder, read off the names on disk."""
    files = [p for p in (theme / "contents" / folder).glob("*x*.*")
             if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"} and p.stem.replace("x", "").isdigit()]
    return max(files, key=lambda p: (_name_pixels(p)[0], p.name)) if files else None


def test_wallpapers_are_the_installed_photo_themes():
    """The wallpaper packages are installed on this machine (the test run installs them): the eleven Plasma
    photo themes must all be found, each as its largest file, in theme order, and nothing else."""
    plasma = photos_mod.PLASMA_DIR
    assert plasma.is_dir(), INSTALL_WALLPAPERS
    on_disk = sorted(theme.name for theme in plasma.iterdir() if theme.is_dir())
    missing = sorted(photos_mod.PLASMA_PHOTO_THEMES - set(on_disk))
    assert not missing, f"photo themes {missing} missing: {INSTALL_WALLPAPERS}"
    expected = [_largest_plasma(plasma / name, "images") for name in on_disk if name in photos_mod.PLASMA_PHOTO_THEMES]
    found = wallpapers()
    assert found == expected and len(found) == 11
    assert all(_name_pixels(p)[1] >= 1000 for p in found)
    assert wallpapers() == found  # deterministic


def test_wallpapers_with_art_are_every_installed_raster():
    """include_art: every Plasma theme's largest image (and dark variant), then the GNOME rasters with a long
    side of at least 1000 px, by name; no SVG or XML."""
    plasma, gnome = photos_mod.PLASMA_DIR, photos_mod.GNOME_DIR
    assert plasma.is_dir(), INSTALL_WALLPAPERS
    assert gnome.is_dir(), "no /usr/share/backgrounds/gnome: apt-get install gnome-backgrounds"
    expected = []
    for theme in sorted((t for t in plasma.iterdir() if t.is_dir()), key=lambda t: t.name):
        for folder in ("images", "images_dark"):
            largest = _largest_plasma(theme, folder)
            if largest is not None and _name_pixels(largest)[1] >= 1000:
                expected.append(largest)
    gnome_rasters = [p for p in sorted(gnome.iterdir(), key=lambda p: p.name)
                     if p.is_file() and p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}]
    assert gnome_rasters, "gnome-backgrounds ships WebP backgrounds; none found: apt-get install gnome-backgrounds"
    for path in gnome_rasters:
        with Image.open(path) as im:
            if max(im.size) >= 1000:
                expected.append(path)
    everything = wallpapers(include_art=True)
    assert everything == expected
    assert set(wallpapers()) < set(everything)
    assert any(p.parent.name == "images_dark" for p in everything) and any(p.parent == gnome for p in everything)
    for path in wallpapers():
        parts = path.parts
        assert parts[parts.index("wallpapers") + 1] in photos_mod.PLASMA_PHOTO_THEMES


def _sizes(paths):
    out = []
    for path in paths:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            out.append(im.size)
    return out


def test_build_photo_set_is_deterministic_and_in_range(tmp_path):
    first = build_photo_set(tmp_path / "a", n=5, seed=3)
    again = build_photo_set(tmp_path / "b", n=5, seed=3)
    other = build_photo_set(tmp_path / "c", n=5, seed=4)
    assert [p.name for p in first] == [f"photo_{i:05d}.jpg" for i in range(5)]
    assert [_sha(p) for p in first] == [_sha(p) for p in again]
    assert [_sha(p) for p in first] != [_sha(p) for p in other]
    assert len({_sha(p) for p in first}) == 5  # distinct photos, not copies
    for w, h in _sizes(first):
        assert 1024 <= max(w, h) <= 1600
    # a smaller n is a prefix of a larger set
    prefix = build_photo_set(tmp_path / "d", n=2, seed=3)
    assert [_sha(p) for p in prefix] == [_sha(p) for p in first[:2]]


def test_build_photo_set_is_idempotent_and_repairs(tmp_path):
    out = tmp_path / "set"
    paths = build_photo_set(out, n=3, long_side=(200, 260), seed=1)
    for w, h in _sizes(paths):
        assert 200 <= max(w, h) <= 260
    stamps = [p.stat().st_mtime_ns for p in paths]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["seed"] == 1 and len(manifest["files"]) == 3

    assert build_photo_set(out, n=3, long_side=(200, 260), seed=1) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps  # reused, not rewritten

    good = _sha(paths[1])
    paths[1].write_bytes(b"damaged")
    assert _sha(build_photo_set(out, n=3, long_side=(200, 260), seed=1)[1]) == good

    # other parameters replace the set; files that no longer belong are removed
    smaller = build_photo_set(out, n=2, long_side=(200, 260), seed=2)
    assert sorted(p.name for p in out.glob("photo_*.jpg")) == [p.name for p in smaller]
    assert not list(out.glob(".tmp-*"))


def test_build_photo_set_with_explicit_sources(tmp_path):
    src = real_photos()[:2]
    paths = build_photo_set(tmp_path, n=4, long_side=(128, 160), sources=src)
    assert len(paths) == 4
    with pytest.raises(RuntimeError, match=r"^no source photos: neither scikit-image's photos nor wallpapers"):
        build_photo_set(tmp_path / "none", n=1, sources=[])
    with pytest.raises(ValueError, match=r"^bad build_photo_set arguments: n=1, long_side=\(300, 200\), quality=90$"):
        build_photo_set(tmp_path / "bad", n=1, long_side=(300, 200), sources=src)


def test_build_wallpaper_set_full_resolution(tmp_path):
    sources = wallpapers()
    assert sources, INSTALL_WALLPAPERS
    with Image.open(sources[0]) as im:
        source_size = im.size
    paths = build_wallpaper_set(tmp_path, n=len(sources) + 1, include_art=False, min_long_side=2000)
    sizes = _sizes(paths)
    assert sizes[0] == source_size  # full resolution, not resized
    assert len({_sha(p) for p in paths}) == len(paths)  # the extra round is a mirrored variant
    assert build_wallpaper_set(tmp_path, n=len(sources) + 1, include_art=False, min_long_side=2000) == paths
    with pytest.raises(RuntimeError, match=r"^no wallpaper with a long side >= 100000 px \(install Debian's "
                                           r"plasma-workspace-wallpapers"):
        build_wallpaper_set(tmp_path / "x", include_art=False, min_long_side=100_000)
