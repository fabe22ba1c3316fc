"""The feature store on its own: shards, newest-row-wins, errors view, refusal to mix, locking."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from offshelf.errors import OffshelfError, StoreError
from offshelf.store import FeatureStore, FileState, StoreConfig, path_id

CONFIG = StoreConfig("efficientnet-lite0", "head", "gap", "none", 4)


def state(tag: str) -> FileState:
    return FileState(sha256=tag * 8, size=len(tag), mtime_ns=1)


def commit(store: FeatureStore, items: dict[str, np.ndarray], errors: dict[str, str] | None = None) -> None:
    rows = store.new_rows()
    for path, vector in items.items():
        rows.add(path, state(path[-1]), vector)
    for path, reason in (errors or {}).items():
        rows.add_error(path, None, reason)
    with store.writer() as writer:
        writer.commit(rows)


def test_roundtrip_and_newest_row_wins(tmp_path: Path) -> None:
    store = FeatureStore.open_or_create(tmp_path / "s", CONFIG)
    commit(store, {"/a": np.ones(4), "/b": np.full(4, 2.0)})
    commit(store, {"/a": np.full(4, 5.0), "/c": np.full(4, 3.0)})
    ids, paths, vectors = FeatureStore.open(tmp_path / "s").vectors()
    assert paths == ["/b", "/a", "/c"]
    assert ids.tolist() == [path_id(p) for p in paths]
    np.testing.assert_array_equal(vectors[:, 0], [2.0, 5.0, 3.0])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 4)
    assert len(store) == 3


def test_errors_are_current_only_until_the_file_succeeds(tmp_path: Path) -> None:
    store = FeatureStore.open_or_create(tmp_path / "s", CONFIG)
    commit(store, {}, {"/x": "not an image", "/y": "truncated image"})
    commit(store, {"/x": np.zeros(4)})
    errors = store.errors().to_pylist()
    assert [(e["path"], e["reason"]) for e in errors] == [("/y", "truncated image")]
    commit(store, {}, {"/x": "empty file"})  # failing again after success: the error is current again
    assert sorted(e["path"] for e in store.errors().to_pylist()) == ["/x", "/y"]


def test_mixing_features_is_refused(tmp_path: Path) -> None:
    FeatureStore.open_or_create(tmp_path / "s", CONFIG)
    for field, value in [("model", "open-nsfw-resnet"), ("layer", "stage5"), ("pool", "gmp"), ("augment", "flip")]:
        other = StoreConfig(**{**CONFIG.identity(), field: value})
        with pytest.raises(StoreError, match="refusing"):
            FeatureStore.open_or_create(tmp_path / "s", other)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["model"] == "efficientnet-lite0" and "offshelf_version" in manifest


def test_missing_or_broken_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no feature store"):
        FeatureStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable manifest"):
        FeatureStore.open(tmp_path)


def test_one_writer_at_a_time_and_stale_tmp_files_cleaned(tmp_path: Path) -> None:
    store = FeatureStore.open_or_create(tmp_path / "s", CONFIG)
    with store.writer():
        with pytest.raises(OffshelfError, match="in use"):
            with store.writer():
                pass
    stale = tmp_path / "s" / "shards" / ".tmp-00000009.parquet.abc"
    stale.write_bytes(b"half a shard")
    commit(store, {"/a": np.ones(4)})
    assert not stale.exists()
    names = [p.name for p in (tmp_path / "s" / "shards").iterdir()]
    assert len(names) == 1 and re.fullmatch(r"00000001-[0-9a-f]{16}\.parquet", names[0]), names


def test_shard_numbers_continue_after_reopen(tmp_path: Path) -> None:
    store = FeatureStore.open_or_create(tmp_path / "s", CONFIG)
    commit(store, {"/a": np.ones(4)})
    commit(FeatureStore.open(tmp_path / "s"), {}, {"/b": "empty file"})
    commit(FeatureStore.open(tmp_path / "s"), {"/c": np.ones(4)})
    assert sorted(p.name[:8] for p in (tmp_path / "s").rglob("0*.parquet")) == ["00000001", "00000002", "00000003"]


def test_removed_items_are_gone_until_embedded_again(tmp_path: Path) -> None:
    store = FeatureStore.open_or_create(tmp_path / "s", CONFIG)
    commit(store, {"/a": np.ones(4), "/b": np.full(4, 2.0), "/c": np.full(4, 3.0)})
    assert store.remove(paths=["/a"], ids=[path_id("/c")]) == ["/a", "/c"]
    _, paths, vectors = FeatureStore.open(tmp_path / "s").vectors()
    assert paths == ["/b"] and vectors.shape == (1, 4)
    assert "/a" not in store.known_files()  # a later embed run would add it again, as a new item
    with pytest.raises(StoreError, match="not in store"):
        store.remove(paths=["/a"])
    commit(store, {"/a": np.full(4, 7.0)})
    _, paths, vectors = store.vectors()
    assert paths == ["/b", "/a"] and vectors[1, 0] == 7.0


@pytest.mark.parametrize("seed", range(20))
def test_latest_rows_and_newer_than_agree_with_a_dict_of_rows(seed: int) -> None:
    """The vectorised merge of shards (last row per id; rows not superseded by a later removal or error) against
    the plain-Python meaning, on random commit histories with repeated ids, equal seqs and empty sides."""
    import pyarrow as pa

    from offshelf.store.feature_store import _latest_by_id, _newer_than

    rng = np.random.default_rng(seed)

    def history(rows: int) -> pa.Table:  # rows in commit order: seqs never decrease
        return pa.table({"id": rng.integers(-5, 12, rows).astype(np.int64) * (1 << 40),
                         "seq": np.sort(rng.integers(1, 6, rows)).astype(np.int64),
                         "row": np.arange(rows, dtype=np.int64)})

    table, other = history(int(rng.integers(0, 40))), history(int(rng.integers(0, 12)))
    latest: dict[int, dict[str, int]] = {}
    for row in table.to_pylist():
        latest.pop(row["id"], None)
        latest[row["id"]] = row  # re-inserted: the dict keeps each id at its last row's position
    expected_latest = sorted(latest.values(), key=lambda r: r["row"])
    assert _latest_by_id(table).to_pylist() == expected_latest
    last_seq = {r["id"]: r["seq"] for r in other.to_pylist()}
    for ties in (False, True):
        expected = [r for r in table.to_pylist() if last_seq.get(r["id"], -1) < r["seq"]
                    or (ties and last_seq.get(r["id"]) == r["seq"])]
        assert _newer_than(table, other, ties=ties).to_pylist() == expected


def test_id_rows_agree_with_a_dict_for_held_missing_and_padding_ids() -> None:
    from offshelf.store import IdRows

    rng = np.random.default_rng(0)
    ids = rng.choice(1 << 62, 5000, replace=False).astype(np.int64)
    rows = IdRows(ids)
    row_of = {int(i): r for r, i in enumerate(ids)}
    asked = np.concatenate([ids[rng.permutation(5000)[:300]], rng.integers(0, 1 << 62, 300), [-1, 0, (1 << 63) - 1]])
    assert rows.rows_of(asked).tolist() == [row_of.get(int(i), -1) for i in asked]
    assert rows.rows_of(asked.reshape(3, -1)).shape == (3, 201)  # FAISS's (queries, k) answers keep their shape
    assert IdRows(np.empty(0, np.int64)).rows_of(asked).tolist() == [-1] * len(asked) and len(rows) == 5000
