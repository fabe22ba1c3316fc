"""The CLI contract of docs/architecture.md: names, JSON shapes, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.harness.killpoints import run_offshelf_here


def offshelf_process(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m offshelf.cli ARGS` in a fresh interpreter: the entry point, its exit code and streams."""
    return subprocess.run([sys.executable, "-m", "offshelf.cli", *args], capture_output=True, text=True, timeout=600)


def offshelf(*args: str) -> subprocess.CompletedProcess[str]:
    """The same command through `main` in this process: what `__main__` exits with and prints, without paying the
    interpreter's start-up and imports (about 3 s) for every call; `offshelf_process` covers the entry point."""
    return run_offshelf_here(list(args))


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under `root`: relative path -> (size, mtime_ns, bytes)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_models_json() -> None:
    result = offshelf_process("models", "--json")
    assert result.returncode == 0, result.stderr
    models = {m["name"]: m for m in json.loads(result.stdout)}
    assert {"efficientnet-lite0", "efficientnet-lite2", "open-nsfw-resnet"} <= set(models)
    assert models["efficientnet-lite0"]["dim"] == 1280 and models["open-nsfw-resnet"]["dim"] == 1024


def test_embed_search_info_json(tmp_path: Path, photos: list[Path]) -> None:
    store = tmp_path / "store"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    result = offshelf_process("embed", *map(str, photos[:5]), str(bad), "--store", str(store), "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["embedded"], summary["skipped"], summary["failed"]) == (5, 0, 1)
    assert all(isinstance(summary[key], int) for key in ("embedded", "skipped", "failed"))

    result = offshelf("search", str(photos[2]), "--store", str(store), "-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["path"] == str(photos[2]) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert all({"rank", "id", "path", "score"} <= set(h) for h in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]

    info = json.loads(offshelf("info", "--store", str(store), "--json").stdout)
    assert info["items"] == 5 and [e["path"] for e in info["errors"]] == [str(bad)]


@pytest.mark.parametrize(
    "args, message",
    [
        (["embed", "/no/such/dir", "--store", "{tmp}/s"], "no/such/dir"),
        (["embed", "{photo}", "--store", "{tmp}/s", "--pool", "median"], "pooling"),
        (["embed", "{photo}", "--store", "{tmp}/s", "--model", "resnet-9000"], "resnet-9000"),
        (["embed", "{photo}", "--store", "{tmp}/s", "--layer", "stage99"], "stage99"),
        (["search", "{photo}", "--store", "{tmp}/nothing"], "no feature store"),
        (["search", "{tmp}/missing.jpg", "--store", "{tmp}/nothing"], "no feature store"),
        (["embed"], "required"),
        (["serve", "--store", "{tmp}/s", "--port", "70000"], "port number from 1 to 65535, got 70000"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, photos: list[Path], args: list[str], message: str) -> None:
    result = offshelf(*[a.format(tmp=tmp_path, photo=photos[0]) for a in args])
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_input_exits_2_from_a_fresh_process() -> None:
    result = offshelf_process("frobnicate")
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "invalid choice" in result.stderr and "Traceback" not in result.stderr


def test_demo_runs_and_finds_copies(tmp_path: Path) -> None:
    result = offshelf("demo", "--store", str(tmp_path / "demo"), "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["embed"]["embedded"] >= 10 and report["embed"]["failed"] == 0
    ranks = [q["original_rank"] for q in report["queries"]]
    assert len(ranks) >= 9 and all(rank == 1 for rank in ranks), ranks
    text = offshelf("demo", "--store", str(tmp_path / "demo"), "--quiet")
    assert text.returncode == 0 and "found their original at rank 1" in text.stdout


def test_probe_fit_predict_eval(tmp_path: Path, photos: list[Path]) -> None:
    """Three classes of crops of three photos, labelled by folder; the saved probe reproduces its
    cross-validated numbers in a fresh process and refuses a store of other features."""
    rng = np.random.default_rng(0)
    for photo in photos[:3]:
        with Image.open(photo) as image:
            rgb = image.convert("RGB")
        w, h = rgb.size
        for i in range(8):
            cw, ch = int(w * rng.uniform(0.5, 0.9)), int(h * rng.uniform(0.5, 0.9))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            (tmp_path / "data" / photo.stem).mkdir(parents=True, exist_ok=True)
            rgb.crop((x, y, x + cw, y + ch)).save(tmp_path / "data" / photo.stem / f"{i}.jpg")
    store, probe = str(tmp_path / "store"), str(tmp_path / "probe")
    assert offshelf("embed", str(tmp_path / "data"), "--store", store, "--quiet").returncode == 0

    fit = offshelf("probe", "fit", "--store", store, "--labels-from-folders", "--out", probe, "--json")
    assert fit.returncode == 0, fit.stderr
    fitted = json.loads(fit.stdout)
    assert fitted["n"] == 24 and sorted(fitted["classes"]) == sorted(p.stem for p in photos[:3])
    assert fitted["cv"]["accuracy"] >= 0.9

    evaluated = json.loads(offshelf("probe", "eval", "--probe", probe, "--store", store,
                                    "--labels-from-folders", "--json").stdout)
    assert evaluated["accuracy"] == 1.0 and evaluated["mAP"] == pytest.approx(1.0)
    assert set(evaluated["per_class"]) == set(fitted["classes"])

    predicted = json.loads(offshelf("probe", "predict", "--probe", probe, str(photos[1]), "--json").stdout)
    assert predicted[0]["predicted"] == photos[1].stem

    other = str(tmp_path / "other")
    assert offshelf("embed", str(tmp_path / "data"), "--store", other, "--pool", "gmp", "--quiet").returncode == 0
    refused = offshelf("probe", "eval", "--probe", probe, "--store", other, "--labels-from-folders")
    assert refused.returncode == 2 and "differ in pool" in refused.stderr

    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{p},x\n" for p in (tmp_path / "data").rglob("*.jpg")))
    one_class = offshelf("probe", "fit", "--store", store, "--labels", str(csv), "--out", str(tmp_path / "p2"))
    assert one_class.returncode == 2 and "Traceback" not in one_class.stderr


def test_index_build_then_search_uses_it(tmp_path: Path, small_photo_set: list[Path], photos: list[Path]) -> None:
    store = str(tmp_path / "store")
    assert offshelf("embed", str(small_photo_set[0].parent), "--store", store, "--quiet").returncode == 0
    exact = json.loads(offshelf("search", str(small_photo_set[5]), "--store", store, "-k", "5", "--json").stdout)

    built = offshelf("index", "build", "--store", store, "--kind", "hnsw", "--target-recall", "0.95", "--json")
    assert built.returncode == 0, built.stderr
    report = json.loads(built.stdout)
    assert report["kind"] == "hnsw" and report["n"] == len(small_photo_set)
    assert report["recall_at_10"] >= 0.95 and report["bytes_per_vector"] > 0
    assert (tmp_path / "store" / "index").is_dir()

    via_index = json.loads(offshelf("search", str(small_photo_set[5]), "--store", store, "-k", "5", "--json").stdout)
    assert [h["path"] for h in via_index] == [h["path"] for h in exact]
    assert via_index[0]["score"] == pytest.approx(exact[0]["score"], abs=1e-4)

    # embedding more images updates the index: a new photo is found through it at rank 1
    added = json.loads(offshelf("embed", str(photos[0]), "--store", store, "--quiet", "--json").stdout)
    assert added["embedded"] == 1 and added["index"]["added"] == 1
    hits = json.loads(offshelf("search", str(photos[0]), "--store", store, "-k", "1", "--json").stdout)
    assert hits[0]["path"] == str(photos[0])

    # removed items never come back, through the index or after a reload
    removed = offshelf("remove", "--store", store, str(photos[0]), "--json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["removed"] == [str(photos[0])]
    hits = json.loads(offshelf("search", str(photos[0]), "--store", store, "-k", "20", "--json").stdout)
    assert str(photos[0]) not in [h["path"] for h in hits] and len(hits) == 20
    missing = offshelf("remove", "--store", store, str(photos[0]))
    assert missing.returncode == 2 and "not in store" in missing.stderr

    bad = offshelf("index", "build", "--store", store, "--kind", "lsh")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_align_search_align_and_index_upgrade(tmp_path: Path, small_photo_set: list[Path]) -> None:
    images = [str(p) for p in small_photo_set[:40]]
    old, new, map_dir = str(tmp_path / "old"), str(tmp_path / "new"), str(tmp_path / "map")
    assert offshelf("embed", *images, "--store", old, "--quiet").returncode == 0
    assert offshelf("embed", *images, "--store", new, "--model", "efficientnet-lite2", "--quiet").returncode == 0

    aligned = offshelf("align", "--old", old, "--new", new, "--out", map_dir, "--json")
    assert aligned.returncode == 0, aligned.stderr
    report = json.loads(aligned.stdout)
    assert report["method"] == "procrustes" and report["holdout_cosine"] > 0.5
    before = {store: _snapshot(Path(store)) for store in (old, new)}
    items = {store: json.loads(offshelf("info", "--store", store, "--json").stdout)["items"] for store in (old, new)}
    swapped = offshelf("align", "--old", new, "--new", new, "--out", str(tmp_path / "m2"))
    assert swapped.returncode == 2
    # one line naming the store and what is wrong with the pair: same model, same features, nothing to align
    assert swapped.stdout == "" and swapped.stderr.count("\n") == 1, swapped.stderr
    assert swapped.stderr.startswith(f"offshelf: error: stores {new} and {new} hold the same features ("), swapped.stderr
    assert "efficientnet-lite2" in swapped.stderr and "nothing to align" in swapped.stderr
    # and nothing was written: both stores unchanged to the byte, no map
    assert {store: _snapshot(Path(store)) for store in (old, new)} == before
    assert items == {old: 40, new: 40}
    assert {s: json.loads(offshelf("info", "--store", s, "--json").stdout)["items"] for s in (old, new)} == items
    assert not (tmp_path / "m2").exists()

    # a new-model query searches the old store through the map; the map's own training images come first
    hits = json.loads(offshelf("search", images[3], "--store", old, "--align", map_dir, "-k", "3", "--json").stdout)
    assert hits[0]["path"] == images[3]

    upgraded = offshelf("index", "upgrade", "--store", old, "--align", map_dir, "--new-store",
                        str(tmp_path / "upgraded"), "--quiet", "--json")
    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(upgraded.stdout)["switched"] is True
    after = json.loads(offshelf("search", images[3], "--store", old, "-k", "1", "--json").stdout)
    assert after[0]["path"] == images[3] and after[0]["score"] == pytest.approx(1.0, abs=1e-3)
