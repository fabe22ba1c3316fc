"""Nothing on disk chooses code to run (issue 11, finding 1).

A store manifest, a map or a probe records which model made its features. A built-in model is taken from the
registry by name, and a recorded spec that disagrees with it is refused; a user's ONNX model is data (a graph
file checked against the sha256 recorded when it was registered). The attacker below is a real module on the
path that writes a file when it is imported: it must never be imported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import offshelf
from offshelf.cli import main
from offshelf.extract import Embedder, make_config
from offshelf.models import ModelError, get_model_spec, load_backbone, register_model, resolve_spec
from offshelf.store import FeatureStore
from offshelf.store.feature_store import write_manifest
from tests.test_models import tiny_onnx, tiny_spec  # noqa: F401 - the tiny ONNX graph fixture

SRC_DIR = str(Path(offshelf.__file__).resolve().parents[1])
LITE0 = get_model_spec("efficientnet-lite0")

EVIL_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("imported")
def run():
    Path({marker!r}).write_text("called")
    return "/nonexistent.pth"
"""


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """A module `offshelf_evil` on a folder for PYTHONPATH, and the file it writes when imported or called."""
    folder, marker = tmp_path / "evilpath", tmp_path / "EVIL-RAN"
    folder.mkdir()
    (folder / "offshelf_evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    return folder, marker


@pytest.fixture(scope="module")
def lite0_store(tmp_path_factory: pytest.TempPathFactory, photos: list[Path]) -> Path:
    """A real store of three photos (efficientnet-lite0, GAP)."""
    root = tmp_path_factory.mktemp("safe") / "store"
    offshelf.embed([str(p) for p in photos[:3]], root, progress=False, threads=2, workers=2)
    return root


def offshelf_cli(*args: str, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    """The real `offshelf` command in a fresh interpreter, with `pythonpath` importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC_DIR, str(pythonpath)])}
    return subprocess.run([sys.executable, "-m", "offshelf.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def tampered(store: Path, tmp_path: Path, edit: dict) -> Path:
    """A copy of `store` whose manifest's model spec has the keys of `edit` replaced."""
    import shutil

    copy = tmp_path / "handed-store"
    shutil.copytree(store, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(edit.pop("manifest", {}))
    spec = manifest["model_spec"]
    for key, value in edit.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    write_manifest(copy, manifest)  # a forged manifest with a valid checksum: the spec must still be refused
    return copy


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # the reproduction of finding 1: the weights locator names the attacker's module
        ({"extra": {"weights": "offshelf_evil:run"}}, r"differs from the built-in one in extra"),
        ({"source": "packaged-onnx", "extra": {"weights": "offshelf_evil:run"}}, r"in source, extra"),
        # a model name that is not built in cannot describe a packaged model at all
        ({"manifest": {"model": "evil-net"}, "name": "evil-net", "extra": {"weights": "offshelf_evil:run"}},
         r"model 'evil-net' is not built in.*only a user ONNX model"),
    ],
)
def test_a_handed_store_cannot_import_a_module(
    lite0_store: Path, photos: list[Path], tmp_path: Path, evil: tuple[Path, Path], edit: dict, message: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI's `main` in this process, with the attacker's module importable."""
    folder, marker = evil
    monkeypatch.syspath_prepend(str(folder))
    handed = tampered(lite0_store, tmp_path, edit)
    for command in (["search", str(photos[0]), "--store", str(handed)],
                    ["embed", str(photos[4]), "--store", str(handed), "--quiet",
                     "--model", json.loads((handed / "manifest.json").read_text())["model"]]):
        code = main(command)
        stderr = capsys.readouterr().err
        assert not marker.exists() and "offshelf_evil" not in sys.modules, f"{command[0]}: the module ran"
        assert code == 2 and stderr.count("\n") == 1, (command[0], code, stderr)
        # `embed --model evil-net` stops earlier, at the unknown model name
        assert re.search(message, stderr) or "unknown model 'evil-net'" in stderr, stderr
    assert FeatureStore.open(handed).table().num_rows == 3  # nothing was added to the handed store


def test_the_reproduction_in_a_fresh_process(lite0_store: Path, photos: list[Path], tmp_path: Path,
                                             evil: tuple[Path, Path]) -> None:
    """Finding 1 as reported: `offshelf search q.jpg --store THEIRS/` imported the module the manifest named."""
    folder, marker = evil
    handed = tampered(lite0_store, tmp_path, {"extra": {"weights": "offshelf_evil:run"}})
    result = offshelf_cli("search", str(photos[0]), "--store", str(handed), pythonpath=folder)
    assert not marker.exists(), "the module named in the manifest ran"
    assert result.returncode == 2 and result.stderr.count("\n") == 1, (result.returncode, result.stderr)
    assert f"{handed / 'manifest.json'}: model 'efficientnet-lite0': the spec recorded with these features differs " \
           "from the built-in one in extra; refusing it" in result.stderr


def test_a_recorded_spec_equal_to_the_registry_is_used(lite0_store: Path, photos: list[Path]) -> None:
    config = FeatureStore.open(lite0_store).config
    assert resolve_spec(config.model, config.model_spec) is LITE0
    embedder = Embedder(config, threads=2)
    assert embedder.spec is LITE0
    stored = dict(zip(*FeatureStore.open(lite0_store).vectors()[1:]))
    np.testing.assert_allclose(embedder.embed_files([photos[1]])[0], stored[str(photos[1])], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(preprocessing={"size": 225, "mean": [127, 127, 127], "std": [128, 128, 128],
                             "channel_order": "RGB", "layout": "NCHW"}), "in preprocessing"),
        (dict(onnx_path="/tmp/other.onnx"), "in onnx_path"),
        (dict(default_layer="logits"), "in default_layer"),
        (dict(layers=[{"name": "head", "output": "head", "channels": 7}]), r"in layers;"),
    ],
)
def test_every_reader_of_a_recorded_spec_refuses_a_changed_builtin(change: dict, message: str) -> None:
    recorded = {**LITE0.to_dict(), **change}
    config = dataclasses.replace(make_config(LITE0), model_spec=recorded)
    with pytest.raises(ModelError, match=f"refusing.*{message}|{message}.*refusing"):
        Embedder(config)
    with pytest.raises(ModelError, match=message):
        resolve_spec("efficientnet-lite0", recorded)


def test_recorded_specs_that_are_not_specs_are_refused() -> None:
    for bad, message in [
        ({"name": "x"}, r"unreadable model spec.*preprocessing"),
        ({**LITE0.to_dict(), "layers": [{"name": "a", "output": "a", "channels": 4, "code": "os.system"}]},
         "unreadable model spec"),
        ({**LITE0.to_dict(), "preprocessing": {**LITE0.to_dict()["preprocessing"], "layout": "NCWH"}}, "layout"),
        ({**LITE0.to_dict(), "source": "python"}, "source"),
    ]:
        with pytest.raises(ModelError, match=message):
            resolve_spec("efficientnet-lite0", bad)
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        resolve_spec("nope", None)
    with pytest.raises(ModelError, match="recorded as 'other'"):
        resolve_spec("efficientnet-lite0", {**LITE0.to_dict(), "name": "other"})


# --- a user's ONNX model: data, checked by sha256 -------------------------------------------------------


def test_user_onnx_sha256_is_recorded_and_checked_on_every_load(
    tiny_onnx: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path  # noqa: F811
) -> None:
    path, weight, _ = tiny_onnx
    spec = register_model(tiny_spec("tiny-checked", path))
    assert spec.onnx_sha256 and len(spec.onnx_sha256) == 64
    config = make_config(spec)
    assert config.model_spec["onnx_sha256"] == spec.onnx_sha256
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    before = load_backbone(spec, threads=1).forward(images, ["vec"])["vec"]

    # the file is swapped for another graph of the same shape: every load refuses it
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        if tensor.name == "w":
            tensor.CopyFrom(onnx.numpy_helper.from_array(-weight, "w"))
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=rf"{path} has changed since model 'tiny-checked' was registered"):
        load_backbone(spec, threads=1)
    with pytest.raises(ModelError, match="has changed since"):
        Embedder(config)
    # a recorded spec without the checksum (made by hand, or by an older offshelf) is refused
    with pytest.raises(ModelError, match="records no sha256"):
        load_backbone(dataclasses.replace(spec, onnx_sha256=None), threads=1)
    # registering the new file again is the way to accept it
    again = register_model(tiny_spec("tiny-checked", path))
    assert again.onnx_sha256 != spec.onnx_sha256
    after = load_backbone(again, threads=1).forward(images, ["vec"])["vec"]
    assert not np.allclose(before, after)


def test_a_recorded_user_model_is_data_and_must_match_a_registered_one(
    tiny_onnx: tuple[Path, np.ndarray, np.ndarray]  # noqa: F811
) -> None:
    path, _, _ = tiny_onnx
    spec = tiny_spec("tiny-recorded", path)
    with pytest.raises(ModelError, match="records no sha256"):
        resolve_spec("tiny-recorded", spec.to_dict())
    registered = register_model(spec)
    # unregistered in a fresh process, the recorded spec alone (with its checksum) is enough
    assert resolve_spec("tiny-recorded", registered.to_dict()) == registered
    with pytest.raises(ModelError, match=r"differs from the registered one in preprocessing"):
        resolve_spec("tiny-recorded", {**registered.to_dict(), "preprocessing": {
            **registered.to_dict()["preprocessing"], "mean": [0, 0, 0]}})


def test_a_user_model_cannot_take_a_builtin_source(tiny_onnx: tuple[Path, np.ndarray, np.ndarray]) -> None:  # noqa: F811
    path, _, _ = tiny_onnx
    spec = dataclasses.replace(tiny_spec("tiny-packaged", path), source="packaged-onnx")
    with pytest.raises(ModelError, match="only source='onnx'"):
        register_model(spec)
    with pytest.raises(ModelError, match="not built in"):
        resolve_spec("tiny-packaged", spec.to_dict())


# --- torch loads weights only -------------------------------------------------------------------------


class _RunsCode:
    def __reduce__(self):  # noqa: ANN204 - the classic pickle payload
        return (os.system, ("touch /nonexistent-offshelf-should-not-run",))


def test_packaged_weights_are_loaded_with_weights_only(tmp_path: Path) -> None:
    from offshelf.models import _efficientnet

    payload = tmp_path / "weights.pth"
    payload.write_bytes(pickle.dumps({"_conv_stem.weight": _RunsCode()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        _efficientnet.load_efficientnet("efficientnet-lite0", payload)


def test_no_offshelf_module_unpickles_or_imports_by_name() -> None:
    """No pickle reader anywhere, and the one dynamic import is the registry's (packaged weights, by name)."""
    import ast

    offenders = []
    for path in sorted(Path(SRC_DIR, "offshelf").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                if {"pickle", "dill", "cloudpickle", "load"} & {n.split(".")[0] for n in names}:
                    offenders.append(f"{path.name}: imports {names}")
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle" and getattr(node.value, "value", False):
                offenders.append(f"{path.name}: allow_pickle=True")
            if isinstance(node, ast.keyword) and node.arg == "weights_only" and not getattr(node.value, "value", 0):
                offenders.append(f"{path.name}: weights_only=False")
            if isinstance(node, ast.Attribute) and node.attr in ("import_module", "__import__"):
                offenders.append(f"{path.name}: {node.attr}")
    assert offenders == ["export.py: import_module"], offenders
