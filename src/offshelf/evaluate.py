"""Which model, layer and pooling works best on *my* labelled images? Cross-validated probes and retrieval.

The protocol, the same for every feature set (a store's embeddings or a hand-crafted baseline):

* **Classification**: k-fold cross-validation (scikit-learn's `StratifiedKFold`, shuffled with a fixed seed;
  `KFold` for multi-label targets). In each fold a `LinearProbe` is fitted on the training part only, and its
  own internal cross-validation (also on the training part only) chooses C; the test part is used once, to
  score the fitted probe with `offshelf.probe.evaluate`. `accuracy` and `mAP` are the means over the folds
  (`accuracy_std` and `mAP_std` their standard deviations).
* **Retrieval**: leave-one-out class retrieval. Every item queries all the others by cosine similarity (the
  features L2-normalized); the relevant items are those with the same label (for multi-label targets: sharing
  at least one label). `retrieval_mAP` is the mean non-interpolated AP over the queries that have a relevant
  item (`offshelf.metrics.mean_average_precision_ranked`). Similarities are computed a block of queries at a
  time, as one matrix product per block.

`evaluate_features` is the core, on a feature matrix and labels, and knows nothing of stores.
`evaluate_stores` applies it to several stores, and to baselines computed from the same image files, on the
items that are labelled and present in every store (sorted by path, so that the folds are the same for every
row). `plot_results` draws the results as a bar chart.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold
from tqdm import tqdm

from offshelf.baselines import BASELINES, BaselineError, extract_baseline
from offshelf.errors import OffshelfError
from offshelf.metrics import json_float, mean_average_precision_ranked, mean_defined
from offshelf.probe import LabelSource, LinearProbe, align_labels, evaluate
from offshelf.probe.labels import label_tuples, looks_multilabel
from offshelf.probe.zeroshot import config_encoder, zero_shot_accuracy
from offshelf.store import FeatureStore
from offshelf.vectors import l2_normalize

__all__ = ["BASELINE_ALIASES", "evaluate_features", "evaluate_stores", "plot_results", "require_matplotlib",
           "retrieval_map"]

#: Short names accepted for the baselines of `offshelf.baselines` (the full names work too).
BASELINE_ALIASES: dict[str, str] = {"raw": "raw_pixels", "colour": "color_histogram", "color": "color_histogram"}
#: Folds of the probe's own cross-validation for C, inside each training fold (fewer if a class is small).
INNER_FOLDS = 3
#: Similarities computed per block of retrieval queries (queries x items), to bound memory.
BLOCK_ELEMENTS = 1 << 22

Labels = Sequence[Any] | np.ndarray


# -- targets -------------------------------------------------------------------------------------

def _targets(y: Labels) -> tuple[bool, list[tuple[Any, ...]]]:
    """`(multilabel, each item's labels as a tuple)`, read as the probe reads them."""
    multilabel = looks_multilabel(y)
    return multilabel, label_tuples(y, multilabel)


def _probe_targets(targets: list[tuple[Any, ...]], multilabel: bool, rows: np.ndarray) -> Any:
    """What `LinearProbe` takes for the given rows: a 1-D array, or a list of label tuples."""
    return [targets[i] for i in rows] if multilabel else np.array([targets[i][0] for i in rows])


def _splits(targets: list[tuple[Any, ...]], multilabel: bool, folds: int, seed: int) -> list[tuple[np.ndarray, ...]]:
    """The outer folds; OffshelfError naming a class that has fewer items than folds."""
    if folds < 2:
        raise OffshelfError(f"cross-validation needs at least 2 folds, got {folds}")
    counts: dict[Any, int] = {}
    for labels in targets:
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
    if len(counts) < 2:
        raise OffshelfError(f"evaluation needs at least 2 classes, the labels have {len(counts)}: {list(counts)}")
    for label, count in sorted(counts.items(), key=lambda kv: (kv[1], str(kv[0]))):
        if count < folds:
            raise OffshelfError(
                f"class {label!r} has {count} labelled items, fewer than the {folds} cross-validation folds "
                f"(use fewer folds or label more images)"
            )
    index = np.zeros(len(targets))
    if multilabel:
        return list(KFold(folds, shuffle=True, random_state=seed).split(index))
    strata = np.array([str(labels[0]) for labels in targets])
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(index, strata))


def _inner_folds(targets: list[tuple[Any, ...]], splits: list[tuple[np.ndarray, ...]]) -> int:
    """Folds for choosing C inside each training fold: INNER_FOLDS, or fewer if a training fold is too small."""
    fewest, label_of_fewest = INNER_FOLDS, None
    for train, _ in splits:
        counts: dict[Any, int] = {}
        for i in train:
            for label in targets[i]:
                counts[label] = counts.get(label, 0) + 1
        for label, count in counts.items():
            if min(count, len(train) - count) < fewest:
                fewest, label_of_fewest = min(count, len(train) - count), label
    if fewest < 2:
        raise OffshelfError(
            f"class {label_of_fewest!r} has {fewest} items in a training fold: choosing C inside it needs at "
            "least 2 (use fewer folds or label more images)"
        )
    return fewest


# -- metrics ---------------------------------------------------------------------------------------

def retrieval_map(X: np.ndarray, y: Labels, *, block: int | None = None) -> float:
    """Leave-one-out class-retrieval mAP: each item queries all others by cosine similarity.

    Relevant = the same label (multi-label: at least one shared label); ties keep item order. Queries without
    any relevant item are left out of the mean (nan if none has one). `block` queries are ranked per matrix
    product (default: as many as fit in `BLOCK_ELEMENTS` similarities).
    """
    _, targets = _targets(y)
    Z = l2_normalize(X)
    n = len(Z)
    if n != len(targets):
        raise OffshelfError(f"{n} feature vectors but {len(targets)} labels")
    members: dict[Any, list[int]] = {}
    for i, labels in enumerate(targets):
        for label in labels:
            members.setdefault(label, []).append(i)
    block = block or max(1, BLOCK_ELEMENTS // max(n, 1))
    per_query = []
    for start in range(0, n, block):
        queries = np.arange(start, min(start + block, n))
        similarity = Z[queries] @ Z.T
        order = np.argsort(-similarity, axis=1, kind="stable")
        ranked = order[order != queries[:, None]].reshape(len(queries), n - 1)  # each query left out
        relevant = [{j for label in targets[q] for j in members[label]} - {q} for q in queries.tolist()]
        per_query.append(mean_average_precision_ranked(relevant, ranked)[1])
    return mean_defined(np.concatenate(per_query)) if per_query else float("nan")



def evaluate_features(
    X: np.ndarray,
    y: Labels,
    *,
    folds: int = 5,
    seed: int = 0,
    method: str = "svm",
    post: Sequence[str] = ("l2",),
    Cs: Sequence[float] | None = None,
    n_jobs: int | None = -1,
) -> dict[str, Any]:
    """Cross-validated linear-probe accuracy and mAP, and leave-one-out retrieval mAP, of features `X (n, D)`.

    `y`: one label per item, or one collection of labels per item (multi-label). In each of the `folds`
    folds (stratified and shuffled with `seed`) a `LinearProbe(method, post, Cs)` is fitted on the training
    part, choosing C by its own cross-validation on that part; `Cs=None` is the probe's default grid.

    Returns a JSON-ready dict: n, classes, multilabel, folds, accuracy, accuracy_std, mAP, mAP_std,
    retrieval_mAP, fold_accuracy, fold_mAP, fold_C (per fold, the C chosen for each class in `classes` order).
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise OffshelfError(f"expected a feature matrix (n, D), got shape {X.shape}")
    multilabel, targets = _targets(y)
    if len(targets) != len(X):
        raise OffshelfError(f"{len(X)} feature vectors but {len(targets)} labels")
    splits = _splits(targets, multilabel, folds, seed)
    inner = _inner_folds(targets, splits)
    template = LinearProbe(method=method, post=tuple(post), cv=inner, multilabel=multilabel, n_jobs=n_jobs,
                           random_state=seed)
    if Cs is not None:
        template.set_params(Cs=tuple(Cs))
    fold_accuracy, fold_map, fold_c = [], [], []
    for train, test in splits:
        probe = LinearProbe(**template.get_params()).fit(X[train], _probe_targets(targets, multilabel, train))
        report = evaluate(probe, X[test], _probe_targets(targets, multilabel, test))
        fold_accuracy.append(report["accuracy"])
        fold_map.append(np.nan if report["mAP"] is None else report["mAP"])
        fold_c.append(probe.C_.tolist())
    classes = sorted({label for labels in targets for label in labels})
    defined = np.array([m for m in fold_map if not np.isnan(m)])
    return {
        "n": len(X),
        "classes": [str(c) for c in classes],
        "multilabel": multilabel,
        "folds": folds,
        "accuracy": float(np.mean(fold_accuracy)),
        "accuracy_std": float(np.std(fold_accuracy)),
        "mAP": json_float(mean_defined(np.array(fold_map))),
        "mAP_std": json_float(float(np.std(defined)) if defined.size else np.nan),
        "retrieval_mAP": json_float(retrieval_map(X, y)),
        "fold_accuracy": [float(a) for a in fold_accuracy],
        "fold_mAP": [json_float(m) for m in fold_map],
        "fold_C": fold_c,
    }


# -- stores and baselines ----------------------------------------------------------------------------

def _baseline_name(name: str) -> str:
    full = BASELINE_ALIASES.get(name, name)
    if full not in BASELINES:
        choices = ", ".join([*BASELINE_ALIASES, *BASELINES])
        raise OffshelfError(f"unknown baseline {name!r}; choose from {choices}")
    return full


def _label_mapping(labels: LabelSource | Mapping[str, Collection[str]], paths: Sequence[str]) -> Mapping[str, Any]:
    return labels.labels_for(list(paths)) if isinstance(labels, LabelSource) else labels


def _zero_shot(store: FeatureStore, X: np.ndarray, y: Labels) -> float | None:
    """Zero-shot accuracy ("a photo of a {label}.") when the store's model has a text tower and each item one
    label; None otherwise."""
    multilabel, targets = _targets(y)
    encoder = None if multilabel else config_encoder(store.config)
    return None if encoder is None else zero_shot_accuracy(X, [t[0] for t in targets], encoder)


def evaluate_stores(
    stores: Sequence[str | Path | FeatureStore],
    labels: LabelSource | Mapping[str, Collection[str]],
    *,
    baselines: Sequence[str] = (),
    folds: int = 5,
    seed: int = 0,
    method: str = "svm",
    workers: int = 2,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """`evaluate_features` for each store, then for each baseline computed from the same image files.

    `labels`: a `LabelSource`, or `{image path: [labels]}`. Every row is evaluated on the same items: those
    labelled and present in every store (and, with baselines, readable by them), sorted by path. Each result
    adds name, model, layer, pool, augment, dim, unlabeled (the store's items without a label, ignored),
    skipped (labelled items left out because another store lacks them or a baseline cannot decode them),
    zero_shot_accuracy (stores of a CLIP-type model's image embeddings with one label per item, else None) and
    seconds (baselines: including their feature extraction). Progress goes to stderr unless `progress=False`.
    """
    if not stores:
        raise OffshelfError("name at least one feature store to evaluate")
    wanted = [_baseline_name(name) for name in dict.fromkeys(baselines)]
    opened = [store if isinstance(store, FeatureStore) else FeatureStore.open(store) for store in stores]
    vectors = [store.vectors() for store in opened]
    every_path = sorted({path for _, paths, _ in vectors for path in paths})
    mapping = _label_mapping(labels, every_path)
    labelled: list[set[str]] = []
    unlabeled: list[int] = []
    for store, (_, paths, _) in zip(opened, vectors):
        rows, _, missing = align_labels(paths, mapping)
        labelled.append({paths[i] for i in rows.tolist()})
        unlabeled.append(missing)
    common = sorted(set.intersection(*labelled))
    if not common:
        raise OffshelfError(f"no labelled item is present in all {len(opened)} stores")

    baseline_features: dict[str, tuple[list[str], np.ndarray, float]] = {}
    for name in wanted:
        started = time.perf_counter()
        while True:
            try:
                features = extract_baseline(name, common, workers=workers, progress=progress)
                break
            except BaselineError as exc:  # evaluate every row without the files the baselines cannot read
                failed = {item for item, _ in exc.failures}
                common = [path for path in common if path not in failed]
                if not common:
                    raise
        baseline_features[name] = (list(common), features, time.perf_counter() - started)

    _, y, _ = align_labels(common, mapping)
    results = []
    names = [str(store.root) for store in opened] + wanted
    with tqdm(total=len(common) * len(names), desc="evaluate", unit="item", disable=not progress) as bar:
        for name, store, (_, paths, matrix), missing, have in zip(names, opened, vectors, unlabeled, labelled):
            bar.set_postfix_str(name, refresh=True)
            started = time.perf_counter()
            position = {path: i for i, path in enumerate(paths)}
            X = matrix[[position[path] for path in common]]
            result = evaluate_features(X, y, folds=folds, seed=seed, method=method)
            results.append({
                "name": name, **store.config.identity(), **result, "zero_shot_accuracy": _zero_shot(store, X, y),
                "unlabeled": missing, "skipped": len(have) - len(common), "seconds": time.perf_counter() - started,
            })
            bar.update(len(common))
        for name in wanted:
            bar.set_postfix_str(name, refresh=True)
            started = time.perf_counter()
            paths, features, extract_seconds = baseline_features[name]
            keep = np.isin(paths, common)
            result = evaluate_features(features[keep], y, folds=folds, seed=seed, method=method)
            results.append({
                "name": name, "model": name, "layer": None, "pool": None, "augment": None, "dim": features.shape[1],
                **result, "zero_shot_accuracy": None, "unlabeled": None, "skipped": None,
                "seconds": extract_seconds + time.perf_counter() - started,
            })
            bar.update(len(common))
    return results


# -- plotting --------------------------------------------------------------------------------------

METRICS = (("accuracy", "accuracy"), ("mAP", "probe mAP"), ("retrieval_mAP", "retrieval mAP"))


def require_matplotlib() -> None:
    """OffshelfError if matplotlib, needed by `plot_results`, is not installed (check before long work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OffshelfError("plotting needs matplotlib: pip install matplotlib") from None


def plot_results(results: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """A bar chart (PNG, SVG or PDF by the file suffix) of accuracy, mAP and retrieval mAP per result row."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise OffshelfError("nothing to plot")
    out = Path(path)
    figure = Figure(figsize=(max(6.0, 1.2 * len(results) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(results))
    width = 0.8 / len(METRICS)
    for k, (key, label) in enumerate(METRICS):
        values = [np.nan if row.get(key) is None else row[key] for row in results]
        errors = [row.get("accuracy_std", 0.0) for row in results] if key == "accuracy" else None
        axes.bar(positions + (k - 1) * width, values, width, yerr=errors, capsize=3, label=label)
    axes.set_xticks(positions, [_short_name(row) for row in results], rotation=20, ha="right")
    axes.set_ylim(0, 1.2)
    axes.set_yticks(np.linspace(0, 1, 6))
    axes.set_ylabel("score")
    first = results[0]
    axes.set_title(f"{first.get('n')} items, {len(first.get('classes', []))} classes, {first.get('folds')}-fold CV")
    axes.legend(loc="upper center", ncols=len(METRICS), frameon=False)
    axes.grid(axis="y", alpha=0.3)
    try:
        figure.savefig(out, dpi=100)
    except (OSError, ValueError) as exc:
        raise OffshelfError(f"cannot write the plot {out}: {exc}") from None
    return out


def _short_name(row: Mapping[str, Any]) -> str:
    if row.get("layer") is None:
        return str(row.get("name"))
    return f"{Path(str(row['name'])).name}\n{row['model']}/{row['layer']}/{row['pool']}"
