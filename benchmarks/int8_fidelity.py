"""How close int8 descriptors stay to fp32 (`python -m benchmarks.int8_fidelity`, writes int8_fidelity.json/.md).

Fixed protocol, per packaged model (efficientnet-lite0, efficientnet-lite2, open-nsfw-resnet), default layer + GAP:

1. The int8 graph: `offshelf.models.int8_report` (built on first use: calibration on the 17 shipped photos,
   sensitivity search to a mean cosine of `SEARCH_TARGET` on them). Reported: the nodes kept in fp32, the
   fidelity on the calibration photos, and naive whole-graph int8's fidelity measured by the same search.
2. Cosine of each image's int8 descriptor to its fp32 descriptor (mean, min, 5th percentile) on HELD-OUT
   images, disjoint from the calibration photos: the 11 Plasma wallpaper photographs (the goal: mean >= 0.98),
   the copy-detection queries edited from them, and the 326 Open Clip Art drawings of the class benchmark.
3. Copy-detection mAP (`benchmarks.copy_detection`'s data and protocol: plain GAP, L2, cosine; 560 queries,
   5,056 distractors), fp32 against int8 (goal: within 0.01), for all queries and for those edited from the
   held-out wallpapers (the other originals are the shipped photos that also calibrate the int8 graph).
4. Open Clip Art probe accuracy (`benchmarks.classify`'s task, split and linear SVM on L2 descriptors, C by
   cross-validation on the training split), fp32 against int8 (goal: within 1 point).

Descriptors come from the shared benchmark stores (`dataset_store`, one per model and precision), so each image
is embedded once per machine. Nothing here is chosen by looking at the results.

Usage: python -m benchmarks.int8_fidelity [--models a,b] [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.classify import PLAIN_POST, make_tasks, plain_cell
from benchmarks.copy_detection import DEFAULT_MODELS, embedded_sets
from benchmarks.datasets.photos import wallpapers
from benchmarks.harness.retrieval_data import FULL, QUICK, copy_detection_set
from benchmarks.harness.retrieval_eval import dense_ranks
from benchmarks.harness.runinfo import StageClock, environment_info, write_json
from benchmarks.harness.stores import dataset_store
from offshelf.extract import Embedder, make_config
from offshelf.models import TARGET_COSINE, get_model_spec, int8_report
from offshelf.models.quantize import SEARCH_TARGET
from offshelf.vectors import l2_normalize

RESULTS_DIR = Path("benchmarks/results")
PRECISIONS = ("fp32", "int8")


def _cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    c = np.sum(l2_normalize(a) * l2_normalize(b), axis=1)
    return {"n": len(c), "mean": float(c.mean()), "min": float(c.min()), "p5": float(np.percentile(c, 5))}


def _copy_map(sets: dict[str, tuple[np.ndarray, np.ndarray]], query_original: np.ndarray,
              subset: np.ndarray) -> float:
    """mAP (mean of 1 / rank of the original) of the `subset` queries over originals + distractors."""
    distractors = [sets[k][0] for k in sets if k.startswith("distractors:")]
    database = l2_normalize(np.concatenate([sets["originals"][0], *distractors]))
    ranks = dense_ranks(l2_normalize(sets["queries"][0][subset]), database, query_original[subset])
    return float(np.mean(1.0 / ranks))


def _vectors_of(store: Any, paths: Any) -> np.ndarray:
    """The stored vectors of `paths`, in their order."""
    _, stored, matrix = store.vectors()
    row = {p: i for i, p in enumerate(stored)}
    return matrix[[row[str(Path(p).resolve())] for p in paths]]


def measure_model(model: str, quick: bool, clock: StageClock, copy_detection: bool = True) -> dict[str, Any]:
    """Parts 1-4 for `model` (part 3 only with `copy_detection`: 5,616 more images to embed per precision)."""
    spec = get_model_spec(model)
    with clock.stage(f"{model}/int8 graph"):
        report = int8_report(spec)
    data = copy_detection_set(QUICK if quick else FULL)
    task = next(t for t in make_tasks(quick=quick) if t.key == "openclipart")
    walls = wallpapers()
    sets, photos = {}, {}
    for precision in PRECISIONS:
        with clock.stage(f"{model}/{precision}/embed"):
            if copy_detection:
                sets[precision] = embedded_sets(data, task.data.paths, model, "gap", clock.progress, precision)
            else:
                store = dataset_store("openclipart", task.data.paths, model=model, pool="gap",
                                      progress=clock.progress, precision=precision)
                sets[precision] = {"class": (_vectors_of(store, task.data.paths), None)}
            config = make_config(spec, precision=precision, calibration=report["calibration_sha256"])
            photos[precision] = Embedder(config).embed_files(walls)
    query_original = np.asarray(data.query_original)
    held_out_originals = {i for i, p in enumerate(data.originals) if p.stem.startswith("wall-")}
    held_out_queries = np.array([o in held_out_originals for o in query_original])
    everything = np.ones(len(query_original), bool)
    y, train = task.labels, task.split("train")
    result: dict[str, Any] = {
        "fp32_nodes": report["fp32_nodes"],
        "quantized_nodes": report["quantized_nodes"],
        "calibration_fidelity": report["fidelity"],
        "naive_calibration_fidelity": report["naive_fidelity"],
        "search_seconds": report["search_seconds"],
        "cosine": {
            "wallpaper_photos": _cosines(photos["fp32"], photos["int8"]),
            "openclipart": _cosines(sets["fp32"]["class"][0], sets["int8"]["class"][0]),
        },
    }
    if copy_detection:
        result["cosine"]["wallpaper_queries"] = _cosines(sets["fp32"]["queries"][0][held_out_queries],
                                                         sets["int8"]["queries"][0][held_out_queries])
    for precision in PRECISIONS:
        with clock.stage(f"{model}/{precision}/evaluate"):
            cell = plain_cell(sets[precision]["class"][0], y, train, PLAIN_POST)
            result[precision] = {"openclipart_accuracy": float(cell["accuracy"]), "openclipart_C": cell["C"]}
            if copy_detection:
                result[precision]["copy_mAP"] = _copy_map(sets[precision], query_original, everything)
                result[precision]["copy_mAP_held_out"] = _copy_map(sets[precision], query_original, held_out_queries)
    result["goals"] = {
        "mean_cosine_held_out": result["cosine"]["wallpaper_photos"]["mean"] >= TARGET_COSINE,
        "probe_accuracy_within_1_point": abs(result["int8"]["openclipart_accuracy"]
                                             - result["fp32"]["openclipart_accuracy"]) <= 0.01,
    }
    if copy_detection:
        result["goals"]["copy_mAP_within_0.01"] = abs(result["int8"]["copy_mAP"] - result["fp32"]["copy_mAP"]) <= 0.01
    clock.log(f"{model}: held-out cosine {result['cosine']['wallpaper_photos']['mean']:.4f}, "
              f"probe {result['fp32']['openclipart_accuracy']:.3f} -> {result['int8']['openclipart_accuracy']:.3f}")
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# int8 fidelity: descriptors of the int8 graphs against fp32",
        "",
        (f"{result['created']}; load average {', '.join(f'{x:.1f}' for x in result['loadavg'])}. "
         "Protocol: see the docstring of benchmarks/int8_fidelity.py. Default layer + GAP; the search stops at a "
         f"mean cosine of {SEARCH_TARGET} on the calibration photos; the goal is {TARGET_COSINE} on held-out "
         "images, disjoint from them."),
        "",
        ("| model | fp32 nodes | cosine: calib. (naive int8) | held-out photos mean / min | edited copies mean / min "
         "| drawings mean / min | copy mAP fp32 -> int8 (held-out) | probe acc. fp32 -> int8 |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, r in result["models"].items():
        if "error" in r:
            lines.append(f"| {model} | not measured: {r['error']} | | | | | | |")
            continue
        cos = r["cosine"]
        copy = (f"| {r['fp32']['copy_mAP']:.4f} -> {r['int8']['copy_mAP']:.4f} "
                f"({r['fp32']['copy_mAP_held_out']:.4f} -> {r['int8']['copy_mAP_held_out']:.4f}) "
                if "copy_mAP" in r["fp32"] else "| not measured ")
        lines.append(
            f"| {model} | {len(r['fp32_nodes'])} of {len(r['fp32_nodes']) + r['quantized_nodes']} "
            f"| {r['calibration_fidelity']['mean_cosine']:.4f} ({r['naive_calibration_fidelity']['mean_cosine']:.4f}) "
            + "".join(f"| {c['mean']:.4f} / {c['min']:.4f} " if c else "| not measured "
                      for c in (cos.get(k) for k in ("wallpaper_photos", "wallpaper_queries", "openclipart")))
            + copy
            + f"| {r['fp32']['openclipart_accuracy']:.3f} -> {r['int8']['openclipart_accuracy']:.3f} |"
        )
    lines += ["", "Goals (mean held-out cosine >= 0.98; copy mAP within 0.01; probe accuracy within 1 point):", ""]
    for model, r in result["models"].items():
        if "goals" in r:
            accuracy = 100 * (r["int8"]["openclipart_accuracy"] - r["fp32"]["openclipart_accuracy"])
            deltas = {"mean_cosine_held_out": f"{r['cosine']['wallpaper_photos']['mean']:.4f}",
                      "probe_accuracy_within_1_point": f"{accuracy:+.2f} points",
                      "copy_mAP_within_0.01": f"{r['int8'].get('copy_mAP', 0) - r['fp32'].get('copy_mAP', 0):+.4f}"}
            lines.append(f"- {model}: " + ", ".join(f"{k} {'met' if v else 'MISSED'} ({deltas[k]})"
                                                    for k, v in r["goals"].items())
                         + f"; fp32 nodes: {', '.join(r['fp32_nodes']) or 'none'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_fidelity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated packaged models")
    parser.add_argument("--quick", action="store_true", help="the tiny data subsets (a smoke run)")
    parser.add_argument("--no-copy-detection", default="", metavar="MODELS",
                        help="comma-separated models measured without part 3 (its 5,616 images per precision)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other models' rows of an existing results file (each row says when it ran)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results; "
                        "--quick: none unless given)")
    args = parser.parse_args(argv)
    clock = StageClock(progress=True)
    models: dict[str, Any] = {}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:
            models[model] = measure_model(model, args.quick, clock, model not in args.no_copy_detection.split(","))
            models[model]["created"] = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        except Exception as exc:  # noqa: BLE001 -- one model that cannot be quantized is reported, not fatal
            models[model] = {"error": f"{type(exc).__name__}: {exc}"}
            clock.log(f"{model}: {models[model]['error']}")
    result = {"created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(), "quick": args.quick,
              "environment": environment_info(), "loadavg": os.getloadavg(), "models": models,
              "seconds": clock.seconds}
    out = args.out or (None if args.quick else RESULTS_DIR)
    if args.merge and out is not None and (out / "int8_fidelity.json").is_file():
        previous = json.loads((out / "int8_fidelity.json").read_text())["models"]
        result["models"] = {**previous, **models}
    text = markdown(result)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "int8_fidelity.json", result)
        (out / "int8_fidelity.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
