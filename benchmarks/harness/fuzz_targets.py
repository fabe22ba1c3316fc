"""What the fuzzers feed hostile bytes to: the image decoder, the feature store reader, the alignment map (bundle)
reader and the index reader, each given real seed files that are then mutated.

A target returns "ok" (the input was accepted and the result is sound) or "rejected" (the documented error:
`ImageDecodeError` for the decoder, `OffshelfError` for files on disk). Anything else it raises is a crash;
accepting damaged data that differs from what was committed counts as a crash too (an `AssertionError`).
Used by `tests/test_fuzz.py` (a bounded run) and `benchmarks/fuzz.py` (a longer one).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from offshelf.errors import OffshelfError
from offshelf.images import ImageDecodeError, decode_image, real_photos

#: byte-level mutations: (operation, position, value); positions wrap around the data's length
MUTATIONS = ("flip", "set", "insert", "delete", "truncate", "duplicate")
#: values a hostile JSON file may put where offshelf expects something else
HOSTILE_VALUES: tuple[Any, ...] = (None, -1, 0, 2**63, 1e308, float("nan"), "", "../../etc/passwd", [], {}, [1, 2],
                                   {"a": 1}, True, "os.system", "x" * 1000)
Mutation = tuple[str, int, int]


def mutate(data: bytes, mutations: list[Mutation]) -> bytes:
    """`data` with each mutation applied in turn."""
    out = bytearray(data)
    for op, position, value in mutations:
        at = position % (len(out) + 1)
        if op == "flip" and out:
            out[at % len(out)] ^= 1 << (value % 8)
        elif op == "set" and out:
            out[at % len(out)] = value % 256
        elif op == "insert":
            out[at:at] = bytes([value % 256]) * (1 + value % 7)
        elif op == "delete":
            del out[at : at + 1 + value % 16]
        elif op == "truncate":
            del out[at:]
        elif op == "duplicate":
            out[at:at] = out[value % (len(out) + 1) :][:64]
    return bytes(out)


def _leaves(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths (key/index tuples) to every value in a JSON document, containers included."""
    paths = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            paths += _leaves(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            paths += _leaves(value, (*prefix, i))
    return paths


def mutate_json(text: str, edits: list[tuple[int, int]]) -> str:
    """`text` (a JSON document) with values replaced by hostile ones or deleted: edit (which value, what)."""
    obj = json.loads(text)
    for which, what in edits:
        leaves = _leaves(obj)
        if not leaves:
            break
        *parents, last = leaves[which % len(leaves)]
        holder = obj
        for key in parents:
            holder = holder[key]
        if what % (len(HOSTILE_VALUES) + 1) == len(HOSTILE_VALUES):
            del holder[last]
        else:
            holder[last] = HOSTILE_VALUES[what % len(HOSTILE_VALUES)]
    return json.dumps(obj)


# -- seed images ------------------------------------------------------------------------------------
def seed_images() -> dict[str, bytes]:
    """Small real photos encoded in every format the decoder takes (and a few modes that need conversion)."""
    photo = Image.open(real_photos()[0]).convert("RGB")
    photo.thumbnail((48, 48))
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    cases: dict[str, tuple[Image.Image, str, dict[str, Any]]] = {
        "jpeg": (photo, "JPEG", {"quality": 80}),
        "jpeg-exif": (photo, "JPEG", {"exif": exif.tobytes()}),
        "jpeg-progressive-cmyk": (photo.convert("CMYK"), "JPEG", {"progressive": True}),
        "png-rgba": (rgba, "PNG", {}),
        "png-16bit": (photo.convert("L").convert("I;16"), "PNG", {}),
        "gif": (photo.convert("P"), "GIF", {}),
        "webp": (photo, "WEBP", {"quality": 70}),
        "bmp": (photo, "BMP", {}),
        "tiff": (photo, "TIFF", {"compression": "tiff_lzw"}),
        "tiff-float": (photo.convert("F"), "TIFF", {}),
        "ppm": (photo, "PPM", {}),
        "ico": (photo, "ICO", {}),
        "tga": (photo, "TGA", {}),
    }
    out = {}
    for name, (image, fmt, options) in cases.items():
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        out[name] = buffer.getvalue()
    return out


def decode_target(data: bytes) -> str:
    """Decode hostile bytes: an RGB image whose pixels match its size, or ImageDecodeError."""
    try:
        image = decode_image(data, min_size=16, max_pixels=4_000_000)
    except ImageDecodeError:
        return "rejected"
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.shape == (image.height, image.width, 3), (image.mode, pixels.shape)
    assert image.width > 0 and image.height > 0
    return "ok"


# -- files on disk: a real store, its index, an alignment map -----------------------------------------
@dataclass(frozen=True)
class Material:
    """Real files to mutate: a store with an HNSW index (old model) and a map from another store into it."""

    store: Path
    other_store: Path
    map_dir: Path


def build_material(root: Path, n_photos: int = 6) -> Material:
    """Embed `n_photos` real photos with efficientnet-lite0 twice (GAP, GMP), index one, fit a map between them."""
    from offshelf.extract import embed
    from offshelf.index import build_store_index
    from offshelf.store import FeatureStore
    from offshelf.upgrade import fit_alignment, save_alignment

    photos = real_photos()[:n_photos]
    store, other, map_dir = root / "store-gap", root / "store-gmp", root / "map"
    root.mkdir(parents=True, exist_ok=True)
    broken = root / "broken.jpg"  # gives the store an errors table
    broken.write_bytes(b"\xff\xd8\xff not a JPEG")
    for target, pool in ((store, "gap"), (other, "gmp")):
        if not (target / "manifest.json").is_file():
            assert embed([*photos, broken], target, pool=pool, progress=False).failed == 1
    if not (store / "removed").is_dir() or not any((store / "removed").iterdir()):
        FeatureStore.open(store).remove(paths=[str(photos[-1])])  # and a removed table
    if not (store / "index" / "index.json").is_file():
        build_store_index(store, "hnsw")
    if not (map_dir / "meta.json").is_file():
        save_alignment(fit_alignment(store, other, holdout=0.0)[0], map_dir)
    return Material(store, other, map_dir)


def store_files(material: Material) -> list[str]:
    """The store's files a fuzzer may damage, relative to the store (its index has its own target)."""
    root = material.store
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and "index" not in p.parts and p.name != ".lock")


def _damaged_copy(source: Path, relative: str, damage: Callable[[bytes], bytes], work: Path) -> Path:
    copy = work / source.name
    shutil.copytree(source, copy)
    target = copy / relative
    target.write_bytes(damage(target.read_bytes()))
    return copy


def _damage(relative: str, mutations: list[Mutation], edits: list[tuple[int, int]]) -> Callable[[bytes], bytes]:
    """JSON files get value edits (then byte mutations, if any); other files byte mutations."""
    def damage(data: bytes) -> bytes:
        if relative.endswith(".json") and edits:
            data = mutate_json(data.decode(), edits).encode()
        return mutate(data, mutations)
    return damage


def store_target(material: Material, relative: str, mutations: list[Mutation],
                 edits: list[tuple[int, int]] = ()) -> str:
    """Read a store with one damaged file: OffshelfError, or exactly rows that were committed (never altered)."""
    from offshelf.store import FeatureStore

    original = FeatureStore.open(material.store)
    ids0, paths0, vectors0 = original.vectors()
    committed = {i: (p, v) for i, p, v in zip(ids0.tolist(), paths0, vectors0)}
    with tempfile.TemporaryDirectory(prefix="offshelf-fuzz-") as work:
        copy = _damaged_copy(material.store, relative, _damage(relative, mutations, list(edits)), Path(work))
        try:
            store = FeatureStore.open(copy)
            ids, paths, vectors = store.vectors()
            store.errors()
            store.known_files()
        except OffshelfError:
            return "rejected"
    assert store.config == original.config, "a damaged manifest was accepted as a different store"
    for i, path, vector in zip(ids.tolist(), paths, vectors):
        assert i in committed, f"id {i} was never committed"
        assert committed[i][0] == path and np.array_equal(committed[i][1], vector), f"row {i} altered"
    return "ok"


def index_files(material: Material) -> list[str]:
    """The saved index's files (manifest and data), relative to the store."""
    return sorted(str(p.relative_to(material.store)) for p in (material.store / "index").iterdir()
                  if p.is_file() and p.name != ".lock")


def index_target(material: Material, relative: str, mutations: list[Mutation],
                 edits: list[tuple[int, int]] = ()) -> str:
    """Load the store's index with one damaged file and search it: OffshelfError, or stored ids only."""
    from offshelf.index import load_store_index
    from offshelf.store import FeatureStore

    _, _, vectors = FeatureStore.open(material.store).vectors()
    known = set(load_store_index(material.store).ids().tolist())
    with tempfile.TemporaryDirectory(prefix="offshelf-fuzz-") as work:
        copy = _damaged_copy(material.store, relative, _damage(relative, mutations, list(edits)), Path(work))
        try:
            index = load_store_index(copy)
            _, found = index.search(vectors, k=3)
        except OffshelfError:
            return "rejected"
    assert set(found[found >= 0].tolist()) <= known, "a damaged index returned ids the store never held"
    return "ok"


def map_target(material: Material, relative: str, mutations: list[Mutation],
               edits: list[tuple[int, int]] = ()) -> str:
    """Load an alignment map with one damaged file and map real vectors: OffshelfError, or finite vectors."""
    from offshelf.store import FeatureStore
    from offshelf.upgrade import load_alignment

    _, _, new_vectors = FeatureStore.open(material.other_store).vectors()
    with tempfile.TemporaryDirectory(prefix="offshelf-fuzz-") as work:
        copy = _damaged_copy(material.map_dir, relative, _damage(relative, mutations, list(edits)), Path(work))
        try:
            mapped = load_alignment(copy).transform(new_vectors)
        except OffshelfError:
            return "rejected"
    assert np.isfinite(mapped).all(), "a damaged map produced NaN or infinite vectors"
    return "ok"
