"""The embedding pipeline end to end with the real default model: counts, errors table, incremental
re-runs, refusal to mix features, and resumption after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.harness.killpoints import run_offshelf_here
from offshelf import Embedder, FeatureStore, OffshelfError, embed, make_config
from offshelf.extract.pooling import Pooling
from offshelf.models import get_model_spec, load_backbone


def add_bad_files(folder: Path, photo: Path) -> dict[str, str]:
    """Corrupt inputs next to good ones; returns file name -> a word its error reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image\n")
    data = photo.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    Image.new("RGB", (3000, 3000)).save(folder / "huge.png")
    return {"empty.jpg": "empty", "notes.png": "image", "truncated.jpg": "truncat", "huge.png": "pixels"}


def test_embed_counts_errors_and_vectors(tmp_path: Path, photo_dir: Path, photos: list[Path]) -> None:
    jpeg = next(p for p in photos if p.suffix == ".jpg")
    expected_reasons = add_bad_files(photo_dir / "bad", jpeg)
    summary = embed([photo_dir], tmp_path / "store", max_pixels=4_000_000, progress=False)
    assert (summary.embedded, summary.skipped, summary.failed) == (len(photos), 0, len(expected_reasons))

    store = FeatureStore.open(tmp_path / "store")
    ids, paths, vectors = store.vectors()
    assert sorted(paths) == sorted(str(p) for p in photo_dir.rglob("*") if p.parent.name != "bad" and p.is_file())
    assert len(set(ids.tolist())) == len(ids) and vectors.shape == (len(photos), 1280)
    assert np.all(np.isfinite(vectors)) and np.all(np.linalg.norm(vectors, axis=1) > 0)

    errors = {Path(e["path"]).name: e["reason"] for e in store.errors().to_pylist()}
    assert set(errors) == set(expected_reasons)
    for name, word in expected_reasons.items():
        assert word in errors[name].lower(), (name, errors[name])
    assert {Path(f["path"]).name for f in summary.failures} == set(expected_reasons)


def test_stored_vector_equals_direct_model_output(tmp_path: Path, photos: list[Path]) -> None:
    """What the pipeline stores is GAP over the model's head map of the whole image resized to 224."""
    photo = photos[0]
    embed([photo], tmp_path / "store", progress=False)
    _, _, stored = FeatureStore.open(tmp_path / "store").vectors()
    with Image.open(photo) as image:
        pixels = np.asarray(image.convert("RGB").resize((224, 224), Image.BILINEAR))[None]
    backbone = load_backbone("efficientnet-lite0")
    direct = Pooling.parse("gap")(backbone.forward(pixels, ["head"])["head"])
    # Same pixels (a 512x512 PNG: no draft decoding, no reducing-gap pre-shrink), same graph: the two agree
    # exactly here (measured max difference 0.0). The tolerance only leaves room for float32 reassociation in
    # ONNX Runtime's kernels (thread split, batch layout): a few ulps of values up to ~3, i.e. ~1e-6.
    np.testing.assert_allclose(stored[0], direct[0], rtol=0, atol=1e-5)


def test_rerun_is_incremental(tmp_path: Path, photo_dir: Path, photos: list[Path]) -> None:
    store_dir = tmp_path / "store"
    embed([photo_dir], store_dir, progress=False)
    again = embed([photo_dir], store_dir, progress=False)
    assert (again.embedded, again.skipped, again.failed) == (0, len(photos), 0)
    assert len(list((store_dir / "shards").iterdir())) == 1

    # a changed file is re-embedded and replaces its row; a new file is added; a touched file is skipped
    changed, touched = sorted(photo_dir.rglob("*.png"))[:2]
    _, paths_before, vectors_before = FeatureStore.open(store_dir).vectors()
    before = vectors_before[paths_before.index(str(changed))]
    Image.open(changed).convert("RGB").transpose(Image.Transpose.ROTATE_90).save(changed)
    shutil.copy(photos[0], photo_dir / "new-copy.jpg" if photos[0].suffix == ".jpg" else photo_dir / "new-copy.png")
    os.utime(touched, ns=(time.time_ns(), time.time_ns()))
    third = embed([photo_dir], store_dir, progress=False)
    assert (third.embedded, third.skipped, third.failed) == (2, len(photos) - 1, 0)
    ids, paths, after = FeatureStore.open(store_dir).vectors()
    assert len(paths) == len(set(paths)) == len(photos) + 1
    now = after[paths.index(str(changed))]
    assert float(now @ before / np.linalg.norm(now) / np.linalg.norm(before)) < 0.99  # the new content's vector
    assert len(ids) == len(set(ids.tolist()))


def test_mixing_models_or_layers_is_refused(tmp_path: Path, photos: list[Path]) -> None:
    embed(photos[:2], tmp_path / "store", progress=False)
    with pytest.raises(OffshelfError, match="refusing"):
        embed(photos[:2], tmp_path / "store", layer="stage6", progress=False)
    with pytest.raises(OffshelfError, match="refusing"):
        embed(photos[:2], tmp_path / "store", pool="gem", progress=False)
    with pytest.raises(OffshelfError, match="no layer"):
        make_config(get_model_spec("efficientnet-lite0"), layer="nope")


def test_views_are_averaged(tmp_path: Path, photos: list[Path]) -> None:
    """With --augment flip the descriptor is the mean of the image's and its mirror's descriptors."""
    photo = photos[1]
    plain = Embedder(make_config(get_model_spec("efficientnet-lite0")))
    flipped = Embedder(make_config(get_model_spec("efficientnet-lite0"), augment="flip"))
    with Image.open(photo) as image:
        rgb = image.convert("RGB")
    expected = (plain.embed_images([rgb]) + plain.embed_images([rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])) / 2
    # measured: bit-identical; atol leaves float32 rounding (values up to ~4) of a differently batched forward
    np.testing.assert_allclose(flipped.embed_images([rgb]), expected, rtol=0, atol=1e-5)
    per_view = flipped.view_features([flipped.views(rgb)])
    assert per_view.shape == (1, 2, 1280)
    np.testing.assert_allclose(per_view[0, 0], plain.embed_images([rgb])[0], rtol=0, atol=1e-5)


def test_batch_size_counts_views(tmp_path: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """With 16 views per image a batch of 32 model inputs holds 2 images, not 32 (512 inputs)."""
    seen: list[int] = []
    real = Embedder.embed_views

    def recording(self: Embedder, views: list) -> np.ndarray:
        seen.append(sum(len(v) for v in views))
        return real(self, views)

    monkeypatch.setattr(Embedder, "embed_views", recording)
    summary = embed(photos[:5], tmp_path / "store", augment="paper", batch_size=32, progress=False)
    assert summary.embedded == 5 and seen == [32, 32, 16]


def test_sigkill_then_resume_gives_exactly_one_row_per_image(tmp_path: Path, small_photo_set: list[Path]) -> None:
    store_dir = tmp_path / "store"
    command = [sys.executable, "-m", "offshelf.cli", "embed", str(small_photo_set[0].parent), "--store", str(store_dir),
               "--shard-size", "8", "--batch-size", "8", "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((store_dir / "shards").glob("0*.parquet"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = len(FeatureStore.open(store_dir))
    assert 0 < committed < len(small_photo_set), "the kill should land part-way through the run"

    rerun = run_offshelf_here(command[3:] + ["--json"])  # the same command, in this process: no start-up cost
    assert rerun.returncode == 0, rerun.stderr
    resumed = json.loads(rerun.stdout)
    assert (resumed["skipped"], resumed["embedded"], resumed["failed"]) == (
        committed, len(small_photo_set) - committed, 0)
    ids, paths, vectors = FeatureStore.open(store_dir).vectors()
    assert sorted(paths) == sorted(str(p) for p in small_photo_set)  # no gaps
    assert len(ids) == len(set(ids.tolist())) == len(small_photo_set)  # no duplicates
    raw_rows = sum(pq.read_table(p).num_rows for p in (store_dir / "shards").iterdir())
    assert raw_rows == len(small_photo_set)

    # and the vectors are the ones an uninterrupted run makes
    reference = embed(small_photo_set[:5], tmp_path / "reference", progress=False)
    assert reference.embedded == 5
    _, ref_paths, ref_vectors = FeatureStore.open(tmp_path / "reference").vectors()
    for path, vector in zip(ref_paths, ref_vectors):
        # same pixels, other batch sizes: only float32 rounding may differ
        np.testing.assert_allclose(vectors[paths.index(path)], vector, rtol=0, atol=1e-5)
