"""Fuzzing (hypothesis) of what offshelf reads from strangers: image bytes, a store's files, a saved index, an
alignment map. Each target either accepts the input soundly or rejects it with the documented error; any other
exception, or damaged data accepted as if it had been committed, is a crash (see benchmarks/harness/fuzz_targets.py).

A bounded, derandomized run here (a few seconds per target); `python -m benchmarks.fuzz` runs the long one. Every
crash found is kept below as a regression test with its input.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from benchmarks.harness.fuzz_targets import (
    MUTATIONS,
    Material,
    build_material,
    decode_target,
    index_files,
    index_target,
    map_target,
    mutate,
    seed_images,
    store_files,
    store_target,
)

SEEDS = seed_images()
BOUNDED = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

mutations = st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 1 << 20), st.integers(0, 255)),
                     min_size=1, max_size=4)
json_edits = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), min_size=0, max_size=3)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return build_material(tmp_path_factory.mktemp("fuzz-material"))


def test_seed_images_decode_in_every_format() -> None:
    """The seeds must be valid, or the fuzzer would only ever try broken files."""
    assert len(SEEDS) >= 12
    assert {name: decode_target(data) for name, data in SEEDS.items()} == dict.fromkeys(SEEDS, "ok")


@BOUNDED
@given(seed=st.sampled_from(sorted(SEEDS)), changes=mutations)
def test_decoder_accepts_soundly_or_rejects_mutated_images(seed: str, changes: list) -> None:
    assert decode_target(mutate(SEEDS[seed], changes)) in ("ok", "rejected")


@BOUNDED
@given(data=st.binary(max_size=512), magic=st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a",
                                                             b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM", b"II*\x00",
                                                             b"P6\n", b"\x00\x00\x01\x00", b"8BPS"]))
def test_decoder_accepts_soundly_or_rejects_random_bytes(data: bytes, magic: bytes) -> None:
    assert decode_target(magic + data) in ("ok", "rejected")


@BOUNDED
@given(which=st.integers(0, 1000), changes=mutations, edits=json_edits)
@example(which=3, changes=[("truncate", 200, 0)], edits=[])  # kept: a truncated shard raised ArrowInvalid
def test_store_reader_rejects_or_returns_committed_rows(material: Material, which: int, changes: list,
                                                        edits: list) -> None:
    files = store_files(material)
    assert store_target(material, files[which % len(files)], changes, edits) in ("ok", "rejected")


@settings(BOUNDED, max_examples=80)  # each example copies the store and loads FAISS: ~50 ms
@given(which=st.integers(0, 1000), changes=mutations, edits=json_edits)
def test_index_reader_rejects_or_searches_stored_ids(material: Material, which: int, changes: list,
                                                     edits: list) -> None:
    files = index_files(material)
    assert index_target(material, files[which % len(files)], changes, edits) in ("ok", "rejected")


@BOUNDED
@given(which=st.integers(0, 1), changes=mutations, edits=json_edits)
@example(which=0, changes=[("flip", 4000, 1)], edits=[])  # kept: a flipped bit in arrays.npz raised BadZipFile
def test_map_reader_rejects_or_maps_to_finite_vectors(material: Material, which: int, changes: list,
                                                      edits: list) -> None:
    relative = ("arrays.npz", "meta.json")[which]
    assert map_target(material, relative, changes if relative != "meta.json" else [], edits) in ("ok", "rejected")


# -- regression inputs: each crash the fuzzers found, with its input ------------------------------------------------
INDEX_CRASHES = [
    # (file, byte mutations, JSON edits (which value, what), what used to escape)
    ("arrays", [("flip", 659664, 218)], [], "BadZipFile: Bad CRC-32"),
    ("faiss", [("set", 164146, 35)], [], "RuntimeError from faiss::validate_HNSW"),
    ("index.json", [], [(25, 18), (7, 1)], "TypeError: PosixPath / int (a file name replaced)"),
    ("index.json", [], [(46, 11)], "TypeError: unhashable dict (the kind replaced)"),
    ("index.json", [], [(82, 88)], "TypeError at search time (efSearch replaced by a string)"),
    ("index.json", [], [(85, 85)], "TypeError in the pipeline steps"),
    ("index.json", [("flip", 158950, 110)], [(36, 31)], "KeyError: 'bytes'"),
]


@pytest.mark.parametrize("file, changes, edits, was", INDEX_CRASHES, ids=[c[3] for c in INDEX_CRASHES])
def test_index_reader_regressions(material: Material, file: str, changes: list, edits: list, was: str) -> None:
    relative = next(f for f in index_files(material) if Path(f).name.startswith(file))
    assert index_target(material, relative, changes, edits) in ("ok", "rejected"), was


def test_index_reader_names_the_damaged_index(material: Material, tmp_path: Path) -> None:
    """A damaged index is one clear OffshelfError naming its folder, not an internal error."""
    import shutil

    from offshelf.errors import OffshelfError
    from offshelf.index import load_store_index

    copy = tmp_path / "store"
    shutil.copytree(material.store, copy)
    faiss_file = next((copy / "index").glob("faiss-*.index"))
    faiss_file.write_bytes(mutate(faiss_file.read_bytes(), [("flip", 100, 3)]))
    with pytest.raises(OffshelfError, match=r"index file .*faiss-.*\.index is truncated or corrupt"):
        load_store_index(copy)
