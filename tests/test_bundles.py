"""Saved probes and maps (issue 11, finding 4): written as one unit, checked on load, never overwritten unasked.

`save_bundle` used to write `arrays.npz` and then `meta.json`: a crash between them, or two saves mixed by hand,
left a pair that loaded without complaint; an incomplete probe failed with a KeyError (exit 1); and `--out`
silently replaced an earlier probe or map. The CLI tests use real stores of real photo crops.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import offshelf
from offshelf.cli import main
from offshelf.errors import OffshelfError
from offshelf.io import bundles, check_bundle_target, load_bundle, save_bundle
from offshelf.io.bundles import arrays_from_bytes, arrays_to_bytes
from offshelf.probe import LabelSource, fit_store_probe, load_probe
from offshelf.upgrade import fit_alignment, load_alignment, save_alignment

SRC_DIR = str(Path(offshelf.__file__).resolve().parents[1])


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # noqa: ANN201
    """Run the `offshelf` command in this process (the `main` that `python -m offshelf.cli` runs)."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["offshelf", *args], code, out, err)

    return run


def files(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes), and the folder's siblings, to see what a save left."""
    return {str(p.relative_to(root.parent)): p.read_bytes() for p in sorted(root.parent.rglob("*")) if p.is_file()}


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("offshelf: error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


# --- the bundle format -----------------------------------------------------------------------------------


def test_a_bundle_is_one_folder_with_the_arrays_checksum(tmp_path: Path) -> None:
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "f": np.asfortranarray(np.eye(3)),
              "s": np.array(["a", "bc"]), "r": np.array([(1, 2.5)], dtype=[("i", "<i4"), ("x", ">f8")])}
    target = save_bundle(tmp_path / "b", {"kind": "thing", "n": 3}, arrays)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # nothing left beside it
    assert sorted(p.name for p in target.iterdir()) == ["arrays.npz", "meta.json"]
    meta, loaded = load_bundle(target, kind="thing")
    assert meta == {"kind": "thing", "n": 3}
    for name, value in arrays.items():  # numpy's own reader is the reference
        with np.load(target / "arrays.npz", allow_pickle=False) as reference:
            np.testing.assert_array_equal(loaded[name], reference[name])
            assert loaded[name].dtype == reference[name].dtype == value.dtype
    import hashlib

    recorded = json.loads((target / "meta.json").read_text())["arrays_sha256"]
    assert recorded == hashlib.sha256((target / "arrays.npz").read_bytes()).hexdigest()


def test_a_pair_mixed_from_two_saves_is_refused(tmp_path: Path) -> None:
    """The state a crash between the two writes of the old `save_bundle` left, or a hand-made mix."""
    first = save_bundle(tmp_path / "first", {"kind": "t"}, {"x": np.zeros(4)})
    second = save_bundle(tmp_path / "second", {"kind": "t"}, {"x": np.ones(4)})
    shutil.copy(second / "arrays.npz", first / "arrays.npz")
    with pytest.raises(OffshelfError, match=rf"{first / 'arrays.npz'} does not match {first / 'meta.json'}.*mixed"):
        load_bundle(first, kind="t")
    meta = json.loads((second / "meta.json").read_text())
    del meta["arrays_sha256"]
    (second / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(OffshelfError, match=rf"{second / 'meta.json'} records no sha256 of arrays.npz"):
        load_bundle(second)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "meta.json").unlink(), "incomplete bundle at .*: meta.json is missing"),
        (lambda d: (d / "arrays.npz").unlink(), "incomplete bundle at .*: arrays.npz is missing"),
        (lambda d: (d / "meta.json").write_text("{not json"), r"unreadable .*meta.json: Expecting"),
        (lambda d: (d / "meta.json").write_bytes(b"\xff\xfe"), "unreadable .*meta.json: not UTF-8"),
        (lambda d: (d / "meta.json").write_text("[1, 2]"), "unreadable .*meta.json: not a JSON object"),
        (lambda d: shutil.rmtree(d), "nothing saved at"),
    ],
)
def test_damaged_bundles_fail_with_one_line_naming_the_file(tmp_path: Path, damage, message: str) -> None:  # noqa: ANN001
    target = save_bundle(tmp_path / "b", {"kind": "t"}, {"x": np.arange(3)})
    damage(target)
    with pytest.raises(OffshelfError, match=message):
        load_bundle(target, kind="t")


def _with_checksum(directory: Path, data: bytes) -> None:
    """Replace the arrays with `data` and record its checksum, as someone crafting a hostile bundle would."""
    import hashlib

    (directory / "arrays.npz").write_bytes(data)
    meta = json.loads((directory / "meta.json").read_text())
    (directory / "meta.json").write_text(json.dumps({**meta, "arrays_sha256": hashlib.sha256(data).hexdigest()}))


def _npz_member(name: str, header: dict, body: bytes) -> bytes:
    import io
    import zipfile

    text = repr(header).encode()
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, np.lib.format.magic(1, 0) + len(text).to_bytes(2, "little") + text + body)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_npz_member("a.npy", {"descr": "|O", "fortran_order": False, "shape": (1,)}, b"\x80\x02N."),
         "holds Python objects"),
        # a header that asks for 8 TB: refused before any allocation
        (_npz_member("a.npy", {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}, bytes(8)),
         "its header says 8000000000000"),
        (b"PK\x03\x04 truncated", "BadZipFile"),
        (b"\x93NUMPY a bare .npy", "BadZipFile"),
    ],
)
def test_hostile_arrays_with_a_valid_checksum_are_refused(tmp_path: Path, data: bytes, message: str) -> None:
    target = save_bundle(tmp_path / "b", {"kind": "t"}, {"ok": np.arange(3)})
    _with_checksum(target, data)
    with pytest.raises(OffshelfError, match=rf"cannot load {target / 'arrays.npz'}: .*{message}"):
        load_bundle(target)


def test_compressed_npz_is_refused_not_inflated(tmp_path: Path) -> None:
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, zeros=np.zeros(1_000_000))  # 8 MB that compress to a few kB
    with pytest.raises(OffshelfError, match="is not a stored, unencrypted .npy"):
        arrays_from_bytes(buffer.getvalue())
    assert set(arrays_from_bytes(arrays_to_bytes({"zeros": np.zeros(3)}))) == {"zeros"}


# --- overwriting --------------------------------------------------------------------------------------------


def test_an_existing_bundle_is_replaced_only_when_asked(tmp_path: Path) -> None:
    target = save_bundle(tmp_path / "b", {"kind": "probe", "v": 1}, {"x": np.zeros(2)})
    before = files(target)
    with pytest.raises(OffshelfError, match=r"already holds a saved probe; refusing to overwrite it \(use --force"):
        save_bundle(target, {"kind": "probe", "v": 2}, {"x": np.ones(2)})
    assert files(target) == before
    save_bundle(target, {"kind": "probe", "v": 2}, {"x": np.ones(2)}, overwrite=True)
    meta, arrays = load_bundle(target)
    assert meta["v"] == 2 and arrays["x"].tolist() == [1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]

    (tmp_path / "empty").mkdir()
    save_bundle(tmp_path / "empty", {"kind": "t"}, {"x": np.zeros(1)})  # an empty folder is fine
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OffshelfError, match=r"holds other files \(todo.txt\); refusing to replace it"):
            save_bundle(tmp_path / "notes", {"kind": "t"}, {"x": np.zeros(1)}, overwrite=overwrite)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OffshelfError, match="exists and is not a folder"):
        check_bundle_target(tmp_path / "file", overwrite=True)


def test_a_failed_replacement_leaves_the_old_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = save_bundle(tmp_path / "b", {"kind": "t", "v": 1}, {"x": np.zeros(2)})

    def crash(*_args: object) -> None:
        raise OSError("killed while saving")

    # killed while writing the new files: the old bundle is untouched
    monkeypatch.setattr(bundles, "atomic_write_json", crash)
    with pytest.raises(OSError, match="killed"):
        save_bundle(target, {"kind": "t", "v": 2}, {"x": np.ones(2)}, overwrite=True)
    monkeypatch.undo()
    assert load_bundle(target)[0]["v"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["b"]

    # where the file system cannot swap two folders, the old bundle is moved aside just before the rename;
    # killed between the two, it is still whole, beside the target
    real_replace = os.replace

    def crash_publishing(src: str, dst: str) -> None:
        if Path(src).name.startswith(".tmp-b~bundle-") and Path(dst) == target:
            raise OSError("killed while publishing")
        real_replace(src, dst)

    monkeypatch.setattr(bundles, "exchange_paths", crash)
    monkeypatch.setattr(os, "replace", crash_publishing)
    with pytest.raises(OffshelfError, match="cannot save"):
        save_bundle(target, {"kind": "t", "v": 2}, {"x": np.ones(2)}, overwrite=True)
    monkeypatch.undo()
    aside = list(tmp_path.glob(".tmp-b~bundle-old-*/b"))
    assert len(aside) == 1 and load_bundle(aside[0])[0]["v"] == 1 and not target.exists()
    monkeypatch.setattr(bundles, "exchange_paths", crash)
    save_bundle(target, {"kind": "t", "v": 3}, {"x": np.ones(2)}, overwrite=True)
    # the next save cleans up what the failed one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"] and load_bundle(target)[0]["v"] == 3
    save_bundle(target, {"kind": "t", "v": 4}, {"x": np.ones(2)}, overwrite=True)  # the fallback replaces too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"] and load_bundle(target)[0]["v"] == 4


SAVER = """
import sys
import numpy as np
from offshelf.io import save_bundle
print("ready", flush=True)
for i in range(1, 10**6):
    save_bundle(sys.argv[1], {"kind": "t", "v": i}, {"x": np.full(100_000, i), "y": np.full(7, -i)}, overwrite=True)
"""


@pytest.mark.parametrize("seed", range(3))
def test_sigkill_while_replacing_leaves_one_whole_bundle(tmp_path: Path, seed: int) -> None:
    target = tmp_path / "b"
    save_bundle(target, {"kind": "t", "v": 0}, {"x": np.full(100_000, 0), "y": np.full(7, 0)})
    env = {**os.environ, "PYTHONPATH": SRC_DIR}
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SAVER), str(target)], env=env,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    time.sleep(np.random.default_rng(seed).uniform(0.05, 0.6))
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    meta, arrays = load_bundle(target, kind="t")
    assert meta["v"] >= 0 and (arrays["x"] == meta["v"]).all() and (arrays["y"] == -meta["v"]).all()


# --- probes and maps through the CLI -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, photos: list[Path]) -> dict[str, Path]:
    """Two classes of real photo crops embedded twice (GAP and GMP), a probe on the first, a map between them."""
    root = tmp_path_factory.mktemp("bundles")
    rng = np.random.default_rng(0)
    for photo in photos[:2]:
        with Image.open(photo) as image:
            rgb = image.convert("RGB")
        w, h = rgb.size
        (root / "data" / photo.stem).mkdir(parents=True)
        for i in range(6):
            cw, ch = int(w * rng.uniform(0.5, 0.9)), int(h * rng.uniform(0.5, 0.9))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            rgb.crop((x, y, x + cw, y + ch)).resize((cw // 2, ch // 2)).save(root / "data" / photo.stem / f"{i}.jpg")
    for name, pool in (("gap", "gap"), ("gmp", "gmp")):
        offshelf.embed([root / "data"], root / name, pool=pool, progress=False, threads=2, workers=2)
    fit_store_probe(root / "gap", LabelSource(from_folders=True), root / "probe")
    save_alignment(fit_alignment(root / "gap", root / "gmp")[0], root / "map")
    return {"root": root, "gap": root / "gap", "gmp": root / "gmp", "probe": root / "probe", "map": root / "map",
            "query": next((root / "data").rglob("*.jpg"))}


@pytest.fixture
def copies(fitted: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """Copies of the fitted probe and map that a test may damage."""
    for name in ("probe", "map"):
        shutil.copytree(fitted[name], tmp_path / name)
    return {"probe": tmp_path / "probe", "map": tmp_path / "map"}


def test_out_refuses_to_overwrite_without_force(fitted: dict[str, Path], copies: dict[str, Path], cli) -> None:  # noqa: ANN001
    probe, map_dir = copies["probe"], copies["map"]
    before = {**files(probe), **files(map_dir)}
    started = time.perf_counter()
    refused = cli("probe", "fit", "--store", str(fitted["gap"]), "--labels-from-folders", "--out", str(probe))
    assert_one_line_error(refused, f"{probe} already holds a saved probe; refusing to overwrite it", "--force")
    refused = cli("align", "--old", str(fitted["gap"]), "--new", str(fitted["gmp"]), "--out", str(map_dir))
    assert_one_line_error(refused, f"{map_dir} already holds a saved alignment", "--force")
    assert time.perf_counter() - started < 60
    assert {**files(probe), **files(map_dir)} == before

    forced = cli("probe", "fit", "--store", str(fitted["gap"]), "--labels-from-folders", "--out", str(probe),
                 "--method", "logreg", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert load_probe(probe)[0].method == "logreg"
    forced = cli("align", "--old", str(fitted["gap"]), "--new", str(fitted["gmp"]), "--out", str(map_dir),
                 "--method", "linear", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert load_alignment(map_dir).method == "linear"
    assert sorted(p.name for p in probe.parent.iterdir()) == ["map", "probe"]


@pytest.mark.parametrize(
    ("what", "edit", "message"),
    [
        ("probe", lambda meta: meta.pop("params"), "incomplete or inconsistent probe at {dir}: KeyError: 'params'"),
        ("probe", lambda meta: meta["store"].pop("dim"), "incomplete or inconsistent probe at {dir}: KeyError: 'dim'"),
        ("probe", lambda meta: meta.update(n_features_in=7), "coef has shape"),
        ("probe", lambda meta: meta["params"].update(bogus=1), "TypeError"),
        ("map", lambda meta: meta.pop("params"), "incomplete or inconsistent alignment at {dir}: KeyError"),
        ("map", lambda meta: meta["new_config"].update(colour="red"), "inconsistent alignment at {dir}: TypeError"),
    ],
)
def test_an_incomplete_probe_or_map_exits_2_naming_it(
    fitted: dict[str, Path], copies: dict[str, Path], what: str, edit, message: str, cli  # noqa: ANN001
) -> None:
    directory = copies[what]
    meta = json.loads((directory / "meta.json").read_text())
    edit(meta)
    (directory / "meta.json").write_text(json.dumps(meta))
    if what == "probe":
        result = cli("probe", "predict", "--probe", str(directory), "--store", str(fitted["gap"]))
    else:
        result = cli("search", str(fitted["query"]), "--store", str(fitted["gap"]), "--align", str(directory))
    assert_one_line_error(result, message.format(dir=directory))


def test_a_probe_mixed_from_two_fits_exits_2(fitted: dict[str, Path], copies: dict[str, Path], tmp_path: Path,
                                             cli) -> None:  # noqa: ANN001
    other = tmp_path / "other"
    fit_store_probe(fitted["gap"], LabelSource(from_folders=True), other, method="logreg")
    shutil.copy(other / "arrays.npz", copies["probe"] / "arrays.npz")
    result = cli("probe", "predict", "--probe", str(copies["probe"]), str(fitted["query"]))
    assert_one_line_error(result, f"{copies['probe'] / 'arrays.npz'} does not match", "mixed from two saves")


def test_a_map_cannot_choose_the_model_that_runs(fitted: dict[str, Path], copies: dict[str, Path],
                                                 tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Finding 1 through a map: `search --align` and `index upgrade` embed with the map's recorded new model."""
    folder, marker = tmp_path / "evilpath", tmp_path / "EVIL-RAN"
    folder.mkdir()
    (folder / "offshelf_evil.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nrun = lambda: '/x'\n")
    monkeypatch.syspath_prepend(str(folder))  # importable, were anything to import it
    meta = json.loads((copies["map"] / "meta.json").read_text())
    meta["new_config"]["model_spec"]["extra"]["weights"] = "offshelf_evil:run"
    (copies["map"] / "meta.json").write_text(json.dumps(meta))
    old = tmp_path / "old"
    shutil.copytree(fitted["gap"], old)
    for command in (["search", str(fitted["query"]), "--store", str(old), "--align", str(copies["map"])],
                    ["index", "upgrade", "--store", str(old), "--align", str(copies["map"]), "--quiet"]):
        result = cli(*command)
        assert not marker.exists() and "offshelf_evil" not in sys.modules, f"{command[0]}: the map's module ran"
        assert_one_line_error(result, f"{copies['map'] / 'meta.json'}: model 'efficientnet-lite0': the spec recorded",
                              "differs from the built-in one in extra; refusing it")
    assert not (old / "upgrade.json").exists()
