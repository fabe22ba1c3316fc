"""Zero-shot labels: each stored image gets the class whose prompt ("a photo of a {}.") its embedding is
closest to, by cosine similarity with the text tower of a CLIP-type model (Radford et al. 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from offshelf.errors import OffshelfError
from offshelf.models.text import TextEncoder, store_text_encoder
from offshelf.store import FeatureStore, StoreConfig
from offshelf.vectors import l2_normalize

DEFAULT_TEMPLATE = "a photo of a {}."


def parse_classes(text: str | Sequence[str]) -> list[str]:
    """Class names from `"cat,dog,car"` or a list; OffshelfError unless there are two distinct names."""
    names = [c.strip() for c in (text.split(",") if isinstance(text, str) else text)]
    names = list(dict.fromkeys(c for c in names if c))
    if len(names) < 2:
        raise OffshelfError(f"zero-shot labels need at least two class names, got {names}")
    return names


def prompts(classes: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One text per class: `template` with `{}` replaced by the class name."""
    if template.count("{}") != 1:
        raise OffshelfError(f"the template must contain {{}} once, where the class name goes; got {template!r}")
    return [template.replace("{}", name) for name in classes]


def zero_shot_scores(vectors: np.ndarray, encoder: TextEncoder, classes: Sequence[str],
                     template: str = DEFAULT_TEMPLATE) -> np.ndarray:
    """`(n, classes)` cosine similarities between image embeddings and the classes' prompts."""
    texts = l2_normalize(encoder.encode(prompts(classes, template)))
    return l2_normalize(np.asarray(vectors, np.float32)) @ texts.T


def config_encoder(config: StoreConfig) -> TextEncoder | None:
    """The text tower for a store's features, None when its model has none."""
    from offshelf.models.huggingface import text_problem

    if text_problem(config.model_spec, config.layer) is not None:
        return None
    return store_text_encoder(config.model_spec, config.layer)


def zero_shot_labels(store: str | Path | FeatureStore, classes: str | Sequence[str],
                     template: str = DEFAULT_TEMPLATE) -> list[dict[str, Any]]:
    """Every stored item with its best class and that class's cosine score, in store order."""
    names = parse_classes(classes)
    opened = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    encoder = store_text_encoder(opened.config.model_spec, opened.config.layer)
    ids, paths, vectors = opened.vectors()
    scores = zero_shot_scores(vectors, encoder, names, template)
    best = scores.argmax(axis=1) if len(paths) else np.empty(0, int)
    return [{"id": int(i), "path": path, "label": names[b], "score": float(row[b])}
            for i, path, b, row in zip(ids.tolist(), paths, best.tolist(), scores)]


def zero_shot_accuracy(vectors: np.ndarray, labels: Sequence[str], encoder: TextEncoder,
                       template: str = DEFAULT_TEMPLATE) -> float:
    """Fraction of items whose zero-shot label (among the label names present) is their own label."""
    classes = sorted({str(label) for label in labels})
    predicted = np.asarray(classes)[zero_shot_scores(vectors, encoder, classes, template).argmax(axis=1)]
    return float(np.mean(predicted == np.asarray([str(label) for label in labels])))
