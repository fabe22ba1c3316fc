"""The text tower of a CLIP-type model: the checkpoint's fast tokenizer (`tokenizers`) and an ONNX Runtime
session. No torch at query time; the graph is exported once (see `offshelf.models.huggingface`).

    encoder = load_text_encoder(spec)
    vectors = encoder.encode(["a red bicycle"])  # (1, dim) float32, in the image embeddings' space
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from offshelf.models.errors import ModelError
from offshelf.models.huggingface import ensure_text_onnx, hf_model_spec, text_problem
from offshelf.models.runtime import resolve_threads, session_options
from offshelf.models.spec import ModelSpec

HF_INSTALL = "pip install 'offshelf[hf]'"


class TextEncoder:
    """Texts -> embeddings of a model's text tower. Thread-safe (tokenizers and ORT sessions are)."""

    def __init__(self, spec: ModelSpec, tokenizer: Any, session: ort.InferenceSession) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.session = session
        self.inputs = list(spec.extra["text"]["inputs"])

    def __repr__(self) -> str:
        return f"TextEncoder({self.spec.name!r})"

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The int64 `(N, length)` arrays the graph takes, padded and truncated as the model was trained."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ModelError("text queries must be non-empty strings")
        encodings = self.tokenizer.encode_batch(list(texts))
        arrays = {"input_ids": np.array([e.ids for e in encodings], np.int64),
                  "attention_mask": np.array([e.attention_mask for e in encodings], np.int64)}
        return {name: arrays[name] for name in self.inputs}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """`(N, dim)` float32 text embeddings (not normalized, like the stored image embeddings)."""
        (vectors,) = self.session.run(["text_embeds"], self.tokenize(texts))
        return np.asarray(vectors, np.float32)


def load_text_encoder(spec: ModelSpec, *, threads: int | None = None) -> TextEncoder:
    """The text tower of `spec` (a CLIP or SigLIP checkpoint), exporting its graph once if needed."""
    try:
        from tokenizers import Tokenizer
    except ModuleNotFoundError as error:
        raise ModelError(f"text queries need the tokenizers package: {HF_INSTALL}") from error
    graph, tokenizer_file = ensure_text_onnx(spec)
    settings = spec.extra["text"]
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    pad_id = tokenizer.token_to_id(settings["pad_token"]) if settings["pad_token"] else None
    if pad_id is None:
        raise ModelError(f"model {spec.name}: the tokenizer has no pad token {settings['pad_token']!r}")
    tokenizer.enable_truncation(int(settings["max_length"]))
    length = int(settings["max_length"]) if settings["pad_to_max_length"] else None
    tokenizer.enable_padding(pad_id=pad_id, pad_token=settings["pad_token"], length=length)
    count = resolve_threads(threads)
    session = ort.InferenceSession(str(graph), session_options(count), providers=["CPUExecutionProvider"])
    return TextEncoder(spec, tokenizer, session)


def store_text_encoder(model_spec: dict[str, Any], layer: str, *, threads: int | None = None) -> TextEncoder:
    """The text tower for features of `layer` made with the model `model_spec` describes (a store's manifest
    holds both); ModelError says why text cannot search them. The model is re-resolved from its name, so the
    checkpoint's weights must still have the recorded sha256."""
    problem = text_problem(model_spec, layer)
    if problem is not None:
        raise ModelError(problem)
    return load_text_encoder(hf_model_spec(str(model_spec["name"])), threads=threads)
