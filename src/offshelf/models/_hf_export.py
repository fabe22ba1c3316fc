"""Export of Hugging Face checkpoints to ONNX: the image tower with every layer as an output, and the text tower.

Imports torch and transformers at module level: only `offshelf.models.huggingface` imports this module, and
only to export. Weights are loaded from safetensors only (`use_safetensors=True`), so loading runs no pickle.
Which model class is built depends on the family alone (a fixed table here), never on a name from a file.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import CLIPModel, ConvNextModel, Dinov2Model, SiglipModel, ViTModel

MODEL_CLASSES: dict[str, Any] = {
    "vit": ViTModel,
    "dinov2": Dinov2Model,
    "clip": CLIPModel,
    "siglip": SiglipModel,
    "convnext": ConvNextModel,
}
INPUT_NAME = "pixel_values"


def load_model(folder: Path, family: str) -> nn.Module:
    """The family's model with the checkpoint's weights, in eval mode, with plain (exportable) attention."""
    transformers.logging.set_verbosity_error()  # no load reports or progress bars in offshelf's output
    transformers.logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if family != "convnext":
        kwargs["attn_implementation"] = "eager"
    if family == "vit":
        kwargs["add_pooling_layer"] = False
    return MODEL_CLASSES[family].from_pretrained(folder, **kwargs).eval()


class ImageTower(nn.Module):
    """pixel_values -> every layer offshelf offers for the family, in the order of `outputs`."""

    def __init__(self, model: nn.Module, family: str, outputs: list[str]) -> None:
        super().__init__()
        self.model, self.family, self.outputs = model, family, outputs

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values: dict[str, torch.Tensor] = {}
        if self.family == "convnext":
            out = self.model(pixel_values=pixel_values, output_hidden_states=True)
            values["pooled"] = out.pooler_output
            values.update({f"stage{i}": h for i, h in enumerate(out.hidden_states[1:], 1)})
        elif self.family in ("clip", "siglip"):
            out = self.model.vision_model(pixel_values=pixel_values)
            hidden = out.last_hidden_state
            if self.family == "clip":
                values["cls"] = out.pooler_output  # the final layer norm of the class token
                values["image_embeds"] = self.model.visual_projection(out.pooler_output)
                values["patch_mean"] = hidden[:, 1:].mean(dim=1)
            else:
                values["image_embeds"] = out.pooler_output  # SigLIP's attention-pooling head
                values["patch_mean"] = hidden.mean(dim=1)
        else:
            hidden = self.model(pixel_values=pixel_values).last_hidden_state  # after the final layer norm
            values["cls"], values["patch_mean"] = hidden[:, 0], hidden[:, 1:].mean(dim=1)
            values["cls_patch_mean"] = torch.cat([values["cls"], values["patch_mean"]], dim=1)
        return tuple(values[name] for name in self.outputs)


class TextTower(nn.Module):
    """Token ids (and, for CLIP, the attention mask) -> the text embedding in the image embeddings' space."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], opset: int) -> tuple[bytes, dict[str, Any]]:
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings concern shape checks, fixed at the export size
        torch.onnx.export(module, args, buffer, dynamo=False, input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True)
    return buffer.getvalue(), {"torch": torch.__version__, "transformers": transformers.__version__}


def export_image(folder: Path, family: str, outputs: list[str], size: int, opset: int) -> tuple[bytes, dict[str, Any]]:
    """The image tower's ONNX bytes: float32 NCHW `size` x `size` input, dynamic batch, `outputs` as outputs."""
    tower = ImageTower(load_model(folder, family), family, outputs)
    dummy = torch.zeros(2, 3, size, size)
    dynamic = {name: {0: "batch"} for name in [INPUT_NAME, *outputs]}
    return _export(tower, (dummy,), [INPUT_NAME], outputs, dynamic, opset)


def export_text(folder: Path, family: str, settings: dict[str, Any], opset: int) -> tuple[bytes, dict[str, Any]]:
    """The text tower's ONNX bytes: int64 `settings["inputs"]` of shape (batch, length) -> `text_embeds`."""
    tower = TextTower(load_model(folder, family))
    inputs = list(settings["inputs"])
    length = int(settings["max_length"])
    dummy = tuple(torch.ones(2, length, dtype=torch.int64) for _ in inputs)
    dynamic = {name: {0: "batch", 1: "length"} for name in inputs} | {"text_embeds": {0: "batch"}}
    return _export(tower, dummy, inputs, ["text_embeds"], dynamic, opset)
