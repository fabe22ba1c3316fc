"""offshelf dedup on real photos and their edited copies: groups, keep policies, calibration held out,
--move-to and restore, incremental runs, range search against numpy brute force."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from offshelf.cli import main
from offshelf.dedup import dedup, exact_pairs, form_groups, precision_threshold, restore
from offshelf.dedup.state import DEDUP_DIR, STATE_FILE
from offshelf.errors import OffshelfError
from offshelf.store import FeatureStore
from offshelf.images.copies import colour_change, jpeg, rescale, rotate
from offshelf.vectors import l2_normalize

EDITED = 4  # photos that get copies


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[str]]]:
    """The real photos (colour and grey) as PNG, the first EDITED with a JPEG-30 copy and a 0.3-scale copy."""
    from offshelf.images import real_photos

    root = tmp_path_factory.mktemp("coll")
    truth: dict[str, set[str]] = {}
    for i, photo in enumerate(real_photos(grayscale=True)):
        image = Image.open(photo).convert("RGB")
        image.save(root / f"{photo.stem}.png")
        if i < EDITED:
            jpeg(image, 30).save(root / f"{photo.stem}_q30.jpg")
            rescale(image, 0.3).save(root / f"{photo.stem}_small.png")
            truth[str(root / f"{photo.stem}.png")] = {str(root / f"{photo.stem}_q30.jpg"),
                                                      str(root / f"{photo.stem}_small.png")}
    return root, truth


@pytest.fixture(scope="module")
def first_run(collection, tmp_path_factory):
    root, _ = collection
    store = tmp_path_factory.mktemp("store") / "s"
    return store, dedup([root], store, progress=False)


def test_groups_found_and_kept_largest(collection, first_run) -> None:
    root, truth = collection
    _, report = first_run
    found = {g["keep"]: set(g["duplicates"]) for g in report.groups}
    for original, copies in truth.items():  # the original is the largest file in pixels
        assert copies <= found[original]
    # true assignments: the edited copies, and the stereo twin of motorcycle_left (a real near-duplicate)
    truth[str(root / "motorcycle_left.png")] = {str(root / "motorcycle_right.png")}
    assigned = [(k, d) for k, ds in found.items() for d in ds]
    right = sum(d in truth.get(k, ()) for k, d in assigned)
    assert right == sum(map(len, truth.values())) == 9
    assert right / len(assigned) >= 0.8, assigned  # the calibration aims at 0.95 of pairs, estimated
    assert report.calibration["reached"] and report.calibration["precision"] >= 0.95
    for g in report.groups:
        assert g["scores"] == sorted(g["scores"], reverse=True) and min(g["scores"]) >= report.threshold


def test_keep_policies(collection, first_run) -> None:
    root, truth = collection
    store, _ = first_run
    original = next(iter(truth))
    small = str(root / (Path(original).stem + "_small.png"))
    q30 = str(root / (Path(original).stem + "_q30.jpg"))
    os.utime(q30, ns=(1, 1))  # the oldest file
    first = dedup([root], store, keep="first", progress=False)
    oldest = dedup([root], store, keep="oldest", progress=False)
    groups = {frozenset([g["keep"], *g["duplicates"]]): g["keep"] for g in first.groups}
    assert groups[frozenset([original, small, q30])] == min(original, small, q30)
    groups = {frozenset([g["keep"], *g["duplicates"]]): g["keep"] for g in oldest.groups}
    assert groups[frozenset([original, small, q30])] == q30


def test_calibrated_threshold_reaches_its_precision_on_held_out_copies(collection, first_run) -> None:
    """Copies made with edits the calibration never used (other strengths, other seeds) of every photo:
    the pairs above the calibrated threshold keep the target precision."""
    from offshelf.extract import Embedder

    root, _ = collection
    store, report = first_run
    fs = FeatureStore.open(store)
    ids, paths, vectors = fs.vectors()
    originals = [i for i, p in enumerate(paths) if "_q30" not in p and "_small" not in p]
    embedder = Embedder(fs.config)
    held_out = [lambda im: colour_change(im, 0.6, 0.8, 0.05), lambda im: rotate(im, 7), lambda im: jpeg(im, 12)]
    copies, owner = [], []
    for i in originals:
        image = Image.open(paths[i]).convert("RGB")
        copies += [edit(image) for edit in held_out]
        owner += [i] * len(held_out)
    x = l2_normalize(np.concatenate([vectors, embedder.embed_images(copies)]))
    n = len(vectors)
    sims = x[n:] @ x[:n].T  # copies x collection, small
    owner = np.array(owner)
    same = np.zeros_like(sims, bool)
    same[np.arange(len(owner)), owner] = True
    for p, path in enumerate(paths):  # the collection's own copies of an original count as its duplicates
        stem = Path(path).stem.replace("_q30", "").replace("_small", "")
        same[:, p] |= np.array([Path(paths[o]).stem == stem for o in owner])
    same[:, [p for p, q in enumerate(paths) if "motorcycle" in q]] |= np.array(
        ["motorcycle" in paths[o] for o in owner])[:, None]
    predicted = sims >= report.threshold
    precision = (predicted & same).sum() / predicted.sum()
    recall = (predicted & same)[np.arange(len(owner)), owner].mean()
    assert precision >= report.calibration["target_precision"], (precision, recall)
    assert recall >= 0.8


def test_incremental_second_run_compares_only_new(collection, first_run, tmp_path) -> None:
    root, truth = collection
    store, first = first_run
    state = store / DEDUP_DIR / STATE_FILE
    before = state.stat().st_mtime_ns
    again = dedup([root], store, progress=False)
    assert again.compared["new"] == 0 and again.compared["previously_compared"] == first.compared["items"]
    assert sorted(map(json.dumps, again.groups)) == sorted(map(json.dumps, first.groups))
    assert state.stat().st_mtime_ns >= before
    original = next(iter(truth))
    added = root / "added_copy.png"
    colour_change(Image.open(original).convert("RGB"), 0.7, 1.1).save(added)
    try:
        third = dedup([root], store, progress=False)
        assert third.compared["new"] == 1 and third.compared["previously_compared"] == first.compared["items"]
        group = next(g for g in third.groups if g["keep"] == original)
        assert str(added) in group["duplicates"]
    finally:
        added.unlink()


def test_move_to_and_restore_through_the_cli(collection, tmp_path, capsys) -> None:
    source, truth = collection
    root = tmp_path / "photos"
    shutil.copytree(source, root)
    store, moved_dir = tmp_path / "store", tmp_path / "moved"
    assert main(["dedup", str(root), "--store", str(store), "--move-to", str(root / "inside"), "--threshold", "0.6",
                 "--quiet"]) == 2
    assert "inside the searched folder" in capsys.readouterr().err
    before = sorted(p.name for p in root.iterdir())
    assert main(["dedup", str(root), "--store", str(store), "--move-to", str(moved_dir), "--threshold", "0.6",
                 "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    moved = {Path(m["from"]).name for m in report["moved"]}
    assert moved == {Path(c).name for copies in truth.values() for c in copies} | {"motorcycle_right.png"}
    assert sorted(p.name for p in root.iterdir()) == sorted(set(before) - moved)
    assert all(Path(m["to"]).is_file() for m in report["moved"])
    moved_paths = {m["from"] for m in report["moved"]}
    assert not moved_paths & set(FeatureStore.open(store).known_files())
    assert main(["dedup", "--restore", report["log"], "--json", "--quiet"]) == 0
    restored = json.loads(capsys.readouterr().out)
    assert (restored["restored"], restored["readded"], restored["store"]) == (len(moved), len(moved), str(store))
    assert sorted(p.name for p in root.iterdir()) == before
    assert moved_paths <= set(FeatureStore.open(store).known_files())  # back in the store, not only on disk
    assert not moved_paths & set(FeatureStore.open(store).removed().column("path").to_pylist())
    again = restore(Path(report["log"]), progress=False)
    assert (again["already_in_place"], again["readded"]) == (len(moved), 0)


def test_restore_refuses_a_log_pointing_outside_its_folder(tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("x")
    log = tmp_path / "logs" / "log.json"
    log.parent.mkdir()
    log.write_text(json.dumps({"kind": "offshelf-dedup-moves", "moves": [{"from": "/tmp/x", "to": str(victim)}]}))
    with pytest.raises(OffshelfError, match="that offshelf dedup does not make"):
        restore(log)
    # a move inside the log's folder whose `from` is not where plan_moves would have taken it from: a handed log
    # and folder must not be able to write a file anywhere (say, a .pth into site-packages)
    planted = log.parent / "usr" / "lib" / "python3" / "site-packages" / "evil.pth"
    planted.parent.mkdir(parents=True)
    planted.write_text("import os")
    for source in ("/usr/lib/python3/site-packages/evil.pth", str(tmp_path / "elsewhere" / "evil.jpg")):
        log.write_text(json.dumps({"kind": "offshelf-dedup-moves", "moves": [{"from": source, "to": str(planted)}]}))
        with pytest.raises(OffshelfError, match="that offshelf dedup does not make"):
            restore(log)
    assert planted.exists() and not (tmp_path / "elsewhere").exists()
    log.write_text("{}")
    with pytest.raises(OffshelfError, match="not an offshelf dedup move log"):
        restore(log)
    assert victim.read_text() == "x"


def test_exact_pairs_match_brute_force_and_incremental_queries() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 24)).astype(np.float32)
    x = l2_normalize(np.concatenate([base, base[:60] + 0.3 * rng.normal(size=(60, 24)).astype(np.float32)]))
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    want = {(i, j) for i, j in zip(*np.nonzero(np.triu(sims >= 0.8, 1)))}
    a, b, s = exact_pairs(x, 0.8)
    assert set(zip(a.tolist(), b.tolist())) == want and len(a) == len(want) > 50
    np.testing.assert_allclose(s, sims[a, b], atol=1e-5)
    new = np.arange(330, 360)
    a2, b2, _ = exact_pairs(x, 0.8, queries=new)
    assert set(zip(a2.tolist(), b2.tolist())) == {(i, j) for i, j in want if i in new or j in new}


def test_groups_do_not_chain_and_precision_threshold() -> None:
    # 0 ~ 1, 1 ~ 2, but 0 !~ 2: visiting 0 first, 2 is not pulled in through 1
    groups = form_groups(np.array([0, 1]), np.array([1, 2]), np.array([0.9, 0.9]), np.array([0, 1, 2]))
    assert [(g.keep, g.duplicates) for g in groups] == [(0, (1,))]
    # 100 different-image pairs, 2 of them >= 0.75: FPR(0.75) = 0.02; 50 sampled pairs, 4 observed >= 0.75
    positives, negatives = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.65, 0.75, 0.8])
    observed = np.array([0.95, 0.9, 0.85, 0.8, 0.5])
    t, p, r, reached = precision_threshold(positives, negatives, 100, observed, 50, 0.7)
    assert (t, round(p, 3), r, reached) == (0.7, 0.75, 0.75, True)  # 1 - 0.02 * 50 / 4; at 0.6: 1 - 0.03 * 50 / 4
    t, p, r, reached = precision_threshold(positives, negatives, 100, observed, 50, 0.9)
    assert (t, round(p, 3), r, reached) == (0.9, 1.0, 0.25, True)
    with pytest.raises(OffshelfError, match="no copy pairs"):
        precision_threshold(np.array([]), negatives, 100, observed, 50, 0.9)


def test_exact_pairs_keep_each_items_closest_partners_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """At a threshold where every item matches every other, memory stays bounded: each item keeps its MAX_DEPTH
    closest partners (compared with numpy brute force), never all n - 1."""
    from offshelf.dedup import pairs

    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 8)).astype(np.float32) + 6.0  # all alike: cosine > 0.5 everywhere
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    monkeypatch.setattr(pairs, "MAX_DEPTH", 10)
    a, b, s = pairs.exact_pairs(x, 0.5)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    assert sims[np.isfinite(sims)].min() > 0.5  # every pair reaches the threshold
    expected = set()
    for i in range(len(x)):
        for j in np.argsort(-sims[i])[:10]:
            expected.add((min(i, int(j)), max(i, int(j))))
    assert set(zip(a.tolist(), b.tolist())) == expected
    np.testing.assert_allclose(s, sims[a, b], atol=1e-5)
