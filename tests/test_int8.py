"""int8 backbones: fidelity to fp32 on held-out photos, the sensitivity choice against naive quantization, the
cached graph's checksum, and stores, search and serve that never mix precisions (EfficientNet-Lite0 only: its
sensitivity search is paid once per machine, about a minute on two cores)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from benchmarks.datasets.photos import wallpapers
from offshelf.cli import main
from offshelf.errors import OffshelfError
from offshelf.extract import Embedder, embed, make_config
from offshelf.models import (
    TARGET_COSINE,
    ModelError,
    calibration_images,
    calibration_sha256,
    get_model_spec,
    int8_report,
    load_backbone,
    register_model,
)
from offshelf.models.export import cache_dir
from offshelf.models.quantize import SEARCH_TARGET, fidelity_shortfall, int8_dir
from offshelf.search import Searcher
from offshelf.store import FeatureStore
from tests.test_models import tiny_onnx, tiny_spec  # noqa: F401

MODEL = "efficientnet-lite0"


@pytest.fixture(scope="module")
def report() -> dict:
    """The int8 graph's meta.json (built on first use: the sensitivity search)."""
    return int8_report(get_model_spec(MODEL))


@pytest.fixture(scope="module")
def held_out() -> list[Path]:
    """Real photos disjoint from the calibration set: the Plasma wallpaper photographs."""
    found = wallpapers()
    assert len(found) >= 10, "the held-out photos come from Debian's plasma-workspace-wallpapers"
    assert {p.name for p in found}.isdisjoint(p.name for p in calibration_images())
    return found


def _descriptors(precision: str, paths: list[Path]) -> np.ndarray:
    spec = get_model_spec(MODEL)
    calibration = calibration_sha256(calibration_images()) if precision == "int8" else ""
    vectors = Embedder(make_config(spec, precision=precision, calibration=calibration)).embed_files(paths)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_int8_descriptors_stay_close_to_fp32_on_held_out_photos(report: dict, held_out: list[Path]) -> None:
    cosines = np.sum(_descriptors("int8", held_out) * _descriptors("fp32", held_out), axis=1)
    assert cosines.mean() >= TARGET_COSINE, cosines
    assert cosines.min() >= 0.95, cosines


def test_sensitivity_choice_beats_naive_quantization(report: dict) -> None:
    """Both measured at build time on the calibration photos: the whole graph in int8, and the chosen mix."""
    assert report["fidelity"]["mean_cosine"] >= SEARCH_TARGET > TARGET_COSINE > report["naive_fidelity"]["mean_cosine"]
    assert report["fidelity"]["min_cosine"] > report["naive_fidelity"]["min_cosine"]
    ranked = sorted(report["sensitivity"], key=lambda name: -report["sensitivity"][name])
    kept = report["fp32_nodes"]
    assert 0 < len(kept) < len(ranked) / 4 and kept == ranked[: len(kept)]  # the most damaging, greedily
    # the graph itself: kept nodes read float weights, every other Conv reads dequantized int8 weights
    graph = onnx.load(str(int8_dir(get_model_spec(MODEL), report["calibration_sha256"]) / "model.onnx")).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    float_weight = {node.name: node.input[1] not in dequantized for node in graph.node if node.op_type == "Conv"}
    assert {name for name, is_float in float_weight.items() if is_float} == set(kept)
    assert report["calibration_images"] == [p.name for p in calibration_images()]


def test_a_tampered_int8_graph_is_refused(report: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get_model_spec(MODEL)
    source = int8_dir(spec, report["calibration_sha256"])
    monkeypatch.setenv("OFFSHELF_HOME", str(tmp_path))
    for name in ("model.onnx", "meta.json"):  # the fp32 graph it was made from, then the int8 graph
        cache_dir(spec).mkdir(parents=True, exist_ok=True)
        shutil.copy(source.parent / name, cache_dir(spec) / name)
    shutil.copytree(source, int8_dir(spec, report["calibration_sha256"]))
    assert load_backbone(MODEL, threads=1, precision="int8").precision == "int8"
    model = int8_dir(spec, report["calibration_sha256"]) / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"sha256 mismatch \(corrupt file\); refusing to run it"):
        load_backbone(MODEL, threads=1, precision="int8")
    with pytest.raises(ModelError, match="calibrated on image set 0123456789abcdef is not in"):
        load_backbone(MODEL, threads=1, precision="int8", calibration="0123456789abcdef" * 4)


def test_a_graph_short_of_its_target_is_flagged_when_loaded(report: dict, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A search that fell short (open-nsfw-resnet: every convolution in fp32 and still below target) is said so
    on loading; a graph that reached it loads silently."""
    assert fidelity_shortfall(report) is None
    spec = get_model_spec(MODEL)
    source = int8_dir(spec, report["calibration_sha256"])
    monkeypatch.setenv("OFFSHELF_HOME", str(tmp_path))
    cache_dir(spec).mkdir(parents=True)
    for name in ("model.onnx", "meta.json"):
        shutil.copy(source.parent / name, cache_dir(spec) / name)
    shutil.copytree(source, int8_dir(spec, report["calibration_sha256"]))
    short = {**report, "fidelity": {"mean_cosine": 0.9823, "min_cosine": 0.95}}
    (int8_dir(spec, report["calibration_sha256"]) / "meta.json").write_text(json.dumps(short))
    with caplog.at_level("WARNING", logger="offshelf.models"):
        load_backbone(MODEL, threads=1, precision="int8")
    assert f"mean cosine of 0.9823 to fp32 on its calibration photos, short of the {SEARCH_TARGET}" in caplog.text
    assert f"{len(report['fp32_nodes'])} of {len(report['sensitivity'])} weighted nodes kept in fp32" in caplog.text
    nothing_quantized = {**short, "fp32_nodes": list(report["sensitivity"]), "quantized_nodes": 0}
    assert "no convolution runs in int8, so it is no faster" in fidelity_shortfall(nothing_quantized)


def test_store_records_precision_and_refuses_mixing(report: dict, photos: list[Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert embed(photos[:3], store, precision="int8", progress=False).embedded == 3
    config = FeatureStore.open(store).config
    assert (config.precision, config.calibration) == ("int8", report["calibration_sha256"])
    with pytest.raises(OffshelfError, match=r"precision=int8, calibration=5?[0-9a-f]+; refusing to add features"):
        embed(photos[3:5], store, precision="fp32", progress=False)
    assert embed(photos[3:5], store, progress=False).embedded == 2  # no precision given: the store's

    searcher = Searcher(store)
    assert searcher.embedder.backbone.precision == "int8"
    top = searcher.search_files([photos[4]], k=1)[0][0]
    assert Path(top.path).name == photos[4].name and top.score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(OffshelfError, match="holds int8 features; --precision fp32 cannot search them"):
        Searcher(store, precision="fp32")
    fp32_store = tmp_path / "fp32"
    embed(photos[:1], fp32_store, progress=False)
    assert json.loads((fp32_store / "manifest.json").read_text())["precision"] == "fp32"
    with pytest.raises(OffshelfError, match="holds fp32 features; --precision int8 cannot search them"):
        Searcher(fp32_store, precision="int8")


def test_cli_precision_flags(report: dict, photos: list[Path], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    assert main(["embed", *map(str, photos[:2]), "--store", store, "--precision", "int8", "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embedded"] == 2
    assert main(["search", str(photos[1]), "--store", store, "-k", "1", "--precision", "int8", "--json"]) == 0
    assert Path(json.loads(capsys.readouterr().out)[0]["path"]).name == photos[1].name
    assert main(["search", str(photos[1]), "--store", store, "--precision", "fp32"]) == 2
    assert "cannot search them" in capsys.readouterr().err
    assert main(["embed", str(photos[0]), "--store", str(tmp_path / "x"), "--calibrate-on", str(tmp_path)]) == 2
    assert "needs --precision int8" in capsys.readouterr().err
    few = tmp_path / "few"
    few.mkdir()
    shutil.copy(photos[0], few)
    assert main(["embed", str(photos[0]), "--store", str(tmp_path / "y"), "--precision", "int8",
                 "--calibrate-on", str(few)]) == 2
    assert "1 images; calibration needs at least 4" in capsys.readouterr().err


def test_serve_opens_at_the_store_precision(report: dict, photos: list[Path], tmp_path: Path) -> None:
    from offshelf.serve import ServeConfig
    from offshelf.serve.service import Service

    store = tmp_path / "store"
    embed(photos[:2], store, precision="int8", progress=False)
    assert Service(ServeConfig(store=store)).searcher.embedder.backbone.precision == "int8"
    with pytest.raises(OffshelfError, match="holds int8 features; --precision fp32"):
        Service(ServeConfig(store=store, precision="fp32"))


def test_user_onnx_model_gets_an_int8_graph(tiny_onnx: tuple[Path, np.ndarray, np.ndarray],  # noqa: F811
                                            photos: list[Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered model, calibrated on the user's own images (`calibrate_on`), recorded in its store."""
    monkeypatch.setenv("OFFSHELF_HOME", str(tmp_path / "home"))
    path, _, _ = tiny_onnx
    register_model(tiny_spec("tiny-int8", path))
    mine = tmp_path / "mine"
    mine.mkdir()
    for photo in photos[:6]:
        shutil.copy(photo, mine)
    store = tmp_path / "store"
    embed(photos[6:8], store, model="tiny-int8", precision="int8", calibrate_on=mine, progress=False)
    config = FeatureStore.open(store).config
    assert config.calibration == calibration_sha256(sorted(mine.iterdir()))
    meta = json.loads((int8_dir(get_model_spec("tiny-int8"), config.calibration) / "meta.json").read_text())
    assert meta["calibration_images"] == sorted(p.name for p in mine.iterdir())
    assert meta["fidelity"]["mean_cosine"] >= TARGET_COSINE
    stored = FeatureStore.open(store).vectors()[2]
    fp32 = Embedder(make_config(get_model_spec("tiny-int8"))).embed_files(photos[6:8])
    cosine = np.sum(stored * fp32, axis=1) / np.linalg.norm(stored, axis=1) / np.linalg.norm(fp32, axis=1)
    assert cosine.min() > 0.95, cosine
    # search finds the graph by the store's recorded calibration, without the images
    assert Searcher(store).embedder.backbone.precision == "int8"
