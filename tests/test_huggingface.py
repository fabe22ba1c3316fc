"""Hugging Face checkpoints: tiny random-weight models of every family, saved with save_pretrained, embedded
through the CLI on real photos and compared with transformers' own torch outputs; text search and zero-shot
labels against torch's text tower; identity, caching and the clear errors."""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hf_checkpoints as hf
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from offshelf.cli import main
from offshelf.errors import OffshelfError
from offshelf.extract import Embedder, make_config
from offshelf.models import get_model_spec
from offshelf.models.huggingface import image_preprocessing, split_name
from offshelf.search import Searcher
from offshelf.store import FeatureStore
from offshelf.store.feature_store import write_manifest

SRC = Path(__file__).resolve().parents[1] / "src"
CLASSES = ["cat", "dog", "car"]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every family's tiny checkpoint (and an unsupported ResNet), built once per session."""
    root = tmp_path_factory.mktemp("hf-checkpoints")
    return {family: hf.build(family, root / family) for family in (*hf.FAMILIES, "resnet")}


@pytest.fixture(scope="module", autouse=True)
def offshelf_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh offshelf home for this module, so every family is really exported here (restored after)."""
    home = tmp_path_factory.mktemp("hf-home")
    saved = os.environ.get("OFFSHELF_HOME")
    os.environ["OFFSHELF_HOME"] = str(home)
    yield home
    if saved is None:
        del os.environ["OFFSHELF_HOME"]
    else:
        os.environ["OFFSHELF_HOME"] = saved


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def stores(checkpoints: dict[str, Path], photos: list[Path], tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, Path]:
    """A store of the real photos per family, embedded through the CLI with the default layer."""
    root = tmp_path_factory.mktemp("hf-stores")
    made = {}
    for family in hf.FAMILIES:
        store = root / family
        assert main(["embed", *map(str, photos), "--store", str(store), "--model", f"hf:{checkpoints[family]}",
                     "--quiet", "--json"]) == 0
        made[family] = store
    return made


@functools.cache
def torch_model(folder: Path, family: str) -> torch.nn.Module:
    classes = {"vit": transformers.ViTModel, "dinov2": transformers.Dinov2Model, "clip": transformers.CLIPModel,
               "siglip": transformers.SiglipModel, "convnext": transformers.ConvNextModel}
    return classes[family].from_pretrained(folder).eval()


@functools.cache
def torch_pixels(folder: Path, photos: tuple[Path, ...]) -> torch.Tensor:
    """transformers' image processor (its PIL backend, as without torchvision) on the photos."""
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    return processor(images=[Image.open(p).convert("RGB") for p in photos], return_tensors="pt")["pixel_values"]


def torch_image_features(folder: Path, family: str, photos: list[Path], layer: str | None = None) -> np.ndarray:
    """transformers' own answer: its image processor on the photos, then the torch model."""
    pixels = torch_pixels(folder, tuple(photos))
    model = torch_model(folder, family)
    with torch.no_grad():
        if family in ("clip", "siglip"):
            return model.get_image_features(pixel_values=pixels).pooler_output.numpy()
        out = model(pixel_values=pixels, output_hidden_states=True)
        if family == "convnext":
            chosen = out.pooler_output if layer is None else out.hidden_states[int(layer[-1])].mean((2, 3))
            return chosen.numpy()
        hidden = out.last_hidden_state
        cls, patch = hidden[:, 0].numpy(), hidden[:, 1:].mean(1).numpy()
        return {None: cls, "patch-mean": patch, "cls+patch-mean": np.concatenate([cls, patch], 1)}[layer]


def torch_text_features(folder: Path, family: str, texts: list[str]) -> np.ndarray:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if family == "siglip":  # as SigLIP is used: padded to the full length, no attention mask
        encoded = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
        inputs = {"input_ids": encoded["input_ids"]}
    else:
        inputs = dict(tokenizer(texts, padding=True, truncation=True, return_tensors="pt"))
    with torch.no_grad():
        return torch_model(folder, family).get_text_features(**inputs).pooler_output.numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T


def stored(store: Path, photos: list[Path]) -> np.ndarray:
    _, paths, vectors = FeatureStore.open(store).vectors()
    position = {path: i for i, path in enumerate(paths)}
    return vectors[[position[str(p.resolve())] for p in photos]]


@pytest.mark.parametrize("family", hf.FAMILIES)
def test_cli_embeddings_match_torch(family: str, stores: dict[str, Path], checkpoints: dict[str, Path],
                                    photos: list[Path]) -> None:
    ours, theirs = stored(stores[family], photos), torch_image_features(checkpoints[family], family, photos)
    assert ours.shape == theirs.shape
    assert np.diag(cosine(ours, theirs)).min() >= 0.9999
    # the photos differ from each other, so a constant or mixed-up output would fail the per-image match
    assert cosine(theirs, theirs)[~np.eye(len(photos), dtype=bool)].min() < 0.9999


@pytest.mark.parametrize(("family", "layer", "pool"), [
    ("dinov2", "patch-mean", None), ("dinov2", "cls+patch-mean", None), ("convnext", "stage3", "gap"),
    ("convnext", "stage4", "gap"),
])
def test_other_layers_match_torch(family: str, layer: str, pool: str | None, checkpoints: dict[str, Path],
                                  photos: list[Path]) -> None:
    spec = get_model_spec(f"hf:{checkpoints[family]}")
    ours = Embedder(make_config(spec, layer, pool)).embed_files(photos)
    theirs = torch_image_features(checkpoints[family], family, photos, layer)
    assert np.diag(cosine(ours, theirs)).min() >= 0.9999


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_text_search_scores_match_torch(family: str, stores: dict[str, Path], checkpoints: dict[str, Path],
                                        photos: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    text = "a photo of a cat"
    code, out, _ = cli(capsys, "search", "--text", text, "--store", str(stores[family]), "-k", "5", "--json")
    assert code == 0
    hits = json.loads(out)
    images = torch_image_features(checkpoints[family], family, photos)
    scores = cosine(torch_text_features(checkpoints[family], family, [text]), images)[0]
    expected = {str(p.resolve()): s for p, s in zip(photos, scores)}
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert [h["path"] for h in hits] == sorted(expected, key=expected.get, reverse=True)[:5]
    assert max(abs(h["score"] - expected[h["path"]]) for h in hits) <= 1e-3
    assert set(hits[0]) == {"rank", "id", "path", "score"}  # the JSON of an image search


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_zero_shot_labels_match_torch(family: str, stores: dict[str, Path], checkpoints: dict[str, Path],
                                      photos: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "probe", "zero-shot", "--store", str(stores[family]), "--classes", ",".join(CLASSES),
                       "--template", "a photo of the {}", "--json")
    assert code == 0
    rows = {row["path"]: row for row in json.loads(out)}
    texts = torch_text_features(checkpoints[family], family, [f"a photo of the {c}" for c in CLASSES])
    scores = cosine(torch_image_features(checkpoints[family], family, photos), texts)
    assert len(rows) == len(photos)
    for photo, row_scores in zip(photos, scores):
        row = rows[str(photo.resolve())]
        assert row["label"] == CLASSES[int(row_scores.argmax())]
        assert abs(row["score"] - row_scores.max()) <= 1e-3


def test_evaluate_reports_zero_shot_accuracy(stores: dict[str, Path], checkpoints: dict[str, Path],
                                             photos: list[Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    labels = {str(p.resolve()): ("cat" if i % 2 else "dog") for i, p in enumerate(photos)}
    csv_path = tmp_path / "labels.csv"
    with open(csv_path, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *labels.items()])
    code, out, _ = cli(capsys, "evaluate", str(stores["clip"]), str(stores["vit"]), "--labels", str(csv_path),
                       "--folds", "2", "--quiet", "--json")
    assert code == 0
    clip_row, vit_row = json.loads(out)
    texts = torch_text_features(checkpoints["clip"], "clip", ["a photo of a cat.", "a photo of a dog."])
    predicted = np.array(["cat", "dog"])[cosine(torch_image_features(checkpoints["clip"], "clip", photos),
                                                texts).argmax(1)]
    expected = float(np.mean(predicted == np.array([labels[str(p.resolve())] for p in photos])))
    assert clip_row["zero_shot_accuracy"] == pytest.approx(expected)
    assert vit_row["zero_shot_accuracy"] is None and vit_row["accuracy"] is not None


def test_queries_need_no_torch(stores: dict[str, Path], photos: list[Path]) -> None:
    """Once exported, image and text queries run on ONNX Runtime and tokenizers alone."""
    code = (f"import sys; from offshelf.search import Searcher; s = Searcher({str(stores['clip'])!r}); "
            f"assert s.has_text; s.search_text(['a red bicycle'], 3); s.search_files([{str(photos[0])!r}], 3); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers'}))")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_store_records_the_weights_and_refuses_others(checkpoints: dict[str, Path], photos: list[Path],
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = shutil.copytree(checkpoints["vit"], tmp_path / "vit")
    store = tmp_path / "store"
    assert cli(capsys, "embed", *map(str, photos[:3]), "--store", str(store), "--model", f"hf:{folder}",
               "--quiet")[0] == 0
    sha = (folder / "model.safetensors").read_bytes()
    recorded = FeatureStore.open(store).config.model
    assert split_name(recorded) == (str(folder.resolve()), hashlib.sha256(sha).hexdigest())
    hf.build("vit", folder, seed=1)  # the same folder, other weights
    code, _, err = cli(capsys, "search", str(photos[0]), "--store", str(store))
    assert code == 2 and "weights of hf:" in err and "changed" in err
    code, _, err = cli(capsys, "embed", str(photos[4]), "--store", str(store), "--model", f"hf:{folder}", "--quiet")
    assert code == 2 and "refusing to add features" in err


def test_a_tampered_manifest_is_refused(stores: dict[str, Path], photos: list[Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    store = shutil.copytree(stores["vit"], tmp_path / "store")
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["model_spec"]["preprocessing"]["mean"] = [0.0, 0.0, 0.0]
    write_manifest(store, manifest)  # forged with a valid checksum: the recorded spec must still be refused
    code, _, err = cli(capsys, "search", str(photos[0]), "--store", str(store))
    assert code == 2 and "differs from the checkpoint's one in preprocessing" in err


def test_a_repo_id_resolves_from_the_local_cache(checkpoints: dict[str, Path], photos: list[Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "hub" / "models--tiny-org--tiny-vit"
    shutil.copytree(checkpoints["vit"], repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    code, out, _ = cli(capsys, "embed", str(photos[0]), "--store", str(tmp_path / "s"), "--model",
                       "hf:tiny-org/tiny-vit", "--quiet", "--json")
    assert code == 0 and json.loads(out)["embedded"] == 1
    assert FeatureStore.open(tmp_path / "s").config.model.startswith("hf:tiny-org/tiny-vit@sha256:")
    code, _, err = cli(capsys, "embed", str(photos[0]), "--store", str(tmp_path / "t"), "--model",
                       "hf:tiny-org/not-fetched", "--quiet")
    assert code == 2 and "hf download tiny-org/not-fetched" in err and err.count("\n") == 1


@pytest.mark.parametrize(("make", "message"), [
    ("resnet", "unsupported architecture 'resnet'"),
    ("empty", "is not a Hugging Face checkpoint: no config.json"),
    ("pickled", "has only pickled weights (pytorch_model.bin)"),
])
def test_clear_errors_for_what_is_not_a_supported_checkpoint(make: str, message: str, checkpoints: dict[str, Path],
                                                              photos: list[Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "model"
    if make == "resnet":
        folder = checkpoints["resnet"]
    elif make == "empty":
        folder.mkdir()
        shutil.copy(photos[0], folder)
    else:
        shutil.copytree(checkpoints["vit"], folder)
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    code, _, err = cli(capsys, "embed", str(photos[0]), "--store", str(tmp_path / "s"), "--model", f"hf:{folder}")
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_text_needs_a_text_tower_and_its_layer(stores: dict[str, Path], checkpoints: dict[str, Path],
                                               photos: list[Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "search", "--text", "a cat", "--store", str(stores["dinov2"]))
    assert code == 2 and "has no text tower" in err
    assert not Searcher(stores["convnext"]).has_text and Searcher(stores["siglip"]).has_text
    code, _, err = cli(capsys, "probe", "zero-shot", "--store", str(stores["vit"]), "--classes", "cat,dog")
    assert code == 2 and "has no text tower" in err
    store = tmp_path / "cls"
    assert cli(capsys, "embed", str(photos[0]), "--store", str(store), "--model", f"hf:{checkpoints['clip']}",
               "--layer", "cls", "--quiet")[0] == 0
    code, _, err = cli(capsys, "search", "--text", "a cat", "--store", str(store))
    assert code == 2 and "embed with --layer image-embeds" in err
    code, _, err = cli(capsys, "search", str(photos[0]), "--text", "a cat", "--store", str(store))
    assert code == 2 and "not both" in err


def test_image_processor_configs() -> None:
    """The recipes transformers applies, read from the processor config; the unsupported ones refused."""
    base = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0], "resample": 3}
    big = image_preprocessing({**base, "size": {"shortest_edge": 384}, "crop_pct": 0.875}, "convnext")
    assert (big.size, big.resize, big.resample) == (384, 0, "bicubic")
    small = image_preprocessing({**base, "size": {"shortest_edge": 224}, "crop_pct": 0.875}, "convnext")
    assert (small.size, small.resize) == (224, 256)
    assert small.mean == pytest.approx((127.5,) * 3) and small.std == pytest.approx((63.75, 127.5, 255.0))
    with pytest.raises(OffshelfError, match="only a square resize"):
        image_preprocessing({**base, "size": {"height": 224, "width": 320}}, "vit")
    with pytest.raises(OffshelfError, match="do_resize is false"):
        image_preprocessing({**base, "do_resize": False, "size": {"height": 224, "width": 224}}, "vit")
    with pytest.raises(OffshelfError, match="a centre crop larger than the resized image"):
        image_preprocessing({**base, "size": {"shortest_edge": 200}, "do_center_crop": True,
                             "crop_size": {"height": 224, "width": 224}}, "clip")


def test_text_search_over_http_matches_torch_and_refuses_stores_without_a_text_tower(
        stores: dict[str, Path], checkpoints: dict[str, Path], photos: list[Path]) -> None:
    """`POST /v1/search {"text": ...}` ranks like torch; a store whose model has no text tower answers 400 with
    the reason, and `/v1/stats` says which stores take text (the page shows its text box from it)."""
    from fastapi.testclient import TestClient

    from offshelf.serve.app import create_app
    from offshelf.serve.config import ServeConfig

    text = "a photo of a cat"
    images = torch_image_features(checkpoints["clip"], "clip", photos)
    scores = cosine(torch_text_features(checkpoints["clip"], "clip", [text]), images)[0]
    expected = {str(p.resolve()): s for p, s in zip(photos, scores)}
    with TestClient(create_app(ServeConfig(store=stores["clip"]))) as client:
        assert client.get("/v1/stats").json()["text"] is True
        answer = client.post("/v1/search", json={"text": text, "k": 4})
        assert answer.status_code == 200, answer.text
        hits = answer.json()["hits"]
        assert [h["path"] for h in hits] == sorted(expected, key=expected.get, reverse=True)[:4]
        assert max(abs(h["score"] - expected[h["path"]]) for h in hits) <= 1e-3
        assert client.post("/v1/search", json={"text": "", "k": 4}).status_code == 422
    with TestClient(create_app(ServeConfig(store=stores["vit"]))) as client:
        assert client.get("/v1/stats").json()["text"] is False
        refused = client.post("/v1/search", json={"text": text})
        assert refused.status_code == 400 and "has no text tower" in refused.json()["detail"]
