"""The backward-compatibility benchmark (`python -m benchmarks.compat`, `benchmarks/compat.py`).

Question: after an upgrade from an OLD model to a NEW one, how well do NEW-model queries, mapped into the old
space, search a gallery that the OLD model embedded — compared with staying on the old model, and with a full
re-embedding? The notation is that of backward-compatible training (Shen et al. 2020): M(query model, gallery
model). For each model pair (old -> new) and each benchmark:

* M(old, old): old queries against the old gallery (no upgrade);
* M(new, new): new queries against a re-embedded gallery (the upgrade done the slow way);
* M(new mapped, old): new queries through a map (`offshelf.upgrade`: procrustes | linear | mlp) against the old
  gallery, compared as `AlignedSearcher` compares them (the map's comparison space); and `relative`: both sides
  as relative representations over the training images used as anchors (training-free);
* M(new, old) without a map (`identity`, equal dimensions only): what happens if one just swaps the model.

Compatibility criterion (BCT): M(new mapped, old) >= M(old, old). The issue's goal: also >= 90 % of M(new, new),
on both benchmarks, for at least one method.

Benchmarks (the data of `python -m benchmarks.copy_detection`, `retrieval_data`): copy detection (560 edited photos against
20 originals + 5,036 distractors; mAP = mean 1/rank of the original) and class-level retrieval on the 6 Open
Clip Art classes (326 images, each queries the other 325). All descriptors are GAP, L2-normalized, compared by
cosine (no PCA-whitening pipeline: the gallery an upgrade inherits is the stored vectors).

Training pairs: the copy-detection distractors (Open Clip Art outside the 6 classes, Fashion-MNIST, rendered
wallpapers), embedded by both models — images of the gallery itself, as in a real upgrade where a sample of the
gallery is re-embedded to fit the map; never a query, an original or a class image. No labels are used. The
curve fits every method on seeded random subsets of `--sizes` pairs (`--repeats` seeds each; the whole pool
once) and evaluates each fit on both benchmarks; `pairs_needed` is the smallest size whose mean meets each
criterion.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.copy_detection import embedded_everywhere, embedded_sets
from benchmarks.harness.retrieval_data import FULL, QUICK, class_retrieval_set, copy_detection_set
from benchmarks.harness.retrieval_eval import class_retrieval_scores, dense_ranks, summarize_ranks
from benchmarks.harness.runinfo import StageClock, environment_info, write_json
from offshelf.upgrade import AlignmentMap, RelativeRepresentation
from offshelf.vectors import l2_normalize

__all__ = ["DEFAULT_PAIRS", "METHODS", "run_compat", "main"]

DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (("efficientnet-lite0", "efficientnet-lite2"),
                                              ("open-nsfw-resnet", "efficientnet-lite0"))  # (old, new)
METHODS = ("procrustes", "linear", "mlp", "relative")
DEFAULT_SIZES = (25, 50, 100, 200, 500, 1000, 2000)
QUICK_SIZES = (10, 25)
GOAL_FRACTION = 0.9
FIDELITY_HOLDOUT = 0.2  # of the pool, held out to measure how maps carry over
BENCHMARKS = ("copy", "class")
REFERENCE_LABELS = {"old_old": "M(old, old)", "new_new": "M(new, new)", "identity": "M(new, old), no map"}


@dataclass
class Features:
    """One model's L2-normalized descriptors of every benchmark set (rows in the sets' order)."""

    originals: np.ndarray
    queries: np.ndarray
    distractors: np.ndarray  # the usable ones, the training pool and the rest of the copy-detection gallery
    class_images: np.ndarray

    @property
    def gallery(self) -> np.ndarray:
        """The copy-detection database: originals first, then the distractors."""
        return np.concatenate([self.originals, self.distractors])

    @property
    def dim(self) -> int:
        return int(self.originals.shape[1])


@dataclass
class Task:
    """What the scores need besides vectors: the truth of both benchmarks."""

    true_index: np.ndarray  # copy detection: each query's original (row of the gallery)
    families: list[str]
    strengths: list[str]
    class_labels: list[str]

    def copy(self, queries: np.ndarray, gallery: np.ndarray) -> dict[str, Any]:
        return summarize_ranks(dense_ranks(queries, gallery, self.true_index), self.families, self.strengths)

    def klass(self, queries: np.ndarray, gallery: np.ndarray) -> dict[str, float]:
        return class_retrieval_scores(queries, self.class_labels, gallery)

    def both(self, q_copy: np.ndarray, g_copy: np.ndarray, q_class: np.ndarray, g_class: np.ndarray
             ) -> dict[str, dict[str, Any]]:
        return {"copy": self.copy(q_copy, g_copy), "class": self.klass(q_class, g_class)}


# -- the cross-model comparisons -----------------------------------------------------------------------------

# (new-model queries, old-model gallery) -> both as vectors of one space, ranked by inner product
Fitted = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def fit_method(method: str, new_train: np.ndarray, old_train: np.ndarray, seed: int,
               info: dict[str, Any] | None = None) -> Fitted:
    """A fitted cross-model comparison: given new-model queries and an old-model gallery, both as vectors of
    one space in which inner products rank (the map's comparison space, or the anchors' relative space).
    `info`, if given, receives the map's `fit_info_`."""
    if method == "relative":
        rep = RelativeRepresentation(old_train, new_train)
        return lambda queries, gallery: (rep.transform_new(queries), rep.transform_old(gallery))
    alignment = AlignmentMap(method, seed=seed).fit(new_train, old_train)
    if info is not None:
        info.update(alignment.fit_info_)
    return lambda queries, gallery: (alignment.compare_new(queries), alignment.compare_old(gallery))


def map_fidelity(old: Features, new: Features, methods: Sequence[str], holdout: float = FIDELITY_HOLDOUT,
                 seed: int = 0) -> dict[str, Any]:
    """How well a comparison fitted on the pool carries over to other images: per method, the mean cosine, in
    the comparison space, between an image's new-model vector and its own old-model vector, on held-out pool
    images and on the evaluation sets (never trained on). A map is only as good as its training pairs are
    like the images it maps."""
    order = np.random.default_rng(seed).permutation(len(old.distractors))
    n_test = int(round(holdout * len(order)))
    test, train = order[:n_test], np.sort(order[n_test:])
    sets = {"held-out pool": (new.distractors[test], old.distractors[test]),
            "class images": (new.class_images, old.class_images),
            "copy originals": (new.originals, old.originals), "copy queries": (new.queries, old.queries)}
    out: dict[str, Any] = {"n_train": len(train), "sets": {name: len(n) for name, (n, _) in sets.items()}}
    for method in methods:
        info: dict[str, Any] = {}
        compare = fit_method(method, new.distractors[train], old.distractors[train], seed, info)
        cosines = {}
        for name, (new_x, old_x) in sets.items():
            mapped, target = (l2_normalize(v) for v in compare(new_x, old_x))
            cosines[name] = float(np.mean(np.sum(mapped * target, axis=1)))
        out[method] = {"mean_cosine": cosines, **({"mlp": info["mlp"]} if "mlp" in info else {})}
    return out


def cross_scores(compare: Fitted, old: Features, new: Features, task: Task) -> dict[str, dict[str, Any]]:
    """M(new mapped, old) on both benchmarks."""
    q_copy, g_copy = compare(new.queries, old.gallery)
    q_class, g_class = compare(new.class_images, old.class_images)
    return task.both(q_copy, g_copy, q_class, g_class)


def _headline(scores: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {"copy_mAP": scores["copy"]["mAP"], "copy_recall_at_1": scores["copy"]["recall_at_1"],
            "class_mAP": scores["class"]["mAP"], "class_precision_at_1": scores["class"]["precision_at_1"]}


def sizes_for(pool: int, sizes: Sequence[int]) -> list[int]:
    """The curve's training-set sizes: those below the pool's size, then the whole pool."""
    return sorted({n for n in sizes if 3 <= n < pool} | {pool})


def criteria(value: float, old_old: float, new_new: float) -> dict[str, Any]:
    """The two compatibility criteria for one benchmark score."""
    fraction = value / new_new if new_new > 0 else float("nan")
    at_least_old = bool(value >= old_old)
    near_new = bool(fraction >= GOAL_FRACTION)
    return {"value": value, "fraction_of_new_new": fraction, "at_least_old_old": at_least_old,
            "at_least_90pct_new_new": near_new, "both": at_least_old and near_new}


def evaluate_pair(old: Features, new: Features, task: Task, methods: Sequence[str], sizes: Sequence[int],
                  repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    """References, the curve over training-set sizes, the full-pool results and the criteria for one pair."""
    reference = {"old_old": task.both(old.queries, old.gallery, old.class_images, old.class_images),
                 "new_new": task.both(new.queries, new.gallery, new.class_images, new.class_images)}
    if old.dim == new.dim:
        reference["identity"] = task.both(new.queries, old.gallery, new.class_images, old.class_images)
    for name, scores in reference.items():
        log(f"  {REFERENCE_LABELS[name]}: copy mAP {scores['copy']['mAP']:.3f}, "
            f"class mAP {scores['class']['mAP']:.3f}")
    pool = len(old.distractors)
    curve: list[dict[str, Any]] = []
    full: dict[str, dict[str, Any]] = {}
    for n in sizes_for(pool, sizes):
        for seed in range(repeats if n < pool else 1):
            chosen = np.sort(np.random.default_rng(seed).permutation(pool)[:n])
            for method in methods:
                t0 = time.perf_counter()
                compare = fit_method(method, new.distractors[chosen], old.distractors[chosen], seed)
                fit_seconds = time.perf_counter() - t0
                scores = cross_scores(compare, old, new, task)
                curve.append({"method": method, "n_pairs": n, "seed": seed, **_headline(scores),
                              "fit_seconds": round(fit_seconds, 3)})
                if n == pool:
                    full[method] = {**scores, "fit_seconds": round(fit_seconds, 3)}
        means = {m: _curve_mean(curve, m, n) for m in methods}
        log(f"  {n} pairs: " + "; ".join(f"{m} {v['copy_mAP']:.3f}/{v['class_mAP']:.3f}" for m, v in means.items()))
    fidelity = map_fidelity(old, new, methods)
    log("  mean cosine to the old vector (" + ", ".join(fidelity["sets"]) + "): " + "; ".join(
        f"{m} " + "/".join(f"{v:.2f}" for v in fidelity[m]["mean_cosine"].values()) for m in methods))
    ref = {b: (reference["old_old"][b]["mAP"], reference["new_new"][b]["mAP"]) for b in BENCHMARKS}
    checks = {m: {b: criteria(full[m][b]["mAP"], *ref[b]) for b in BENCHMARKS} for m in methods}
    goal_methods = [m for m in methods if all(checks[m][b]["both"] for b in BENCHMARKS)]
    return {
        "pool": pool, "reference": reference, "curve": curve, "full_pool": full, "fidelity": fidelity,
        "criteria": checks, "pairs_needed": pairs_needed(curve, methods, ref),
        "goal": {"met": bool(goal_methods), "methods": goal_methods,
                 "statement": f"M(new mapped, old) >= M(old, old) and >= {GOAL_FRACTION:.0%} of M(new, new), "
                              "mAP, on both benchmarks, with the map fitted on the whole pool"},
    }


def _curve_mean(curve: list[dict[str, Any]], method: str, n: int) -> dict[str, float]:
    rows = [r for r in curve if r["method"] == method and r["n_pairs"] == n]
    keys = ("copy_mAP", "class_mAP")
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def pairs_needed(curve: list[dict[str, Any]], methods: Sequence[str], ref: dict[str, tuple[float, float]]
                 ) -> dict[str, dict[str, dict[str, int | None]]]:
    """Per method and benchmark: the smallest curve size whose mean mAP reaches M(old, old), and 90 % of
    M(new, new) (None if none does)."""
    out: dict[str, dict[str, dict[str, int | None]]] = {}
    sizes = sorted({r["n_pairs"] for r in curve})
    for method in methods:
        out[method] = {}
        for bench in BENCHMARKS:
            old_old, new_new = ref[bench]
            means = [(n, _curve_mean(curve, method, n)[f"{bench}_mAP"]) for n in sizes]
            out[method][bench] = {
                "at_least_old_old": next((n for n, v in means if v >= old_old), None),
                "at_least_90pct_new_new": next((n for n, v in means if v >= GOAL_FRACTION * new_new), None),
            }
    return out


# -- data ---------------------------------------------------------------------------------------------------

def load_features(models: Sequence[str], quick: bool, progress: bool, clock: StageClock
                  ) -> tuple[dict[str, Features], Task, dict[str, Any]]:
    """Every model's descriptors of the retrieval benchmark's sets (from the shared stores, embedding what is
    missing), restricted to the distractors that every model could read; the truth; a protocol summary."""
    sizes = QUICK if quick else FULL
    with clock.stage("data"):
        data = copy_detection_set(sizes)
        class_paths, class_labels = class_retrieval_set(sizes)
    parts = {}
    for model in models:
        with clock.stage(f"embed {model}"):
            parts[model] = embedded_sets(data, class_paths, model, "gap", progress)
    sources = list(data.distractors)
    keep = embedded_everywhere(parts.values(), sources)
    features = {}
    for model, p in parts.items():
        distractors = np.concatenate([p[f"distractors:{s}"][0] for s in sources])[keep]
        features[model] = Features(l2_normalize(p["originals"][0]), l2_normalize(p["queries"][0]),
                                   l2_normalize(distractors), l2_normalize(p["class"][0]))
    task = Task(np.asarray(data.query_original), [e.family for e in data.query_edit],
                [f"{e.level}: {e.strength}" for e in data.query_edit], list(class_labels))
    source_of = np.concatenate([[s] * len(data.distractors[s]) for s in sources])[keep]
    protocol = {
        "n_originals": len(data.originals), "n_queries": len(data.queries),
        "n_distractors": int(keep.sum()), "distractors": {s: int((source_of == s).sum()) for s in sources},
        "class_images": len(class_paths), "classes": sorted(set(class_labels)),
        "training_pool": "the copy-detection distractors (embedded by both models; no labels)",
        "features": "GAP, L2-normalized, cosine", "comparison": "the map's comparison space (as AlignedSearcher); "
        "relative: relative representations with the training images as anchors",
        "metric": "copy detection: mAP = mean 1/rank of the original (ties against); class retrieval: mAP, "
                  "each image queries the others",
    }
    return features, task, protocol


# -- the run -------------------------------------------------------------------------------------------------

def run_compat(out_dir: Path | str = Path("benchmarks/results"), *,
               pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS, methods: Sequence[str] = METHODS,
               sizes: Sequence[int] | None = None, repeats: int | None = None, quick: bool = False,
               progress: bool = True) -> dict[str, Any]:
    """Run the benchmark for every (old, new) pair, write `compat.{json,md,png}` to `out_dir`, return the result.

    `quick=True`: the retrieval benchmark's tiny subset, sizes (10, 25) and one seed (for tests; numbers say
    little)."""
    from benchmarks.harness.compat_report import write_reports

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock(progress)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    environment = environment_info()
    sizes = tuple(sizes or (QUICK_SIZES if quick else DEFAULT_SIZES))
    repeats = repeats or (1 if quick else 3)
    models = list(dict.fromkeys(m for pair in pairs for m in pair))
    features, task, protocol = load_features(models, quick, progress, clock)
    results = []
    for old, new in pairs:
        with clock.stage(f"{old} -> {new}"):
            result = evaluate_pair(features[old], features[new], task, methods, sizes, repeats, clock.log)
        results.append({"old": old, "new": new, "dims": {"old": features[old].dim, "new": features[new].dim},
                        **result})
    environment["load_average_at_end"] = list(os.getloadavg())
    doc = {"benchmark": "compat", "quick": quick, "started": started, "environment": environment,
           "protocol": {**protocol, "methods": list(methods), "sizes": list(sizes), "repeats": repeats},
           "pairs": results, "seconds": {**clock.seconds, "total": round(time.perf_counter() - clock.start, 1)}}
    files = write_reports(out, doc)
    write_json(out / "compat.json", doc)
    clock.log(f"done in {doc['seconds']['total']:.0f} s; wrote {', '.join(str(f) for f in files)}")
    return {**doc, "files": [str(f) for f in files]}


def summary(doc: dict[str, Any]) -> str:
    """A few lines for a terminal: the references, each method on the whole pool, the goal."""
    lines = []
    for pair in doc["pairs"]:
        ref = pair["reference"]
        lines.append(f"{pair['old']} -> {pair['new']} ({pair['pool']} training pairs); mAP copy / class:")
        for name in ref:
            lines.append(f"  {REFERENCE_LABELS[name]:26s} {ref[name]['copy']['mAP']:.3f} / "
                         f"{ref[name]['class']['mAP']:.3f}")
        for method, scores in pair["full_pool"].items():
            lines.append(f"  {f'M(new via {method}, old)':26s} {scores['copy']['mAP']:.3f} / {scores['class']['mAP']:.3f}")
        goal = pair["goal"]
        lines.append(f"  goal {'met by ' + ', '.join(goal['methods']) if goal['met'] else 'not met'}")
    return "\n".join(lines)


def _pair(text: str) -> tuple[str, str]:
    old, sep, new = text.partition(":")
    if not sep or not old or not new:
        raise argparse.ArgumentTypeError(f"expected OLD:NEW, got {text!r}")
    return old, new


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.compat` / benchmarks/compat.py."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compat",
                                     description="Cross-model retrieval after a model upgrade: M(old, old), "
                                                 "M(new, new), M(new mapped, old) per alignment method.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where to write compat.*")
    parser.add_argument("--pairs", type=lambda s: [_pair(p) for p in s.split(",") if p],
                        default=list(DEFAULT_PAIRS), help="comma-separated OLD:NEW model pairs")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ", ".join(METHODS))
    parser.add_argument("--sizes", default=None, help="training-set sizes of the curve, comma-separated "
                        f"(default {','.join(map(str, DEFAULT_SIZES))}; the whole pool is always added)")
    parser.add_argument("--repeats", type=int, default=None, help="seeds per size below the whole pool (3)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (numbers not meaningful)")
    parser.add_argument("--json", action="store_true", help="print the full results as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    doc = run_compat(args.out, pairs=args.pairs, methods=methods, sizes=sizes, repeats=args.repeats,
                     quick=args.quick, progress=not args.no_progress)
    print(json.dumps(doc, indent=2, default=float) if args.json else summary(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
