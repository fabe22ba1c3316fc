"""The models' error type."""

from __future__ import annotations

from offshelf.errors import OffshelfError


class ModelError(OffshelfError, ValueError):
    """An unknown model name, or a model spec that does not fit its ONNX graph (a usage error, exit code 2)."""
