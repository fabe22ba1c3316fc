"""Tests of offshelf.images on real photos (scikit-image) turned into edge-case files; no mocks."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from offshelf.extract import Reader
from offshelf.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    RESAMPLE_REDUCING_GAP,
    ROTATION_DEGREES,
    VIEW_COUNTS,
    ImageDecodeError,
    crop_boxes,
    decode_image,
    find_images,
    inscribed_scale,
    make_views,
    read_file,
    views_min_size,
)

# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()  # 512 x 512 RGB


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return skdata.chelsea()  # 300 x 451 RGB (not square: orientation errors show up as shape errors)


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return skdata.coffee()  # 400 x 600 RGB


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def arr(im: Image.Image) -> np.ndarray:
    assert im.mode == "RGB"
    return np.asarray(im)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def reason_of(data: bytes, **kwargs) -> str:
    reasons = r"^(empty file|not an image|truncated image|too many pixels \(.+\))$"  # callers check which one
    with pytest.raises(ImageDecodeError, match=reasons) as info:
        decode_image(data, **kwargs)
    assert str(info.value) == info.value.reason
    return info.value.reason


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG prefix whose IHDR claims width x height RGB pixels (no pixel data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 16))


# --------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "orientation, expected",
    [
        (3, lambda a: np.rot90(a, 2)),  # rotate 180
        (6, lambda a: np.rot90(a, -1)),  # stored rotated; display = rotate 90 clockwise
        (8, lambda a: np.rot90(a, 1)),  # display = rotate 90 counter-clockwise
    ],
)
def test_exif_orientation(chelsea, orientation, expected):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(chelsea), "JPEG", quality=95, exif=exif.tobytes())
    out = arr(decode_image(data))
    want = expected(chelsea)
    assert out.shape == want.shape
    assert mad(out, want) < 3.0
    # the un-rotated array is far from the result (guards against a no-op passing by accident)
    if orientation == 3:
        assert mad(out, chelsea) > 20


def test_exif_orientation_with_draft_keeps_min_size(chelsea):
    exif = Image.Exif()
    exif[0x0112] = 6
    big = Image.fromarray(chelsea).resize((1600, 1200))
    out = decode_image(encode(big, "JPEG", quality=90, exif=exif.tobytes()), min_size=224)
    assert out.size == (300, 400)  # draft 1/4 of 1600 x 1200, then transposed
    assert min(out.size) >= 224


def test_rgba_composited_on_white(coffee):
    h, w, _ = coffee.shape
    alpha = np.full((h, w), 255, np.uint8)
    alpha[:, : w // 3] = 0
    alpha[:, w // 3 : 2 * w // 3] = 128
    rgba = np.dstack([coffee, alpha])
    out = arr(decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))).astype(int)
    assert (out[:, : w // 3] == 255).all()
    np.testing.assert_array_equal(out[:, 2 * w // 3 :], coffee[:, 2 * w // 3 :])
    half = coffee[:, w // 3 : 2 * w // 3].astype(float) * 128 / 255 + 255 * 127 / 255
    assert np.abs(out[:, w // 3 : 2 * w // 3] - half).max() <= 1.5


def test_la_composited_on_white(astronaut):
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    alpha = np.where(np.arange(512)[None, :] < 256, 0, 255).astype(np.uint8).repeat(512, 0)
    la = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])
    out = arr(decode_image(encode(la, "PNG")))
    assert (out[:, :256] == 255).all()
    for c in range(3):
        np.testing.assert_array_equal(out[:, 256:, c], gray[:, 256:])


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(astronaut, fmt):
    pal = Image.fromarray(astronaut).quantize(64)
    idx = np.asarray(pal)
    clear = int(idx[0, 0])
    colours = np.asarray(pal.convert("RGB"))
    out = arr(decode_image(encode(pal, fmt, transparency=clear)))
    mask = idx == clear
    assert mask.sum() > 100
    assert (out[mask] == 255).all()
    np.testing.assert_array_equal(out[~mask], colours[~mask])


def test_palette_without_transparency(astronaut):
    pal = Image.fromarray(astronaut).quantize(64)
    out = arr(decode_image(encode(pal, "PNG")))
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))


def test_grayscale_and_bilevel(coffee):
    gray = Image.fromarray(coffee).convert("L")
    out = arr(decode_image(encode(gray, "PNG")))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], np.asarray(gray))
    bilevel = gray.convert("1")
    out = arr(decode_image(encode(bilevel, "PNG")))
    assert set(np.unique(out)) <= {0, 255}
    np.testing.assert_array_equal(out[..., 0], np.asarray(bilevel).astype(np.uint8) * 255)
    assert (out[..., 0] == out[..., 2]).all()


def test_cmyk_jpeg_close_to_original(astronaut):
    cmyk = Image.fromarray(astronaut).convert("CMYK")
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert mad(arr(decode_image(data)), astronaut) < 4.0


@pytest.mark.parametrize("fmt, dtype", [("PNG", "<u2"), ("TIFF", "<u2"), ("TIFF", ">u2")])
def test_16bit_scaled_not_clipped(fmt, dtype):
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256).astype(dtype)
    data = encode(Image.fromarray(ramp), fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = arr(decode_image(data))[..., 0].ravel().astype(int)
    assert out[0] == 0 and out[65535] == 255 and out[32768] == 128
    np.testing.assert_array_equal(out, np.rint(np.arange(65536) / 257.0).astype(int))


def test_32bit_int_tiff():
    ramp = (np.arange(256 * 256, dtype=np.int32) * 1).reshape(256, 256)  # 0..65535
    data = encode(Image.fromarray(ramp), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    out = arr(decode_image(data))[..., 0].ravel()
    assert out[0] == 0 and out[-1] == 255 and abs(int(out[32768]) - 128) <= 1


def test_float_tiff():
    unit = np.linspace(0.0, 1.0, 256 * 256, dtype=np.float32).reshape(256, 256)
    data = encode(Image.fromarray(unit), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    out = arr(decode_image(data))[..., 0].astype(int)
    np.testing.assert_array_equal(out, np.rint(unit * 255).astype(int))
    # outside [0, 255]: min-max normalised, NaN does not poison the result
    wide = (unit * 4000.0 - 1000.0).copy()
    wide[0, 0] = np.nan
    out = arr(decode_image(encode(Image.fromarray(wide), "TIFF")))[..., 0]
    assert out[0, 1] <= 1 and out[-1, -1] == 255 and out[0, 0] == 0


def test_multiframe_first_frame():
    red = Image.new("RGB", (40, 30), (255, 0, 0))
    blue = Image.new("RGB", (40, 30), (0, 0, 255))
    gif = encode(red, "GIF", save_all=True, append_images=[blue])
    tif = encode(red, "TIFF", save_all=True, append_images=[blue])
    for data in (gif, tif):
        out = arr(decode_image(data))
        assert out.shape == (30, 40, 3)
        assert (out[..., 0] > 200).all() and (out[..., 2] < 50).all()


@pytest.fixture(scope="module")
def jpeg_1600(astronaut) -> bytes:
    return encode(Image.fromarray(astronaut).resize((1600, 1200), Image.Resampling.BILINEAR), "JPEG", quality=90)


def test_draft_reduces_but_keeps_min_size(jpeg_1600):
    assert decode_image(jpeg_1600).size == (1600, 1200)
    small = decode_image(jpeg_1600, min_size=224)
    assert small.size == (400, 300)  # 1/4: 1/8 would give 150 < 224 on the short side
    assert decode_image(jpeg_1600, min_size=300).size == (400, 300)
    assert decode_image(jpeg_1600, min_size=301).size == (800, 600)
    assert decode_image(jpeg_1600, min_size=1300).size == (1600, 1200)
    full = decode_image(jpeg_1600).resize((400, 300), Image.Resampling.BOX)
    assert mad(arr(small), arr(full)) < 3.0  # same picture, just DCT-scaled


def test_draft_never_upscales(chelsea):
    data = encode(Image.fromarray(chelsea), "JPEG", quality=90)
    assert decode_image(data, min_size=224).size == (451, 300)
    assert decode_image(data, min_size=1000).size == (451, 300)
    wide = encode(Image.fromarray(chelsea).resize((2000, 240)), "JPEG")
    assert decode_image(wide, min_size=224).size == (2000, 240)  # the short side forbids any reduction


def test_draft_ignored_for_png(coffee):
    assert decode_image(encode(Image.fromarray(coffee), "PNG"), min_size=100).size == (600, 400)


def test_failure_reasons(astronaut, tmp_path):
    rgb = Image.fromarray(astronaut)
    assert reason_of(b"") == "empty file"
    assert reason_of(np.random.default_rng(0).bytes(4096)) == "not an image"
    assert reason_of(b"just some text, not a picture\n" * 20) == "not an image"
    jpg = encode(rgb, "JPEG")
    assert reason_of(jpg[: len(jpg) // 2]) == "truncated image"
    png = encode(rgb, "PNG")
    assert reason_of(png[: len(png) // 2]) == "truncated image"
    assert reason_of(png[:-30]) == "truncated image"  # (missing only IEND/CRC/adler32: all pixels are there)
    # header claims far more pixels than the file holds: rejected before any decoding
    assert reason_of(png_header_only(5000, 5000), max_pixels=10_000_000) == (
        "too many pixels (5000 x 5000 > 10000000)"
    )
    assert reason_of(png_header_only(100_000, 100_000)).startswith("too many pixels")
    assert reason_of(jpg, max_pixels=1000) == "too many pixels (512 x 512 > 1000)"
    bmp = bytearray(encode(rgb, "BMP"))
    bmp[18:26] = struct.pack("<ii", 60_000, 60_000)
    assert reason_of(bytes(bmp)).startswith("too many pixels")
    assert decode_image(jpg, max_pixels=512 * 512).size == (512, 512)  # the limit is inclusive
    assert DEFAULT_MAX_PIXELS >= 50_000_000


def test_eps_is_not_rendered():
    # EPS would be rendered by Ghostscript; it is outside the decoded formats
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert reason_of(eps) == "not an image"


# --------------------------------------------------------------------------------------------- views


def test_views_min_size():
    assert views_min_size(224, "none") == 224
    assert views_min_size(224, "flip") == 224
    assert views_min_size(224, "paper") == 336
    assert views_min_size(225, "paper") == 338
    with pytest.raises(ValueError, match=r"^augment must be one of \['flip', 'none', 'paper'\], got 'bogus'$"):
        views_min_size(224, "bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize("augment", ["none", "flip", "paper"])
def test_view_shapes(coffee, augment):
    views = make_views(Image.fromarray(coffee), 64, augment)
    assert views.shape == (VIEW_COUNTS[augment], 64, 64, 3)
    assert views.dtype == np.uint8 and views.flags.c_contiguous


def test_none_is_whole_image_resized(coffee):
    im = Image.fromarray(coffee)
    view = make_views(im, 96)[0]
    want = im.resize((96, 96), Image.Resampling.BILINEAR, reducing_gap=RESAMPLE_REDUCING_GAP)
    np.testing.assert_array_equal(view, np.asarray(want))
    assert mad(view, np.asarray(im.resize((96, 96), Image.Resampling.LANCZOS))) < 3.0


def test_flip_is_mirror(coffee):
    views = make_views(Image.fromarray(coffee), 80, "flip")
    np.testing.assert_array_equal(views[0], make_views(Image.fromarray(coffee), 80)[0])
    np.testing.assert_array_equal(views[1], views[0][:, ::-1])


def test_paper_views(coffee):
    im = Image.fromarray(coffee)
    size = 96
    views = make_views(im, size, "paper")
    assert views.shape == (16, size, size, 3)
    np.testing.assert_array_equal(views[0], make_views(im, size)[0])
    for k in range(8):
        np.testing.assert_array_equal(views[k + 8], views[k][:, ::-1])
    boxes = crop_boxes(*im.size)
    assert boxes == [(0, 0, 400, 267), (200, 0, 600, 267), (0, 133, 400, 400), (200, 133, 600, 400),
                     (100, 66, 500, 333)]
    for i, box in enumerate(boxes):
        want = np.asarray(im.crop(box).resize((size, size), Image.Resampling.BILINEAR))
        assert mad(views[1 + i], want) < 1.0
        other = np.asarray(im.crop(boxes[(i + 1) % 5]).resize((size, size), Image.Resampling.BILINEAR))
        assert mad(views[1 + i], other) > 10 * mad(views[1 + i], want) + 5
    # rotations: +angle is counter-clockwise (Pillow's convention), crop inside the rotated image
    w, h = im.size
    for view, deg in ((views[6], ROTATION_DEGREES), (views[7], -ROTATION_DEGREES)):
        k = inscribed_scale(w, h, deg) * (1 - 2 / size)
        box = (w / 2 - k * w / 2, h / 2 - k * h / 2, w / 2 + k * w / 2, h / 2 + k * h / 2)

        def reference(angle: float) -> np.ndarray:
            rotated = im.rotate(angle, resample=Image.Resampling.BICUBIC)
            return np.asarray(rotated.resize((size, size), Image.Resampling.LANCZOS, box=box))

        # (~2.5 of the difference is bilinear vs Lanczos, as for the unrotated view)
        assert mad(view, reference(deg)) < 5.0
        assert mad(view, reference(-deg)) > 4 * mad(view, reference(deg))


def test_paper_rotations_have_no_filled_corners():
    for colour in ((0, 0, 0), (255, 255, 255), (10, 200, 30)):
        views = make_views(Image.new("RGB", (640, 400), colour), 64, "paper")
        assert (views == np.array(colour, np.uint8)).all()


def test_inscribed_scale():
    assert inscribed_scale(100, 100, 0) == pytest.approx(1.0)
    t = np.radians(5)
    assert inscribed_scale(100, 100, 5) == pytest.approx(1 / (np.cos(t) + np.sin(t)))
    assert inscribed_scale(300, 200, 5) == pytest.approx(inscribed_scale(300, 200, -5))


def test_make_views_accepts_other_modes(coffee):
    gray = Image.fromarray(coffee).convert("L")
    views = make_views(gray, 32, "flip")
    assert (views[..., 0] == views[..., 1]).all() and (views[..., 1] == views[..., 2]).all()
    with pytest.raises(ValueError, match=r"^augment must be one of \['flip', 'none', 'paper'\], got 'sideways'$"):
        make_views(gray, 32, "sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^size must be >= 1, got 0$"):
        make_views(gray, 0)


# --------------------------------------------------------------------------------------------- the reader
# `offshelf.extract.Reader` is the one path from a file to views: the pipeline and the benchmarks both use it.


def test_reader_loads_hashes_and_draft_decodes(tmp_path, jpeg_1600):
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_1600)
    loaded = Reader(224).load(str(path))
    assert loaded.error is None and not loaded.unchanged
    assert loaded.path == str(path)
    assert loaded.state.sha256 == hashlib.sha256(jpeg_1600).hexdigest()
    assert loaded.state.size == len(jpeg_1600) and loaded.state.mtime_ns == path.stat().st_mtime_ns
    assert loaded.views.shape == (1, 224, 224, 3) and loaded.views.dtype == np.uint8
    # the draft-decoded result matches a full decode resized to the same size
    full = make_views(decode_image(jpeg_1600), 224)
    assert mad(loaded.views, full) < 2.0
    paper = Reader(224, "paper").load(str(path))
    assert paper.views.shape == (16, 224, 224, 3)
    assert paper.state.sha256 == loaded.state.sha256
    # a file whose bytes the store already holds is not decoded again
    assert Reader(224).load(str(path), loaded.state).unchanged


def test_reader_records_file_errors_instead_of_raising(tmp_path):
    for target in (tmp_path, tmp_path / "missing.jpg"):
        outcome = Reader(64).load(str(target))
        assert outcome.views is None and outcome.error.startswith("unreadable file: ")
    locked = tmp_path / "locked.jpg"
    locked.write_bytes(b"\xff\xd8")
    locked.chmod(0)
    try:
        if not os.access(locked, os.R_OK):  # root can read anyway
            assert Reader(64).load(str(locked)).error == "unreadable file: Permission denied"
    finally:
        locked.chmod(0o644)
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    outcome = Reader(64).load(str(text))
    assert outcome.error == "not an image" and outcome.state.sha256 == hashlib.sha256(b"hello").hexdigest()
    with pytest.raises(ImageDecodeError, match="unreadable file: "):
        read_file(tmp_path / "missing.jpg")


def test_reader_threads_match_sequential(tmp_path, astronaut, chelsea, coffee):
    paths = []
    for i, a in enumerate((astronaut, chelsea, coffee)):
        for fmt, ext in (("JPEG", "jpg"), ("PNG", "png")):
            p = tmp_path / f"{i}.{ext}"
            Image.fromarray(a).save(p, fmt)
            paths.append(str(p))
    reader = Reader(96, "paper")
    sequential = [reader.load(p).views for p in paths]
    with ThreadPoolExecutor(4) as pool:
        threaded = [outcome.views for outcome in reader.ordered(pool, [(p, None) for p in paths * 3], window=5)]
    assert len(threaded) == 3 * len(paths)
    for i, views in enumerate(threaded):
        np.testing.assert_array_equal(views, sequential[i % len(paths)])


# --------------------------------------------------------------------------------------------- find_images


@pytest.fixture()
def tree(tmp_path) -> Path:
    root = tmp_path / "photos"
    files = ["a.jpg", "B.PNG", "sub/c.JpEg", "sub/deeper/d.webp", "sub/notes.txt", "readme.md",
             ".hidden/e.jpg", "sub/._f.jpg", "sub/.cache/g.png"]
    for name in files:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (root / "empty").mkdir()
    return root


def test_find_images_folder(tree):
    found = find_images([tree])
    assert found == [tree / "B.PNG", tree / "a.jpg", tree / "sub" / "c.JpEg", tree / "sub" / "deeper" / "d.webp"]
    assert all(p.is_absolute() for p in found)
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"} <= IMAGE_EXTENSIONS


def test_find_images_explicit_files_and_dedup(tree, monkeypatch):
    monkeypatch.chdir(tree)
    found = find_images(["readme.md", "a.jpg", tree / "a.jpg", str(tree), "./sub/../a.jpg"])
    assert found == [tree / "B.PNG", tree / "a.jpg", tree / "readme.md", tree / "sub" / "c.JpEg",
                     tree / "sub" / "deeper" / "d.webp"]
    assert len(found) == len(set(found))
    # a hidden folder given explicitly is walked (only hidden folders *below* an input are skipped)
    assert find_images([tree / ".hidden"]) == [tree / ".hidden" / "e.jpg"]


def test_find_images_globs(tree, monkeypatch):
    assert find_images([str(tree / "*.jpg")]) == [tree / "a.jpg"]
    assert find_images([str(tree / "*")]) == find_images([tree])  # folders matched by a glob are walked
    assert find_images([str(tree / "**" / "*.[jJ]*")]) == [tree / "a.jpg", tree / "sub" / "c.JpEg"]
    monkeypatch.chdir(tree)
    assert find_images(["sub/**/*.webp"]) == [tree / "sub" / "deeper" / "d.webp"]
    assert find_images(["?.jpg", "a.jp?"]) == [tree / "a.jpg"]
    # files a glob matches are filtered by extension (an explicit file is not)
    with pytest.raises(FileNotFoundError, match=r"\*\.txt"):
        find_images(["sub/*.txt"])


def test_find_images_nothing_matched(tree):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        find_images([tree / "a.jpg", tree / "nope.jpg"])
    with pytest.raises(FileNotFoundError, match=r"\*\.gif"):
        find_images([str(tree / "*.gif")])
    with pytest.raises(FileNotFoundError, match="empty"):
        find_images([tree / "empty"])
    assert find_images([]) == []
