"""simplejpeg as the JPEG pixel decoder: the same picture as Pillow's path, and the same failures.

Every JPEG here is a real photograph (scikit-image's, and the Plasma wallpaper photographs that
scripts/install-system-data.sh installs), re-encoded by Pillow where a test needs a particular kind of file
(progressive, grayscale, CMYK, 4:4:4, an orientation tag). The reference is always Pillow: either
``decode_image(..., jpeg_decoder="pillow")`` (the path every store was built with before) or plain Pillow calls.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from benchmarks.datasets.photos import wallpapers
from offshelf.extract import Embedder, Reader, make_config
from offshelf.images import ImageDecodeError, dct_scale, decode_image, make_views
from offshelf.models import get_model_spec


def encode(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def mad(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).mean())


def both(data: bytes, **kwargs) -> tuple[Image.Image, Image.Image]:
    """The default (simplejpeg) and the Pillow decoding of the same bytes."""
    return decode_image(data, **kwargs), decode_image(data, jpeg_decoder="pillow", **kwargs)


@pytest.fixture(scope="module")
def photo(photos: list[Path]) -> Image.Image:
    """A real photo, not square (orientation mistakes change the shape), 1800 x 1200."""
    with Image.open(next(p for p in photos if p.stem == "coffee")) as im:
        return im.convert("RGB").resize((1800, 1200), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def kinds(photo: Image.Image) -> dict[str, bytes]:
    """The kinds of JPEG cameras and tools write, from one real photo."""
    return {
        "baseline-420": encode(photo, quality=90),
        "baseline-444": encode(photo, quality=95, subsampling=0),
        "baseline-422": encode(photo.resize((1000, 667)), quality=75, subsampling=1),
        "progressive": encode(photo, quality=85, progressive=True),
        "optimized-restart": encode(photo, quality=80, optimize=True, restart_marker_blocks=4),
        "grayscale": encode(photo.convert("L"), quality=90),
        "small": encode(photo.resize((300, 200)), quality=90),
    }


@pytest.mark.parametrize("min_size", [None, 224, 260, 336])
def test_same_picture_as_pillow(kinds, min_size):
    for name, data in kinds.items():
        fast, pil = both(data, min_size=min_size)
        assert fast.mode == pil.mode == "RGB", name
        assert fast.size == pil.size, name  # the same DCT scale as Image.draft
        assert mad(fast, pil) < 1.0, name  # measured 0.0: both are libjpeg-turbo with the same settings


def test_real_camera_jpegs_same_as_pillow():
    found = [p for p in wallpapers() if p.suffix == ".jpg"][:2]
    assert found, "plasma-workspace-wallpapers is not installed (scripts/install-system-data.sh)"
    for path in found:
        data = path.read_bytes()
        fast, pil = both(data, min_size=224)
        assert fast.size == pil.size and min(fast.size) >= 224
        assert mad(fast, pil) < 1.0, path
        assert mad(make_views(fast, 224), make_views(pil, 224)) < 1.0, path


def test_dct_scale_is_pillows_draft_rule(photo):
    for size in [(1800, 1200), (900, 600), (700, 1400), (230, 1000), (1792, 448), (225, 300), (4000, 3000)]:
        data = encode(photo.resize(size, Image.Resampling.NEAREST), quality=70)
        for min_size in (224, 260, 336):
            drafted = Image.open(io.BytesIO(data))
            drafted.draft(None, (min_size, min_size))
            scale = dct_scale(*size, min_size)
            assert drafted.size == (-(-size[0] // scale), -(-size[1] // scale)), (size, min_size)
            assert decode_image(data, min_size=min_size).size == drafted.size
    assert dct_scale(1800, 1200, None) == 1


def test_rgb_order():
    red_left = np.zeros((240, 320, 3), np.uint8)
    red_left[:, :160, 0] = 255
    red_left[:, 160:, 2] = 255
    out = np.asarray(decode_image(encode(Image.fromarray(red_left), quality=95)))
    assert out[:, :150, 0].min() > 230 and out[:, :150, 2].max() < 25
    assert out[:, 170:, 2].min() > 230 and out[:, 170:, 0].max() < 25


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(photo, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(photo, quality=90, exif=exif.tobytes())
    fast, pil = both(data, min_size=224)
    assert fast.size == pil.size and mad(fast, pil) < 1.0
    with Image.open(io.BytesIO(data)) as opened:
        want = ImageOps.exif_transpose(opened.convert("RGB"))
    assert fast.size == (want.width // 4, want.height // 4)  # 1/4 DCT scale, then transposed
    assert mad(fast, want.resize(fast.size, Image.Resampling.BOX)) < 2.0
    if orientation != 1 and fast.size == (450, 300):  # a no-op would be far from the flipped reference
        assert mad(fast, photo.resize(fast.size, Image.Resampling.BOX)) > 10


def test_xmp_orientation(photo):
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    data = encode(photo, quality=90, xmp=xmp)
    fast, pil = both(data)
    assert fast.size == pil.size == (1200, 1800)
    assert mad(fast, pil) < 1.0


def test_cmyk_goes_to_pillow(photo):
    data = encode(photo.resize((600, 400)).convert("CMYK"), quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    fast, pil = both(data, min_size=224)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(pil))  # the same (Pillow) path
    assert mad(fast, photo.resize((600, 400))) < 4.0


def test_grayscale_is_grey_rgb(kinds):
    out = np.asarray(decode_image(kinds["grayscale"], min_size=224))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_non_jpeg_unchanged(photo):
    buf = io.BytesIO()
    photo.resize((600, 400)).save(buf, "PNG")
    fast, pil = both(buf.getvalue(), min_size=224)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(pil))


def broken_variants(data: bytes) -> dict[str, bytes]:
    """Truncated and corrupted copies of a JPEG, as disks, downloads and bit rot make them."""
    scan = data.index(b"\xff\xda")
    flipped = bytearray(data)
    for offset in range(scan + 400, len(data) - 10, 997):
        flipped[offset] ^= 0x5A
    return {
        "header only": data[: scan + 20],
        "cut at 10%": data[: scan + (len(data) - scan) // 10],
        "cut at 50%": data[: len(data) // 2],
        "cut before EOI": data[:-2],
        "bits flipped": bytes(flipped),
        "zeros in the scan": data[: scan + 300] + b"\0" * 2000 + data[scan + 2300 :],
        "garbage after EOI": data + b"\x00garbage" * 10,
    }


def test_broken_jpegs_fail_or_decode_exactly_as_with_pillow(kinds, tmp_path):
    for kind in ("baseline-420", "progressive", "grayscale"):
        for name, data in broken_variants(kinds[kind]).items():
            results = []
            for decoder in ("simplejpeg", "pillow"):
                try:
                    results.append(decode_image(data, min_size=224, jpeg_decoder=decoder))
                except ImageDecodeError as exc:
                    results.append(exc.reason)
            fast, pil = results
            if isinstance(pil, str):
                assert fast == pil, (kind, name)
            else:
                assert isinstance(fast, Image.Image), (kind, name, fast)
                assert mad(fast, pil) < 1.0, (kind, name)
            path = tmp_path / f"{kind}-{name}.jpg"
            path.write_bytes(data)
            outcomes = [Reader(224, jpeg_decoder=d).load(str(path)) for d in ("simplejpeg", "pillow")]
            assert outcomes[0].error == outcomes[1].error, (kind, name)
    truncated = broken_variants(kinds["baseline-420"])["cut at 50%"]
    with pytest.raises(ImageDecodeError, match="^truncated image$"):
        decode_image(truncated, min_size=224)


def test_pixel_limit_holds_on_the_fast_path(kinds):
    with pytest.raises(ImageDecodeError, match=r"^too many pixels \(1800 x 1200 > 2000000\)$"):
        decode_image(kinds["baseline-420"], min_size=224, max_pixels=2_000_000)
    assert decode_image(kinds["baseline-420"], min_size=224, max_pixels=1800 * 1200).size == (450, 300)
    with pytest.raises(ValueError, match="jpeg_decoder must be one of"):
        decode_image(kinds["small"], jpeg_decoder="turbo")  # type: ignore[arg-type]


def test_descriptors_match_through_the_model(kinds, tmp_path):
    """End to end: the stored descriptor does not depend on which library decoded the JPEG."""
    embedder = Embedder(make_config(get_model_spec("efficientnet-lite0")))
    views = {}
    for decoder in ("simplejpeg", "pillow"):
        reader = Reader(embedder.size, jpeg_decoder=decoder)
        batch = []
        for name in ("baseline-420", "progressive", "grayscale", "baseline-422"):
            path = tmp_path / f"{name}.jpg"
            path.write_bytes(kinds[name])
            batch.append(reader.load(str(path)).views)
        views[decoder] = embedder.view_features(batch).mean(axis=1)
    a, b = views["simplejpeg"], views["pillow"]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.999, cosine
