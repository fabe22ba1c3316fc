"""The retrieval benchmark (`python -m benchmarks.copy_detection`, `benchmarks/copy_detection.py`).

Three parts, all on data available offline (see `retrieval_data` for how the sets are made):

1. Copy detection, the Copydays idea. Originals: 9 real colour photographs from scikit-image/scikit-learn
   (motorcycle_right, the stereo twin of motorcycle_left, left out) and the 11 Plasma wallpaper photos,
   at most 1024 px. Queries: each original under 7 families of edits (crop, scale, rotation, JPEG, colour,
   blur, overlaid text) at 4 strengths (`offshelf.images.copies.COPY_FAMILIES`): 560 queries, each with exactly
   one relevant database item, its original. Database: the 20 originals + 5,036 distractors (2,000 Open
   Clip Art PNGs outside the class-retrieval categories, 3,000 Fashion-MNIST training images, 36 rendered
   wallpapers). Reported: mAP (= mean of 1 / rank of the original) and recall@1 / @10, overall, per
   family and per strength, for
     - raw pixels (32x32 RGB, cosine) and a colour histogram (8x8x8 RGB, Hellinger: sqrt then cosine);
     - each model: GAP, plain (L2, cosine) and with the paper's post-processing (L2 -> PCA(512)-whitening
       -> L2 -> signed sqrt -> L2), fitted on the distractors' descriptors only, never on queries;
     - efficientnet-lite0 also: R-MAC and GeM (p = 3) poolings (plain and post-processed), average query
       expansion (n = 1) and database-side augmentation (k = 2) on the post-processed GAP vectors, and
       spatial search (`offshelf.search.spatial`: 14 windows per database image, score = best window).
2. Class-level retrieval on the Open Clip Art classes (`benchmarks.datasets.openclipart`, 6 classes, 326
   images): every image queries the other 325; relevant = same class; mAP, precision@1 and @10. The
   post-processing is fitted on the 2,000 Open Clip Art distractors above (same domain, disjoint files).
3. Bytes per vector against copy-detection mAP for efficientnet-lite0 + post-processing
   (`retrieval_codes`): float32, float16, PCA 256/128/64/32, PQ, IVF-PQ, binary ITQ with and without
   float re-ranking; and the goal "binary codes at 32x less memory keep >= 90% of float mAP after
   re-ranking".

Descriptors come from the shared benchmark stores (`dataset_store`), so each image is embedded once per
model/pooling on a machine, whichever benchmark asks first; the spatial-search windows are cached under
`bench_home()/spatial-windows`. Every stage is timed (`seconds`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.retrieval_codes import bytes_vs_map
from benchmarks.harness.retrieval_data import FULL, QUICK, CopyDetectionSet, class_retrieval_set, copy_detection_set
from benchmarks.harness.retrieval_eval import (
    LIST_DEPTH,
    apply,
    baseline_features,
    cached_windows,
    class_retrieval_scores,
    dense_ranks,
    fit_pipeline,
    hellinger,
    list_ranks,
    pipeline_dim,
    summarize_ranks,
)
from benchmarks.harness.runinfo import StageClock, environment_info, write_json
from benchmarks.harness.stores import dataset_store
from offshelf.search.expansion import average_query_expansion, database_side_augmentation
from offshelf.vectors import l2_normalize

__all__ = ["DEFAULT_MODELS", "embedded_everywhere", "embedded_sets", "run_retrieval"]

DEFAULT_MODELS: tuple[str, ...] = ("efficientnet-lite0", "efficientnet-lite2", "open-nsfw-resnet")
EXTRAS_MODEL = "efficientnet-lite0"
AQE_N = 1
DBA_K = 2
SPATIAL_LEVELS = 3
QUICK_SPATIAL_LEVELS = 2
FAMILY_ORDER = ("crop", "scale", "rotation", "jpeg", "colour", "blur", "text")


def _store_vectors(name: str, paths: Sequence[Path], model: str, pool: str, progress: bool,
                   precision: str = "fp32") -> dict[str, np.ndarray]:
    """path (resolved, as stored) -> vector, for `paths` embedded into the shared store `name`."""
    store = dataset_store(name, paths, model=model, pool=pool, progress=progress, precision=precision)
    _, stored_paths, matrix = store.vectors()
    wanted = {str(Path(p).resolve()) for p in paths}
    return {p: matrix[i] for i, p in enumerate(stored_paths) if p in wanted}


def _rows(found: dict[str, np.ndarray], paths: Sequence[Path], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The vectors of `paths` in order (zeros where missing) and a mask of those present."""
    keys = [str(Path(p).resolve()) for p in paths]
    present = np.array([k in found for k in keys], bool)
    out = np.zeros((len(keys), dim), np.float32)
    for i, k in enumerate(keys):
        if present[i]:
            out[i] = found[k]
    return out, present


def embedded_sets(data: CopyDetectionSet, class_paths: Sequence[Path] | None, model: str, pool: str,
                  progress: bool, precision: str = "fp32") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every image set of the benchmark embedded with `model`/`pool` through the shared stores: set name
    ("originals", "queries", "distractors:<source>", and "class" if `class_paths`) -> (vectors in the set's
    order, zeros where missing; mask of the rows present)."""
    sets = {"originals": ("copydays-originals", data.originals),
            "queries": ("copydays-queries", data.queries),
            **{f"distractors:{s}": (f"{s}-distractors" if s != "fashion-mnist" else "fashion-mnist", paths)
               for s, paths in data.distractors.items()}}
    if class_paths is not None:
        sets["class"] = ("openclipart", class_paths)
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key, (store_name, paths) in sets.items():
        found = _store_vectors(store_name, paths, model, pool, progress, precision)
        dim = len(next(iter(found.values()))) if found else 1
        parts[key] = _rows(found, paths, dim)
    return parts


def embedded_everywhere(parts_by_model: Iterable[dict[str, tuple[np.ndarray, np.ndarray]]],
                        sources: Sequence[str]) -> np.ndarray:
    """Mask of the distractors (all sources, in order) that every `embedded_sets` result holds; RuntimeError
    if an original, query or class image is missing from any (those are never silently dropped)."""
    keep: np.ndarray | None = None
    for parts in parts_by_model:
        present = np.concatenate([parts[f"distractors:{s}"][1] for s in sources])
        keep = present if keep is None else keep & present
        for key in ("originals", "queries") + (("class",) if "class" in parts else ()):
            if not parts[key][1].all():
                raise RuntimeError(f"some {key} images could not be embedded; see the store's errors table")
    if keep is None:
        raise ValueError("no embedded sets given")
    return keep


def run_retrieval(
    out_dir: Path | str = Path("benchmarks/results"),
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    quick: bool = False,
    progress: bool = True,
    spatial_levels: int | None = None,
) -> dict[str, Any]:
    """Run the three retrieval benchmarks, write `copy_detection.{json,md}`, `class_retrieval.{json,md}` and
    `bytes_vs_map.{json,md,png}` to `out_dir`, and return everything as one dict.

    `quick=True` runs the same protocol on a tiny subset (4 originals, 2 strengths per family, 52
    distractors, 8 images per class, spatial search with 5 windows) for tests; its numbers say little.
    `spatial_levels` overrides the spatial-search window levels (3 = 14 windows per image; 2 = 5 windows,
    about 3x cheaper to compute).
    """
    from benchmarks.harness.retrieval_report import write_reports

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = list(dict.fromkeys(models))
    clock = StageClock(progress)
    sizes = QUICK if quick else FULL
    levels = spatial_levels or (QUICK_SPATIAL_LEVELS if quick else SPATIAL_LEVELS)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    environment = environment_info()

    with clock.stage("data"):
        data = copy_detection_set(sizes)
        class_paths, class_labels = class_retrieval_set(sizes)
    sources = list(data.distractors)
    n_orig = len(data.originals)
    clock.log(f"{n_orig} originals, {len(data.queries)} queries, "
              f"{sum(len(v) for v in data.distractors.values())} distractors, {len(class_paths)} class images")

    # -- embedding (shared stores) -------------------------------------------------------------------------
    wanted: list[tuple[str, str]] = [(m, "gap") for m in models]
    if EXTRAS_MODEL in models:
        wanted += [(EXTRAS_MODEL, "rmac"), (EXTRAS_MODEL, "gem")]
    raw: dict[tuple[str, str], dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for model, pool in wanted:
        with clock.stage(f"embed {model} {pool}"):
            raw[(model, pool)] = embedded_sets(data, class_paths if pool == "gap" else None, model, pool, progress)

    # which distractors every store (and the baselines) could read
    with clock.stage("baselines (raw pixels, colour histogram)"):
        all_paths = data.originals + data.queries + data.all_distractors + list(class_paths)
        raw_px, hist, failed = baseline_features(all_paths)
    keep = np.ones(len(data.all_distractors), bool)
    first, stop = n_orig + len(data.queries), n_orig + len(data.queries) + len(data.all_distractors)
    for i in failed:
        if not first <= i < stop:
            raise RuntimeError(f"cannot decode benchmark image {all_paths[i]}")
        keep[i - first] = False
    keep &= embedded_everywhere(raw.values(), sources)
    distractor_paths = [p for p, k in zip(data.all_distractors, keep) if k]
    source_of = np.concatenate([[s] * len(data.distractors[s]) for s in sources])[keep]
    clock.log(f"{int(keep.sum())} distractors usable ({int((~keep).sum())} unreadable, left out)")

    def matrices(model: str, pool: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        parts = raw[(model, pool)]
        distractors = np.concatenate([parts[f"distractors:{s}"][0] for s in sources])[keep]
        return parts["originals"][0], parts["queries"][0], distractors, parts.get("class", (None,))[0]

    true_index = np.asarray(data.query_original)
    families = [e.family for e in data.query_edit]
    strengths = [f"{e.level}: {e.strength}" for e in data.query_edit]

    def summarize(ranks: np.ndarray) -> dict:
        return summarize_ranks(ranks, families, strengths)

    methods: dict[str, dict[str, Any]] = {}

    def record(name: str, ranks: np.ndarray, seconds: float, **info: Any) -> None:
        methods[name] = {**info, **summarize(ranks), "seconds": round(seconds, 3)}
        clock.log(f"  {name}: mAP {methods[name]['mAP']:.3f}, recall@1 {methods[name]['recall_at_1']:.3f}")

    n_db = n_orig + len(distractor_paths)
    depth = min(LIST_DEPTH, n_db)
    class_results: dict[str, dict[str, Any]] = {}

    # -- baselines ---------------------------------------------------------------------------------------------
    with clock.stage("evaluate baselines"):
        n_q = len(data.queries)
        split = [n_orig, n_orig + n_q, n_orig + n_q + len(data.all_distractors)]
        for name, feats, prep in (("raw pixels", raw_px, l2_normalize), ("colour histogram", hist, hellinger)):
            t0 = time.perf_counter()
            o, q, d, c = np.split(feats, split)
            database = prep(np.concatenate([o, d[keep]]))
            record(name, dense_ranks(prep(q), database, true_index), time.perf_counter() - t0,
                   model=None, pool=None, post="cosine" if prep is l2_normalize else "hellinger", dim=feats.shape[1])
            class_results[name] = {**class_retrieval_scores(prep(c), class_labels), "dim": feats.shape[1],
                                   "post": "cosine" if prep is l2_normalize else "hellinger"}

    # -- models -----------------------------------------------------------------------------------------------
    d_copy = pipeline_dim(len(distractor_paths), 1024)
    for model, pool in wanted:
        with clock.stage(f"evaluate {model} {pool}"):
            o, q, d, c = matrices(model, pool)
            dim = o.shape[1]
            d0 = pipeline_dim(len(d), dim)
            label = f"{model} {pool.upper() if pool != 'gem' else 'GeM'}".replace("RMAC", "R-MAC")
            t0 = time.perf_counter()
            db_plain, q_plain = l2_normalize(np.concatenate([o, d])), l2_normalize(q)
            record(label, dense_ranks(q_plain, db_plain, true_index), time.perf_counter() - t0,
                   model=model, pool=pool, post="L2", dim=dim)
            t0 = time.perf_counter()
            pipeline = fit_pipeline(d, d0)
            db_p, q_p = apply(pipeline, np.concatenate([o, d])), apply(pipeline, q)
            record(f"{label} + pipeline", dense_ranks(q_p, db_p, true_index), time.perf_counter() - t0,
                   model=model, pool=pool, post=f"pipeline (PCA {d0}, fitted on the distractors)", dim=d0)
            if pool == "gap":
                clip = d[source_of == "openclipart"]
                d_class = pipeline_dim(len(clip), dim)
                class_results[label] = {**class_retrieval_scores(l2_normalize(c), class_labels), "dim": dim,
                                        "post": "L2"}
                class_pipeline = fit_pipeline(clip, d_class)
                class_results[f"{label} + pipeline"] = {
                    **class_retrieval_scores(apply(class_pipeline, c), class_labels), "dim": d_class,
                    "post": f"pipeline (PCA {d_class}, fitted on the {len(clip)} Open Clip Art distractors)"}
            if model == EXTRAS_MODEL and pool == "gap":
                t0 = time.perf_counter()
                q_aqe = average_query_expansion(q_p, db_p, AQE_N)
                record(f"{label} + pipeline + AQE (n={AQE_N})", dense_ranks(q_aqe, db_p, true_index),
                       time.perf_counter() - t0, model=model, pool=pool, post="pipeline + AQE", dim=d0)
                t0 = time.perf_counter()
                db_dba = database_side_augmentation(db_p, DBA_K)
                record(f"{label} + pipeline + DBA (k={DBA_K})", dense_ranks(q_p, db_dba, true_index),
                       time.perf_counter() - t0, model=model, pool=pool, post="pipeline + DBA", dim=d0)
                t0 = time.perf_counter()
                q_both = average_query_expansion(q_p, db_dba, AQE_N)
                record(f"{label} + pipeline + DBA + AQE", dense_ranks(q_both, db_dba, true_index),
                       time.perf_counter() - t0, model=model, pool=pool, post="pipeline + DBA + AQE", dim=d0)
                gap_lite = (o, q, d, pipeline, d0)

    spatial_info: dict[str, Any] | None = None
    if EXTRAS_MODEL in models:
        from offshelf.extract import Embedder, make_config
        from offshelf.models import get_model_spec
        from offshelf.search.spatial import SpatialIndex, n_windows

        o, q, d, pipeline, d0 = gap_lite
        with clock.stage(f"spatial windows {EXTRAS_MODEL} ({n_windows(levels)} per database image)"):
            # level 1 (the full image) is the GAP descriptor already in the stores (same decoding: every
            # database file is a PNG, decoded at full size); only levels 2.. are computed here
            embedder = Embedder(make_config(get_model_spec(EXTRAS_MODEL), pool="gap"))
            sub = cached_windows(embedder, data.originals + distractor_paths, levels, progress, first_level=2)
            windows = np.concatenate([np.concatenate([o, d])[:, None, :], sub], axis=1)
        with clock.stage(f"evaluate spatial search {EXTRAS_MODEL}"):
            count = windows.shape[1]
            t0 = time.perf_counter()
            index = SpatialIndex.build(windows, np.arange(n_db))
            _, found = index.search(l2_normalize(q), depth)
            record(f"{EXTRAS_MODEL} GAP + spatial search ({count} windows)", list_ranks(found, true_index),
                   time.perf_counter() - t0, model=EXTRAS_MODEL, pool="gap", post="L2, max over windows",
                   dim=windows.shape[2], bytes_per_image=index.bytes_per_image)
            t0 = time.perf_counter()
            flat_p = apply(pipeline, windows.reshape(-1, windows.shape[2]))
            index_p = SpatialIndex.build(flat_p.reshape(n_db, count, -1), np.arange(n_db))
            _, found = index_p.search(apply(pipeline, q), depth)
            record(f"{EXTRAS_MODEL} GAP + pipeline + spatial search ({count} windows)", list_ranks(found, true_index),
                   time.perf_counter() - t0, model=EXTRAS_MODEL, pool="gap",
                   post="pipeline (fitted on full-image distractor vectors), max over windows", dim=d0,
                   bytes_per_image=index_p.bytes_per_image)
            spatial_info = {"levels": levels, "windows_per_image": count,
                            "layout": "level l = 1..L: l x l windows of side 2/(l+1) of the image, evenly spread"}

    bytes_result = None
    if EXTRAS_MODEL in models:
        with clock.stage(f"bytes vs mAP {EXTRAS_MODEL}"):
            o, q, d, _, d0 = gap_lite
            bytes_result = bytes_vs_map(d, np.concatenate([o, d]), q, true_index, d0, summarize, clock.log)
            bytes_result["model"] = f"{EXTRAS_MODEL} GAP + pipeline"

    total = round(time.perf_counter() - clock.start, 1)
    environment["load_average_at_end"] = list(os.getloadavg())
    common = {"quick": quick, "started": started, "environment": environment,
              "seconds": {**clock.seconds, "total": total}}
    family_strengths: dict[str, list[str]] = {}
    for f, s in zip(families, strengths):
        family_strengths.setdefault(f, [])
        if s not in family_strengths[f]:
            family_strengths[f].append(s)
    copy_detection = {
        "benchmark": "copy_detection", **common,
        "protocol": {
            "originals": [Path(p).stem for p in data.originals], "n_originals": n_orig,
            "n_queries": len(data.queries), "families": family_strengths,
            "distractors": {s: int((source_of == s).sum()) for s in sources},
            "n_distractors": len(distractor_paths), "database_size": n_db,
            "relevant_per_query": 1, "metric": "AP = 1/rank of the original; dense scoring counts ties against "
            f"the query; index-based rows (spatial search) rank the first {depth} results",
            "pipeline": f"L2 -> PCA({d_copy})-whitening -> L2 -> signed sqrt -> L2, "
                        "fitted on the distractors only",
            "aqe_n": AQE_N, "dba_k": DBA_K, "spatial": spatial_info,
        },
        "methods": methods,
    }
    class_retrieval = {
        "benchmark": "class_retrieval", **common,
        "protocol": {"dataset": "openclipart (benchmarks.datasets.openclipart, all splits)",
                     "images": len(class_paths), "classes": sorted(set(class_labels)),
                     "queries": "every image queries all the others; relevant = same class",
                     "pipeline_fit": "the Open Clip Art distractors of the copy-detection benchmark "
                                     "(other categories, disjoint files)"},
        "methods": class_results,
    }
    bytes_doc = {"benchmark": "bytes_vs_map", **common, **(bytes_result or {"rows": [], "goal": None})}
    files = write_reports(out, copy_detection, class_retrieval, bytes_doc, FAMILY_ORDER)
    for name, obj in (("copy_detection", copy_detection), ("class_retrieval", class_retrieval),
                      ("bytes_vs_map", bytes_doc)):
        write_json(out / f"{name}.json", obj)
    clock.log(f"done in {total:.0f} s; wrote {', '.join(str(f) for f in files)}")
    return {"copy_detection": copy_detection, "class_retrieval": class_retrieval, "bytes_vs_map": bytes_doc,
            "seconds": common["seconds"], "files": [str(f) for f in files]}


def main_summary(result: dict[str, Any]) -> str:
    """A few lines for a terminal: overall copy-detection mAP per method, class mAP, the binary goal."""
    lines = ["copy detection (mAP, recall@1):"]
    for name, m in result["copy_detection"]["methods"].items():
        lines.append(f"  {name:60s} {m['mAP']:.3f}  {m['recall_at_1']:.3f}")
    lines.append("class retrieval on Open Clip Art (mAP):")
    for name, m in result["class_retrieval"]["methods"].items():
        lines.append(f"  {name:60s} {m['mAP']:.3f}")
    goal = result["bytes_vs_map"].get("goal")
    if goal:
        lines.append(f"binary 32x + re-rank keeps {goal['fraction']:.1%} of float mAP: "
                     f"goal {'met' if goal['met'] else 'not met'}")
    return "\n".join(lines)



def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.copy_detection` / benchmarks/copy_detection.py."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.copy_detection",
                                     description="Copy detection, class retrieval and bytes-per-vector vs mAP.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="where to write copy_detection.*, class_retrieval.*, bytes_vs_map.*")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (numbers not meaningful)")
    parser.add_argument("--json", action="store_true", help="print the full results as JSON")
    parser.add_argument("--spatial-levels", type=int, default=None,
                        help="spatial-search window levels (3 = 14 windows per image, the default; 2 = 5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    result = run_retrieval(args.out, models=models, quick=args.quick, progress=not args.no_progress,
                           spatial_levels=args.spatial_levels)
    print(json.dumps(result, indent=2) if args.json else main_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
