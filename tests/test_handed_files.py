"""Files a user may be handed, damaged or crafted: each is refused with one clear line before anything changes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from offshelf.cli import main
from offshelf.errors import StoreError
from offshelf.models import ModelError, ModelSpec, get_model_spec
from offshelf.store import FeatureStore, FileState, StoreConfig, path_id
from offshelf.store.journal import JOURNAL, finish_compaction

DIM = 8
CONFIG = StoreConfig("efficientnet-lite0", "head", "gap", "none", DIM)


def _store(root: Path, paths: list[str]) -> FeatureStore:
    store = FeatureStore.open_or_create(root, CONFIG)
    rows = store.new_rows()
    for i, path in enumerate(paths):
        rows.add(path, FileState(str(path_id(path)), 1, 1), np.full(DIM, i + 1, np.float32))
    with store.writer() as writer:
        writer.commit(rows)
    return store


def test_a_model_name_can_never_be_a_path() -> None:
    """A spec's name becomes its cache folder under $OFFSHELF_HOME/models: a path in it is refused."""
    good = get_model_spec("efficientnet-lite0").to_dict()
    for name in ("../../etc", "/abs/dir", "a/b", ""):
        with pytest.raises(ModelError, match="must be letters, digits"):
            ModelSpec.from_dict({**good, "name": name, "source": "onnx", "onnx_path": "/x.onnx"})


@pytest.mark.parametrize("marker", [[], {"kind": "offshelf-upgrade", "new_store": 7},
                                    {"kind": "offshelf-upgrade", "new_store": None}, "text"])
def test_a_malformed_upgrade_marker_is_one_line_exit_2(tmp_path: Path, marker: object,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    store = _store(tmp_path / "s", ["/a.jpg"])
    (store.root / "upgrade.json").write_text(json.dumps(marker))
    assert main(["info", "--store", str(store.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "upgrade.json" in err and "not an offshelf upgrade marker" in err


def test_a_quarantined_legacy_shard_does_not_break_later_writes(tmp_path: Path) -> None:
    """A shard without a checksum in its name (written before checksums) quarantined by `check --repair`."""
    store = _store(tmp_path / "s", ["/a.jpg"])
    (store.root / "quarantine").mkdir()
    (store.root / "quarantine" / "shards-00000007.parquet").write_bytes(b"damaged")
    assert store.high_water_mark() == 7
    _store(tmp_path / "s", ["/b.jpg"])  # a later write commits after it
    assert sorted(FeatureStore.open(tmp_path / "s").vectors()[1]) == ["/a.jpg", "/b.jpg"]


def test_a_crafted_compaction_journal_deletes_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", ["/a.jpg", "/b.jpg"])
    before = sorted(p.name for p in (store.root / "shards").iterdir())
    for files in (["shards/.."], ["shards/99999999.parquet"], ["shards/00000009-0123456789abcdef.parquet"]):
        (store.root / JOURNAL).write_text(json.dumps({"seq": 9, "files": files}))
        with pytest.raises(StoreError, match="refusing"):
            finish_compaction(store.root)
        assert sorted(p.name for p in (store.root / "shards").iterdir()) == before
    os.remove(store.root / JOURNAL)
    assert len(FeatureStore.open(store.root)) == 2


def test_an_identity_error_keeps_a_path_with_braces(tmp_path: Path) -> None:
    root = tmp_path / "odd {name} {}"
    _store(root, ["/a.jpg"])
    other = StoreConfig("efficientnet-lite0", "head", "gmp", "none", DIM)
    with pytest.raises(StoreError, match=r"odd \{name\} \{\} holds features with .*pool=gap.*pool=gmp"):
        FeatureStore.open_or_create(root, other)


def test_a_dedup_state_whose_arrays_do_not_fit_together_is_refused(tmp_path: Path) -> None:
    from offshelf.dedup.state import RunState
    from offshelf.errors import OffshelfError
    from offshelf.io.bundles import arrays_to_bytes

    meta = np.array(json.dumps({"threshold": 0.9, "token": "t"}))
    good = {"meta": meta, "ids": np.arange(3), "sha256": np.array(["a", "b", "c"]), "pair_a": np.array([0]),
            "pair_b": np.array([1]), "scores": np.array([0.95], np.float32)}
    path = tmp_path / "state.npz"
    path.write_bytes(arrays_to_bytes(good))
    assert RunState.load(path).pairs_among(np.arange(3))[0].tolist() == [0]
    for bad in ({"scores": np.array([0.9, 0.8])}, {"ids": np.arange(6).reshape(3, 2)}, {"pair_a": np.array(["x"])}):
        path.write_bytes(arrays_to_bytes({**good, **bad}))
        with pytest.raises(OffshelfError, match="unreadable dedup state .*do not fit together"):
            RunState.load(path)
