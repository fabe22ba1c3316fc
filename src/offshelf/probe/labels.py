"""Labels for a store's items: a `path,label` CSV or folder names, aligned with the store's rows."""

from __future__ import annotations

import csv
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from offshelf.errors import OffshelfError

#: Multi-label targets: one tuple of labels per item.
Targets = list[tuple[Any, ...]]


def is_collection(item: Any) -> bool:
    """Whether one item's target is several labels."""
    return isinstance(item, (list, tuple, set, frozenset, np.ndarray))


def is_indicator(y: Any) -> bool:
    """Whether targets are a 0/1 indicator matrix (n, classes)."""
    return isinstance(y, np.ndarray) and y.ndim == 2


def looks_multilabel(y: Any) -> bool:
    """Whether targets are multi-label (an indicator matrix, or some item has a collection of labels)."""
    return is_indicator(y) or any(is_collection(item) for item in y)


def label_tuples(y: Any, multilabel: bool) -> Targets:
    """Each item's labels as a tuple (one label for multi-class targets), in input order, without repeats."""
    if is_indicator(y):
        if not multilabel:
            raise OffshelfError("an indicator matrix of labels is multi-label; give one label per item")
        return [tuple(np.flatnonzero(row).tolist()) for row in y]
    items = y.tolist() if isinstance(y, np.ndarray) else list(y)
    if not multilabel:
        if any(is_collection(item) for item in items):
            raise OffshelfError("this probe is multi-class: give exactly one label per item")
        return [(item,) for item in items]
    return [tuple(dict.fromkeys(item)) if is_collection(item) else (item,) for item in items]



def read_labels_csv(path: str | Path) -> dict[str, list[str]]:
    """`{resolved image path: [labels]}` from a CSV with columns `path,label` (one row per path and label).

    Relative paths are taken relative to the CSV's folder. Other columns are ignored.
    """
    source = Path(path)
    try:
        with source.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames
            if not columns:
                raise OffshelfError(f"labels file {source} is empty")
            missing = [name for name in ("path", "label") if name not in columns]
            if missing:
                raise OffshelfError(
                    f"labels file {source} lacks column(s) {', '.join(missing)} (has {', '.join(columns)})"
                )
            labels: dict[str, list[str]] = {}
            for line, row in enumerate(reader, start=2):
                item, label = (row["path"] or "").strip(), (row["label"] or "").strip()
                if not item or not label:
                    raise OffshelfError(f"{source}, line {line}: a row needs both a path and a label")
                resolved = str((source.parent / Path(item).expanduser()).resolve())
                labels.setdefault(resolved, [])
                if label not in labels[resolved]:
                    labels[resolved].append(label)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise OffshelfError(f"cannot read labels file {source}: {exc}") from None
    if not labels:
        raise OffshelfError(f"labels file {source} has no rows")
    return labels


def labels_from_folders(paths: Sequence[str | Path]) -> dict[str, list[str]]:
    """`{path: [name of the folder holding it]}`."""
    return {str(p): [Path(p).parent.name] for p in paths}


class LabelAlignment(NamedTuple):
    """The store rows that have labels, their labels, and how many store rows had none."""

    rows: np.ndarray
    y: np.ndarray | Targets
    unlabeled: int


def align_labels(store_paths: Sequence[str], labels: Mapping[str | Path, Collection[str]]) -> LabelAlignment:
    """Match labels (keys resolved to absolute paths) to a store's paths (as `FeatureStore.vectors` gives them).

    `y` is a 1-D array of labels if every labelled row has exactly one label, else a list of label tuples.
    """
    by_path = {str(Path(p).expanduser().resolve()): tuple(dict.fromkeys(ls)) for p, ls in labels.items() if ls}
    rows = [i for i, path in enumerate(store_paths) if path in by_path]
    if not rows:
        example = next(iter(by_path), "none")
        raise OffshelfError(
            f"none of the {len(store_paths)} items in the store has a label "
            f"({len(by_path)} labelled paths, e.g. {example})"
        )
    targets = [by_path[store_paths[i]] for i in rows]
    y = np.array([t[0] for t in targets]) if all(len(t) == 1 for t in targets) else targets
    return LabelAlignment(np.array(rows, dtype=np.int64), y, len(store_paths) - len(rows))


@dataclass(frozen=True)
class LabelSource:
    """Where labels come from: a `path,label` CSV, or the name of each item's folder."""

    csv: Path | None = None
    from_folders: bool = False

    def __post_init__(self) -> None:
        if (self.csv is None) == (not self.from_folders):
            raise OffshelfError("give exactly one of --labels CSV or --labels-from-folders")

    def labels_for(self, paths: Sequence[str]) -> dict[str, list[str]]:
        return labels_from_folders(paths) if self.from_folders else read_labels_csv(self.csv)  # type: ignore[arg-type]
