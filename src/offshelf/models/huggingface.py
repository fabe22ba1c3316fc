"""Hugging Face vision checkpoints as offshelf models: `hf:PATH` (a folder saved by `save_pretrained`) or
`hf:REPO_ID` (a repository already in the local Hugging Face cache; offshelf never downloads).

A checkpoint is read as data only: `config.json` (which family), `preprocessor_config.json` (the image
recipe), `*.safetensors` (the weights; pickled `.bin` weights are refused) and, for CLIP and SigLIP,
`tokenizer.json`. Nothing in a checkpoint or a manifest is imported or called: the family picks one of the
graphs written in `offshelf.models._hf_export`.

A resolved model is named `hf:REF@sha256:HEX`, REF the folder's absolute path or the repo id and HEX the
sha256 of its weights. That name is what a store records, so re-opening a store re-resolves REF and refuses
weights whose sha256 differs, and the store refuses to mix features of two sets of weights. The graphs (image
tower, text tower) are exported once with torch and transformers and cached under
`offshelf_home()/models/hf-<sha256 prefix>[-text]/`, checked by sha256 on every load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from offshelf._version import __version__
from offshelf.errors import OffshelfError
from offshelf.models.cache import ensure_cached, offshelf_home, sha256_file
from offshelf.models.errors import ModelError
from offshelf.models.graph import check_layers
from offshelf.models.spec import Layer, ModelSpec, Preprocessing

HF_PREFIX = "hf:"
SHA_MARK = "@sha256:"
FAMILIES = ("vit", "dinov2", "clip", "siglip", "convnext")
TEXT_FAMILIES = ("clip", "siglip")
TEXT_LAYER = "image-embeds"  # the layer that shares its space with the text tower
HF_CACHE_FORMAT = 1  # bump when the exported graphs change, so that old cache entries are rebuilt
EXPORT_OPSET = 17
EXPORT_INSTALL = "pip install 'offshelf[hf]' torch==2.13.0"
WEIGHT_PATTERN = "*.safetensors"
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
# Pillow's filter numbers, as transformers stores them in `resample`.
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def is_hf_name(name: str) -> bool:
    """Whether `name` refers to a Hugging Face checkpoint (`hf:...`)."""
    return name.startswith(HF_PREFIX)


def split_name(name: str) -> tuple[str, str | None]:
    """`hf:REF[@sha256:HEX]` -> (REF, HEX or None)."""
    if not is_hf_name(name) or len(name) == len(HF_PREFIX):
        raise ModelError(f"a Hugging Face model is named hf:FOLDER or hf:REPO_ID, got {name!r}")
    ref, mark, sha = name[len(HF_PREFIX):].rpartition(SHA_MARK)
    return (ref, sha) if mark else (sha, None)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint found on disk: where, which family, its parsed configs and the sha256 of its weights."""

    ref: str
    folder: Path
    family: str
    weights_sha256: str
    config: dict[str, Any] = field(compare=False, repr=False)
    processor: dict[str, Any] = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{HF_PREFIX}{self.ref}{SHA_MARK}{self.weights_sha256}"

    @property
    def has_text(self) -> bool:
        return self.family in TEXT_FAMILIES


def hub_cache() -> Path:
    """The local Hugging Face cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface") / "hub"


def cached_snapshot(repo_id: str) -> Path:
    """The folder of `repo_id`'s `main` snapshot in the local cache; ModelError says how to fetch it."""
    cache = hub_cache()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    snapshot = repo / "snapshots" / ref.read_text().strip() if ref.is_file() else None
    if snapshot is None or not snapshot.is_dir():
        raise ModelError(
            f"{repo_id!r} is neither a folder nor a repository in the local Hugging Face cache ({cache}); "
            f"fetch it once where there is internet with `hf download {repo_id}` and copy the cache here "
            "(or set HF_HUB_CACHE), or pass the folder saved with save_pretrained"
        )
    return snapshot


def resolve_checkpoint(ref: str) -> Checkpoint:
    """Find the checkpoint `ref` (a folder, else a repo id in the local cache) and check what it holds."""
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{ref} is a file; hf: takes a folder saved with save_pretrained or a repo id")
        folder = path.resolve()
        ref = str(folder)
    elif _REPO_ID.fullmatch(ref):
        folder = cached_snapshot(ref)
    else:
        raise ModelError(f"no folder {ref} (and it is not a Hugging Face repo id)")
    config = _read_json(folder, "config.json", "a folder saved with save_pretrained has one")
    family = str(config.get("model_type", ""))
    if family not in FAMILIES:
        raise ModelError(
            f"unsupported architecture {family or 'unknown'!r} ({', '.join(config.get('architectures') or [])}) "
            f"in {folder}; offshelf supports the model types {', '.join(FAMILIES)}"
        )
    processor = _read_json(folder, "preprocessor_config.json", "save the checkpoint's image processor with it")
    return Checkpoint(ref, folder, family, weights_sha256(folder), config, processor)


def _read_json(folder: Path, name: str, hint: str) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        raise ModelError(f"{folder} is not a Hugging Face checkpoint: no {name} ({hint})")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object")
    return data


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files; ModelError for none, or for pickled weights only."""
    files = sorted(folder.glob(WEIGHT_PATTERN))
    if files:
        return files
    pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in folder.glob(pattern))
    if pickled:
        raise ModelError(
            f"{folder} has only pickled weights ({', '.join(pickled)}), which could run code when loaded; "
            "re-save the model on a trusted machine with save_pretrained (safetensors is the default)"
        )
    raise ModelError(f"{folder} is not a Hugging Face checkpoint: no {WEIGHT_PATTERN} weights")


_sha_memo: dict[tuple[str, int, int], str] = {}


def weights_sha256(folder: Path) -> str:
    """sha256 of the weights: the file's for one file; for shards, of their `sha256  name` lines (sha256sum's
    output, sorted by name). Remembered per (path, size, mtime) within a process."""
    digests = []
    for path in weight_files(folder):
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _sha_memo:
            _sha_memo[key] = sha256_file(path)
        digests.append((path.name, _sha_memo[key]))
    if len(digests) == 1:
        return digests[0][1]
    return hashlib.sha256("".join(f"{sha}  {name}\n" for name, sha in digests).encode()).hexdigest()


def image_preprocessing(processor: dict[str, Any], family: str) -> Preprocessing:
    """The checkpoint's image recipe (size, resample, crop, rescale, mean, std) as a `Preprocessing`."""

    def unsupported(what: str) -> ModelError:
        return ModelError(f"the checkpoint's image processor is not supported: {what} ({processor})")

    if not processor.get("do_resize", True):
        raise unsupported("do_resize is false, so inputs would keep each image's own size")
    resample = PIL_FILTERS.get(processor.get("resample", 2))
    if resample is None:
        raise unsupported(f"resample {processor.get('resample')!r}")
    size, crop = processor.get("size") or {}, processor.get("crop_size") or {}
    do_crop = bool(processor.get("do_center_crop", False))
    if family == "convnext" and "crop_pct" in processor and "shortest_edge" in size:
        edge = int(size["shortest_edge"])  # transformers: below 384 px, resize to edge / crop_pct and crop
        side, resize = edge, (int(edge / float(processor["crop_pct"])) if edge < 384 else 0)
    elif "shortest_edge" in size and do_crop and crop.get("height") == crop.get("width"):
        side, resize = int(crop["height"]), int(size["shortest_edge"])
        if resize < side:
            raise unsupported("a centre crop larger than the resized image")
    elif "height" in size and size.get("height") == size.get("width"):
        side, resize = int(size["height"]), 0
        if do_crop and (crop.get("height"), crop.get("width")) != (side, side):
            raise unsupported("a centre crop of a square resize")
    else:
        raise unsupported("only a square resize, or a shorter-side resize with a square centre crop, is")
    factor = float(processor.get("rescale_factor", 1 / 255)) if processor.get("do_rescale", True) else 1.0
    if processor.get("do_normalize", True):
        mean, std = processor.get("image_mean"), processor.get("image_std")
        if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
            raise unsupported("image_mean and image_std must be three numbers each")
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    # (pixel * factor - mean) / std == (pixel - mean / factor) / (std / factor)
    return Preprocessing(
        size=side,
        mean=tuple(float(m) / factor for m in mean),  # type: ignore[arg-type]
        std=tuple(float(s) / factor for s in std),  # type: ignore[arg-type]
        resize=resize,
        resample=resample,
    )


def _layers(checkpoint: Checkpoint) -> tuple[tuple[Layer, ...], str]:
    """The family's selectable layers (ONNX output names use `_`) and the default one."""
    config = checkpoint.config
    if checkpoint.family == "convnext":
        sizes = [int(c) for c in config["hidden_sizes"]]
        stages = tuple(Layer(f"stage{i}", f"stage{i}", c) for i, c in enumerate(sizes, 1))
        return (*stages, Layer("pooled", "pooled", sizes[-1], kind="vector")), "pooled"
    if checkpoint.family in TEXT_FAMILIES:
        hidden = int(config["vision_config"]["hidden_size"])
        dim = int(config["projection_dim"]) if checkpoint.family == "clip" else hidden
        layers = [Layer(TEXT_LAYER, "image_embeds", dim, kind="vector")]
        if checkpoint.family == "clip":
            layers.append(Layer("cls", "cls", hidden, kind="vector"))
        return (*layers, Layer("patch-mean", "patch_mean", hidden, kind="vector")), TEXT_LAYER
    hidden = int(config["hidden_size"])
    return (
        Layer("cls", "cls", hidden, kind="vector"),
        Layer("patch-mean", "patch_mean", hidden, kind="vector"),
        Layer("cls+patch-mean", "cls_patch_mean", 2 * hidden, kind="vector"),
    ), "cls"


def text_settings(checkpoint: Checkpoint) -> dict[str, Any]:
    """How texts are tokenized and fed to the text tower (JSON-ready; part of the model's spec)."""
    folder = checkpoint.folder
    if not (folder / "tokenizer.json").is_file():
        raise ModelError(
            f"{folder} has no tokenizer.json (a fast tokenizer); save one there with "
            "AutoTokenizer.from_pretrained(FOLDER, use_fast=True).save_pretrained(FOLDER)"
        )
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text()) \
        if (folder / "tokenizer_config.json").is_file() else {}
    text_config = checkpoint.config["text_config"]
    max_length = int(text_config.get("max_position_embeddings", 77))
    if isinstance(tokenizer_config.get("model_max_length"), int):
        max_length = min(max_length, tokenizer_config["model_max_length"])
    pad = tokenizer_config.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    siglip = checkpoint.family == "siglip"
    return {
        "max_length": max_length,
        # SigLIP was trained on texts padded to the full length, without an attention mask
        "pad_to_max_length": siglip,
        "pad_token": pad,
        "inputs": ["input_ids"] if siglip else ["input_ids", "attention_mask"],
        "tokenizer_sha256": sha256_file(folder / "tokenizer.json"),
    }


def resolve_name(name: str) -> Checkpoint:
    """The checkpoint of `name` (`hf:REF` or `hf:REF@sha256:HEX`), found on disk now; with a sha256 in the
    name, weights with another sha256 are refused (ModelError)."""
    ref, expected = split_name(name)
    checkpoint = resolve_checkpoint(ref)
    if expected is not None and expected != checkpoint.weights_sha256:
        raise ModelError(
            f"the weights of hf:{ref} changed: their sha256 is {checkpoint.weights_sha256[:16]}..., but these "
            f"features were made with {expected[:16]}...; restore those weights or embed into a new store"
        )
    return checkpoint


def checkpoint_spec(checkpoint: Checkpoint) -> ModelSpec:
    """What offshelf makes of a checkpoint: its recipe, its family's layers, its text settings."""
    layers, default = _layers(checkpoint)
    extra: dict[str, Any] = {"family": checkpoint.family, "ref": checkpoint.ref,
                             "weights_sha256": checkpoint.weights_sha256}
    if checkpoint.has_text:
        extra["text"] = text_settings(checkpoint)
    return ModelSpec(
        name=checkpoint.name,
        preprocessing=image_preprocessing(checkpoint.processor, checkpoint.family),
        layers=layers,
        default_layer=default,
        source="huggingface",
        description=f"Hugging Face {checkpoint.family} checkpoint {checkpoint.ref}",
        extra=extra,
    )


def hf_model_spec(name: str) -> ModelSpec:
    """The spec of the checkpoint `name` (`hf:REF` or `hf:REF@sha256:HEX`), resolved from disk now."""
    return checkpoint_spec(resolve_name(name))


def text_problem(model_spec: dict[str, Any], layer: str) -> str | None:
    """Why text queries cannot search features of `layer` of this model (None when they can).

    `model_spec` is a spec's `to_dict()` (a store's manifest holds one).
    """
    if "text" not in model_spec.get("extra", {}):
        return f"model {model_spec.get('name')} has no text tower (text queries need a CLIP or SigLIP model)"
    if layer != TEXT_LAYER:
        return f"layer {layer!r} is not in the text tower's space; embed with --layer {TEXT_LAYER} for text queries"
    return None


def _checked(spec: ModelSpec) -> Checkpoint:
    """Re-resolve `spec`'s checkpoint and refuse a description (say, a manifest's) that does not match it."""
    if spec.source != "huggingface":
        raise ModelError(f"model {spec.name!r} is not a Hugging Face checkpoint")
    checkpoint = resolve_name(spec.name)
    if checkpoint_spec(checkpoint) != spec:
        raise ModelError(f"the description of model {spec.name} does not match its checkpoint on disk")
    return checkpoint


def _cache(checkpoint: Checkpoint, suffix: str, recipe: dict[str, Any],
           build: Callable[[], tuple[bytes, dict[str, Any]]]) -> Path:
    directory = offshelf_home() / "models" / f"hf-{checkpoint.weights_sha256[:16]}{suffix}"
    full = {"format": HF_CACHE_FORMAT, "source_sha256": checkpoint.weights_sha256, "family": checkpoint.family,
            "opset": EXPORT_OPSET, **recipe}
    return ensure_cached(directory, full, build)


def _exporter() -> Any:
    """The export module (torch and transformers are imported there and nowhere else)."""
    try:
        from offshelf.models import _hf_export
    except ModuleNotFoundError as error:
        if error.name not in ("torch", "transformers"):
            raise
        raise OffshelfError(
            f"a Hugging Face model is exported to ONNX once, which needs PyTorch and transformers: {EXPORT_INSTALL}"
        ) from error
    return _hf_export


def ensure_hf_onnx(spec: ModelSpec) -> Path:
    """The image tower's ONNX graph (dynamic batch, every layer an output), exported once and cached."""
    checkpoint = _checked(spec)
    outputs = [layer.output for layer in spec.layers]
    size = spec.preprocessing.size

    def build() -> tuple[bytes, dict[str, Any]]:
        data, facts = _exporter().export_image(checkpoint.folder, checkpoint.family, outputs, size, EXPORT_OPSET)
        shapes = check_layers(onnx.load_from_string(data), spec)
        return data, {**facts, "model": spec.name, "offshelf": __version__, "layer_shapes": shapes}

    return _cache(checkpoint, "", {"outputs": outputs, "size": size}, build)


def ensure_text_onnx(spec: ModelSpec) -> tuple[Path, Path]:
    """The text tower's ONNX graph (dynamic batch and length) and the checkpoint's `tokenizer.json`."""
    checkpoint = _checked(spec)
    if not checkpoint.has_text:
        raise ModelError(f"model {spec.name} has no text tower (text queries need a CLIP or SigLIP model)")
    settings = spec.extra["text"]

    def build() -> tuple[bytes, dict[str, Any]]:
        data, facts = _exporter().export_text(checkpoint.folder, checkpoint.family, settings, EXPORT_OPSET)
        return data, {**facts, "model": spec.name, "offshelf": __version__}

    graph = _cache(checkpoint, "-text", {"inputs": settings["inputs"]}, build)
    tokenizer = checkpoint.folder / "tokenizer.json"
    if sha256_file(tokenizer) != settings["tokenizer_sha256"]:
        raise ModelError(f"{tokenizer} changed while it was being loaded")
    return graph, tokenizer
