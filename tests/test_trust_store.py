"""Issue 11, the store's part: the index never falls behind, every command acts on the active store, removal is
for good, store errors are one line (exit 2), `offshelf check` and `offshelf compact` (read back by DuckDB)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from offshelf.cli import main
from offshelf.extract import embed
from offshelf.index import build_store_index, check_store_index, load_store_index
from offshelf.io import atomic_write_json
from offshelf.search import Searcher
from offshelf.store import FeatureStore, FileState, StoreConfig, check_store, compact, path_id
from offshelf.store.feature_store import write_manifest
from offshelf.store.journal import JOURNAL, STAGING
from offshelf.store.marker import MARKER_KIND
from offshelf.store.shards import write_shard

DIM = 16
CONFIG = StoreConfig("efficientnet-lite0", "head", "gap", "none", DIM)


def offshelf(*args: object) -> subprocess.CompletedProcess[str]:
    """The real CLI, in this process (a subprocess costs seconds of imports per call); stdout, stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def add_rows(store: FeatureStore, paths: list[str], seed: int) -> None:
    """Commit one shard of random vectors for `paths`, as a killed `embed` run leaves its committed shards."""
    rng = np.random.default_rng(seed)
    rows = store.new_rows()
    for path in paths:
        rows.add(path, file_state(path), rng.normal(size=DIM).astype(np.float32))
    with store.writer() as writer:
        writer.commit(rows)


def file_state(path: str) -> FileState:
    """A FileState for a path that is not on disk."""
    return FileState(sha256=str(path_id(path)), size=1, mtime_ns=1)


def exact_top1(store: FeatureStore, queries: np.ndarray) -> list[int]:
    """Brute force in numpy: the id of each query's most cosine-similar stored vector."""
    ids, _, vectors = store.vectors()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return ids[np.argmax((queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T, axis=1)].tolist()


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("offshelf: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    made = FeatureStore.open_or_create(tmp_path / "s", CONFIG)
    add_rows(made, [f"/img/{i}.jpg" for i in range(300)], seed=0)
    return made


# -- finding 2: the index falls behind ----------------------------------------------------------------------
def test_search_catches_up_an_index_that_lags_behind_committed_shards(store: FeatureStore) -> None:
    build_store_index(store.root, "hnsw")
    for shard in range(3):  # what a run killed after committing 3 shards leaves: rows, no index update
        add_rows(store, [f"/new/{shard}-{i}.jpg" for i in range(8)], seed=10 + shard)
    store.remove(paths=["/img/0.jpg"])  # and a removal the index was not told about
    _, paths, vectors = store.vectors()
    new = [i for i, p in enumerate(paths) if p.startswith("/new/")]
    assert len(new) == 24
    searcher = Searcher(store.root)
    assert searcher.caught_up is not None and searcher.caught_up["added"] == 24
    assert searcher.caught_up["removed"] == 1
    hits = searcher.search_vectors(vectors[new], k=1)
    assert [h[0].path for h in hits] == [paths[i] for i in new]  # every new row is found, as exact search finds it
    assert [h[0].id for h in hits] == exact_top1(store, vectors[new])
    assert path_id("/img/0.jpg") not in load_store_index(store.root).ids()  # the catch-up was saved
    assert check_store_index(store.root)["healthy"]
    assert Searcher(store.root).caught_up is None


def test_embed_that_embeds_nothing_still_brings_the_index_up_to_date(tmp_path: Path, photos: list[Path]) -> None:
    root = tmp_path / "s"
    embed(photos[:2], root, progress=False)
    build_store_index(root, "flat")
    held = FeatureStore.open(root)
    ids, paths, vectors = held.vectors()
    rows = held.new_rows()  # a killed run's committed shard: a third photo's row, not in the index
    rows.add(str(photos[2]), file_state(str(photos[2])), vectors[0] * 0.5 + 0.1)
    with held.writer() as writer:
        writer.commit(rows)
    summary = embed(photos[:2], root, progress=False)
    assert summary.embedded == 0 and summary.index["added"] == 1
    assert sorted(load_store_index(root).ids().tolist()) == sorted(held.vectors()[0].tolist())


def test_index_build_catches_up_with_rows_committed_during_the_build(store: FeatureStore) -> None:
    done = threading.Event()

    def committer() -> None:
        shard = 0
        while not done.is_set() and shard < 40:
            add_rows(store, [f"/during/{shard}-{i}.jpg" for i in range(5)], seed=100 + shard)
            shard += 1

    thread = threading.Thread(target=committer)
    thread.start()
    try:
        build_store_index(store.root, "hnsw", target_recall=0.99)
    finally:
        done.set()
        thread.join()
    index = load_store_index(store.root)
    report = check_store_index(store.root)
    if index.store_seq == store.snapshot().seq:  # commits after the build's final catch-up make it lag, visibly
        assert report["healthy"], report
        assert sorted(index.ids().tolist()) == sorted(store.vectors()[0].tolist())
    else:
        assert not report["healthy"] and "covers store commits up to" in report["problems"][0]["what"]
    assert Searcher(store.root).index.ntotal == len(store)


# -- finding 3: after an upgrade switch every command acts on the active store -------------------------------
def test_commands_act_on_the_store_an_upgrade_switched_to(tmp_path: Path, photos: list[Path]) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    embed(photos[:2], old, progress=False)
    embed(photos[:2], new, progress=False)
    atomic_write_json(old / "upgrade.json", {"kind": MARKER_KIND, "new_store": str(new)})
    result = offshelf("embed", photos[2], "--store", old, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["store"] == str(new)
    assert len(FeatureStore.open(new)) == 3 and len(FeatureStore.open(old)) == 2
    result = offshelf("remove", "--store", old, photos[0], "--json")
    assert result.returncode == 0, result.stderr
    assert str(photos[0]) not in FeatureStore.open(new).known_files()
    assert str(photos[0]) in FeatureStore.open(old).known_files()
    info = json.loads(offshelf("info", "--store", old, "--json").stdout)
    assert info["store"] == str(new) and info["items"] == 2 and info["removed"] == 1
    check = json.loads(offshelf("check", "--store", old, "--json").stdout)
    assert check["store"] == str(new) and check["items"] == 2


# -- finding 5: remove is for good ---------------------------------------------------------------------------
def test_removed_items_stay_out_of_later_embed_runs_unless_readded(tmp_path: Path, photos: list[Path]) -> None:
    root = tmp_path / "s"
    embed(photos[:3], root, progress=False)
    result = offshelf("remove", "--store", root, photos[1])
    assert result.returncode == 0, result.stderr
    again = embed(photos[:3], root, progress=False)
    assert (again.embedded, again.skipped, again.removed) == (0, 2, 1)
    assert str(photos[1]) not in FeatureStore.open(root).known_files()
    hits = Searcher(root).search_files([photos[1]], k=3)[0]
    assert str(photos[1]) not in [h.path for h in hits]
    result = offshelf("embed", *photos[:3], "--store", root, "--readd", "--json", "--quiet")
    assert json.loads(result.stdout)["embedded"] == 1
    assert FeatureStore.open(root).removed().num_rows == 0
    assert Searcher(root).search_files([photos[1]], k=1)[0][0].path == str(photos[1])


# -- finding 4, the store's part: one-line errors, exit 2 ----------------------------------------------------
def test_store_errors_exit_2_naming_the_file(tmp_path: Path, photos: list[Path], store: FeatureStore) -> None:
    regular = tmp_path / "not-a-dir"
    regular.write_text("x")
    one_line_error(offshelf("embed", photos[0], "--store", regular, "--quiet"), str(regular), "is a file")
    one_line_error(offshelf("info", "--store", regular), str(regular))

    shard = next((store.root / "shards").glob("*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    shard.write_bytes(bytes(data))
    one_line_error(offshelf("info", "--store", store.root), str(shard), "damaged shard")

    other = tmp_path / "t"
    add_rows(FeatureStore.open_or_create(other, CONFIG), ["/a.jpg"], seed=1)
    manifest = json.loads((other / "manifest.json").read_text())
    content = {k: v for k, v in manifest.items() if k != "sha256"}
    write_manifest(other, {**content, "dim": DIM + 1})  # well-formed and checksummed, but the wrong dim
    one_line_error(offshelf("info", "--store", other), "damaged shard", str(other / "shards"))
    write_manifest(other, {**content, "dim": "sixteen"})
    one_line_error(offshelf("info", "--store", other), str(other / "manifest.json"), "dim")
    (other / "manifest.json").write_text(json.dumps({**manifest, "layer": "stage5"}))  # edited, checksum not
    one_line_error(offshelf("info", "--store", other), str(other / "manifest.json"), "damaged manifest")


# -- offshelf check ------------------------------------------------------------------------------------------
def test_check_names_damage_and_repair_lets_embed_redo_exactly_those_files(tmp_path: Path,
                                                                          photos: list[Path]) -> None:
    root = tmp_path / "s"
    embed(photos[:6], root, progress=False, batch_size=2, shard_size=2)
    build_store_index(root, "flat")
    shards = sorted((root / "shards").glob("*.parquet"))
    assert len(shards) == 3
    lost = pq.read_table(shards[1]).column("path").to_pylist()
    shards[1].write_bytes(shards[1].read_bytes()[:-40] + bytes(40))
    result = offshelf("check", "--store", root)
    assert result.returncode == 3 and f"damaged: {shards[1]}" in result.stdout, result.stdout
    result = offshelf("check", "--store", root, "--repair", "--json")
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    assert [r["file"] for r in report["repaired"]] == [str(shards[1])] and report["items"] == 4
    assert report["index"]["repaired"]  # the index held the quarantined rows
    again = embed(photos[:6], root, progress=False)
    assert (again.embedded, again.skipped) == (2, 4)
    assert sorted(again_paths := FeatureStore.open(root).known_files()) == sorted(map(str, photos[:6]))
    assert set(lost) <= set(again_paths)
    assert offshelf("check", "--store", root).returncode == 0


def test_check_reports_a_damaged_manifest_with_exit_3_and_touches_nothing(store: FeatureStore,
                                                                          tmp_path: Path) -> None:
    manifest = store.root / "manifest.json"
    edited = json.loads(manifest.read_text()) | {"layer": "stage5"}  # edited, checksum not
    manifest.write_text(json.dumps(edited))
    before = {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()}
    for repair in ([], ["--repair"]):
        result = offshelf("check", "--store", store.root, *repair)
        assert result.returncode == 3, (result.stdout, result.stderr)
        assert f"damaged: {manifest}: damaged manifest: its content does not match" in result.stdout
    report = json.loads(offshelf("check", "--store", store.root, "--json").stdout)
    assert not report["healthy"] and report["shards"] == len(list((store.root / "shards").glob("*.parquet")))
    assert [p["file"] for p in report["problems"]] == [str(manifest)]
    assert {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()} == before
    one_line_error(offshelf("check", "--store", tmp_path / "nothing"), "no feature store")


def test_check_rebuilds_a_damaged_index(store: FeatureStore) -> None:
    build_store_index(store.root, "hnsw")
    data = next((store.root / "index").glob("faiss-*.index"))
    data.write_bytes(data.read_bytes()[:100])
    report = check_store_index(store.root)
    assert not report["healthy"] and "unreadable" in report["problems"][0]["what"]
    repaired = check_store_index(store.root, repair=True)
    assert repaired["healthy"] and repaired["repair"]["kind"] == "hnsw"
    assert sorted(load_store_index(store.root).ids().tolist()) == sorted(store.vectors()[0].tolist())

    manifest = store.root / "index" / "index.json"  # settings no build accepts, and unreadable data
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"params": {"M": "many", "shell": "rm"}}))
    repaired = check_store_index(store.root, repair=True)
    assert repaired["healthy"] and repaired["repair"]["kind"] == "flat"
    assert "recorded settings are unusable" in repaired["repair"]["rebuilt_as_flat"]
    assert sorted(load_store_index(store.root).ids().tolist()) == sorted(store.vectors()[0].tolist())


# -- finding 6 and offshelf compact --------------------------------------------------------------------------
def test_compact_leaves_exactly_the_collection_for_duckdb(store: FeatureStore) -> None:
    add_rows(store, [f"/img/{i}.jpg" for i in range(0, 300, 3)], seed=5)  # 100 files re-embedded
    store.remove(paths=[f"/img/{i}.jpg" for i in range(1, 300, 7)])
    ids, paths, vectors = store.vectors()
    glob = f"{store.root}/shards/*.parquet"
    db = duckdb.connect()
    assert db.execute(f"SELECT count(*) FROM '{glob}'").fetchall() == [(400,)]  # the event log: every version
    build_store_index(store.root, "flat")
    report = compact(store.root)
    assert (report["items"], report["removed"], report["files_after"]) == (len(ids), 43, 2)
    rows = db.execute(f"SELECT * FROM '{glob}' ORDER BY id").fetchall()
    order = np.argsort(ids)
    assert [r[0] for r in rows] == ids[order].tolist() and [r[1] for r in rows] == [paths[i] for i in order]
    np.testing.assert_array_equal(np.array([r[5] for r in rows], np.float32), vectors[order])
    shard = next((store.root / "shards").glob("*.parquet"))
    column = pq.read_schema(shard).field("embedding").type
    assert pa.types.is_fixed_size_list(column) and column.list_size == DIM
    again_ids, again_paths, again_vectors = FeatureStore.open(store.root).vectors()
    assert sorted(again_paths) == sorted(paths)
    assert check_store(store.root)["healthy"]
    assert set(FeatureStore.open(store.root).removed().column("path").to_pylist()) == {
        f"/img/{i}.jpg" for i in range(1, 300, 7)}  # removals survive compaction: still for good
    assert Searcher(store.root).caught_up is not None  # the index noticed the new commit number
    assert check_store_index(store.root)["healthy"]


def test_compaction_is_old_or_new_state_at_every_kill_point(store: FeatureStore) -> None:
    store.remove(paths=["/img/5.jpg"])
    expected = sorted(store.vectors()[1])
    before = sorted(p.name for p in store.root.rglob("*.parquet"))
    # killed after staging, before the journal: the old state stands and the staging folder goes
    write_shard(store.root / STAGING / "shards", 99, store.table().drop_columns(["seq"]))
    with store.writer():
        pass
    assert sorted(p.name for p in store.root.rglob("*.parquet")) == before and not (store.root / STAGING).exists()
    # killed after the journal, with one of two files moved: readers already see the same collection
    seq = store.high_water_mark() + 1
    shard = write_shard(store.root / STAGING / "shards", seq, store.table().drop_columns(["seq"]))
    removed = write_shard(store.root / STAGING / "removed", seq, store.removed().drop_columns(["seq"]))
    atomic_write_json(store.root / JOURNAL, {"seq": seq, "files": [f"shards/{shard.name}", f"removed/{removed.name}"]})
    os.replace(shard, store.root / "shards" / shard.name)
    assert sorted(FeatureStore.open(store.root).vectors()[1]) == expected
    assert not check_store(store.root)["healthy"]
    assert check_store(store.root, repair=True)["repaired"][0]["what"] == "a compaction was interrupted"
    assert sorted(p.name for p in store.root.rglob("*.parquet")) == sorted([shard.name, removed.name])
    assert sorted(FeatureStore.open(store.root).vectors()[1]) == expected
    assert FeatureStore.open(store.root).removed().column("path").to_pylist() == ["/img/5.jpg"]


def test_searches_during_compaction_always_see_the_whole_collection(store: FeatureStore) -> None:
    add_rows(store, [f"/img/{i}.jpg" for i in range(0, 300, 2)], seed=3)
    store.remove(paths=["/img/1.jpg"])
    expected = set(store.vectors()[0].tolist())
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            ids = FeatureStore.open(store.root).vectors()[0].tolist()
            assert len(ids) == len(set(ids)) and set(ids) == expected
            seen.append(len(ids))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(5):
            compact(store.root)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert len(seen) >= 2 and set(seen) == {len(expected)}


def test_check_and_compact_cli_json(tmp_path: Path, store: FeatureStore) -> None:
    shutil.copytree(store.root, tmp_path / "copy")
    result = offshelf("compact", "--store", tmp_path / "copy", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["items"] == 300
    result = offshelf("check", "--store", tmp_path / "copy", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["healthy"] is True
