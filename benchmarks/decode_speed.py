#!/usr/bin/env python
"""Decoding speed: Pillow, pillow-simd and simplejpeg, from JPEG bytes to the model's input, on the same photos.

Method (one process per library):

Data. Three sets of real photographs, built reproducibly and cached under $OFFSHELF_HOME/bench/data, read into
memory once (this measures CPU, not disk):
  photos       `--n` (300) baseline JPEGs, q90 4:2:0, long side 1024-1600 px: embed_throughput's photo set;
  progressive  the first `--prog-n` (100) of those photos re-encoded by Pillow as progressive JPEGs, q85;
  wallpapers   `--wall-n` (24) full-resolution wallpapers (3200-5120 px long side) re-encoded as JPEG q90.

Methods, each `bytes -> (1, S, S, 3)` uint8 views, S = 224 (efficientnet-lite0) and 260 (lite2). Timed as the
CPU time of the one thread that does the work (time.thread_time: on a shared machine, time other processes take
from the core does not count), split into decode (bytes to an RGB image, EXIF orientation included) and resize
(`offshelf.images.make_views`); the wall time is recorded too:
  pillow-full        `decode_image(data, jpeg_decoder="pillow")`: a full-size decode, then the resize;
  pillow-draft       `decode_image(data, min_size=S, jpeg_decoder="pillow")`: DCT-scaled by `Image.draft`;
  pillow-simd-*      the same two functions in a side venv whose PIL is pillow-simd (benchmarks.harness.pillow_simd:
                     built from source with AVX2, against Debian's libjpeg-turbo);
  simplejpeg         `decode_image(data, min_size=S)`: offshelf's default, simplejpeg at Pillow's DCT scale;
  simplejpeg-n8      simplejpeg's own choice of scale (the smallest of libjpeg-turbo's N/8 scales that keeps both
                     sides >= S), for comparison: not what offshelf does.
One thread; image by image, every method in turn (the pillow-simd ones in a subprocess afterwards), `--passes` (3)
times; each image counts with its cheapest pass (the least disturbed by other processes), a method's cost is
the mean over images. The first
`--check-n` (20) images' views of every method are compared with pillow-draft's (mean absolute difference, 0..255).

Reader. The pipeline's whole per-file path (`offshelf.extract.Reader(224).load(path)`: read, sha256, decode,
resize) for each decoder over every file of each set, in a thread pool of 2 (as embed_throughput's (e)/(f)),
after one warm-up file, `--passes` times (the pass with the least CPU counts); CPU ms per image
(time.process_time, all threads) and images/s (wall, so it depends on what else runs).

Every result records the load average and the CPU share other processes used meanwhile (the machine is shared).

Usage: python -m benchmarks.decode_speed [--quick] [--no-simd] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

from benchmarks.embed_throughput import ForeignLoad, data_dir, machine_info, photo_paths, wallpaper_paths
from offshelf.extract import Reader
from offshelf.images import decode_image, make_views
from offshelf.io import atomic_write_bytes

RESULTS_DIR = Path("benchmarks/results")
SIZES = (224, 260)

Decode = Callable[[bytes, int], Image.Image]


def _simplejpeg_n8(data: bytes, size: int) -> Image.Image:
    return Image.fromarray(simplejpeg.decode_jpeg(data, min_height=size, min_width=size))


#: In-process methods, by library; the worker in the pillow-simd venv runs the "pillow" ones under other names.
PILLOW_METHODS: dict[str, Decode] = {
    "full": lambda data, size: decode_image(data, jpeg_decoder="pillow"),
    "draft": lambda data, size: decode_image(data, min_size=size, jpeg_decoder="pillow"),
}
OTHER_METHODS: dict[str, Decode] = {
    "simplejpeg": lambda data, size: decode_image(data, min_size=size),
    "simplejpeg-n8": _simplejpeg_n8,
}


def progressive_paths(photos: list[Path], n: int) -> list[Path]:
    """The first `n` photos re-encoded as progressive JPEGs (q85), cached next to them."""
    out = data_dir() / f"photos-progressive-{n}"
    paths = []
    for src in photos[:n]:
        dest = out / src.name
        if not dest.exists():
            with Image.open(src) as im:
                buf = io.BytesIO()
                im.convert("RGB").save(buf, "JPEG", quality=85, progressive=True)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dest, buf.getvalue())
        paths.append(dest)
    return paths


def time_methods(methods: dict[str, Decode], blobs: dict[str, list[bytes]], passes: int, check_n: int
                 ) -> tuple[dict, dict[str, np.ndarray]]:
    """CPU ms per image of every method over every set and size, and the first `check_n` views of each.

    Image by image, every method in turn (so a burst of load hits them alike); each image's cost is its
    cheapest of `passes` passes (the least disturbed), and a method's cost is the mean over images.
    """
    out: dict = {}
    views: dict[str, np.ndarray] = {}
    names = list(methods)
    for set_name, datas in blobs.items():
        for size in SIZES:
            for decode in methods.values():
                make_views(decode(datas[0], size), size)  # warm-up
            spent = np.zeros((2, passes, len(names), len(datas)))  # decode, resize seconds
            kept: dict[str, list[np.ndarray]] = {name: [] for name in names}
            for p in range(passes):
                for i, data in enumerate(datas):
                    for j, name in enumerate(names):
                        t0 = time.thread_time()
                        image = methods[name](data, size)
                        t1 = time.thread_time()
                        v = make_views(image, size)
                        spent[:, p, j, i] = t1 - t0, time.thread_time() - t1
                        if p == 0 and i < check_n:
                            kept[name].append(v)
            best = spent.sum(axis=0).argmin(axis=0)  # (method, image): the least disturbed pass
            chosen = np.take_along_axis(spent, best[None, None], axis=1)[:, 0]  # (2, method, image)
            for j, name in enumerate(names):
                decode_ms, resize_ms = 1000 * chosen[:, j].mean(axis=1)
                all_ms = 1000 * spent[:, :, j].sum(axis=0).mean(axis=1)
                out.setdefault(set_name, {}).setdefault(str(size), {})[name] = {
                    "ms_per_image": decode_ms + resize_ms, "decode_ms": decode_ms, "resize_ms": resize_ms,
                    "images_per_s": 1000 / (decode_ms + resize_ms), "passes_ms": [round(x, 3) for x in all_ms],
                }
                views[f"{set_name}/{size}/{name}"] = np.concatenate(kept[name])
    return out, views


def time_reader(decoder: str, files: dict[str, list[Path]], passes: int, threads: int = 2) -> dict:
    """The pipeline's reader (read, sha256, decode, resize to 224) over every file, `threads` workers; per set
    the pass with the least CPU (time.process_time, all threads)."""
    out: dict = {}
    for set_name, paths in files.items():
        reader = Reader(224, jpeg_decoder=decoder)
        reader.load(str(paths[0]))  # warm-up
        for _ in range(passes):
            t0, c0 = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for loaded in pool.map(lambda p: reader.load(str(p)), paths):
                    if loaded.error is not None:
                        raise RuntimeError(f"{loaded.path}: {loaded.error}")
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            run = {"images": len(paths), "seconds": seconds, "images_per_s": len(paths) / seconds,
                   "cpu_ms_per_image": 1000 * cpu / len(paths), "threads": threads}
            if set_name not in out or run["cpu_ms_per_image"] < out[set_name]["cpu_ms_per_image"]:
                out[set_name] = run
    return out


def _load(files: dict[str, list[Path]]) -> dict[str, list[bytes]]:
    return {name: [p.read_bytes() for p in paths] for name, paths in files.items()}


def worker(spec_file: Path) -> int:
    """Run in the pillow-simd venv: the Pillow methods and the Pillow reader; JSON to stdout."""
    import PIL
    from PIL import features

    spec = json.loads(spec_file.read_text())
    files = {name: [Path(p) for p in paths] for name, paths in spec["files"].items()}
    timings, views = time_methods(PILLOW_METHODS, _load(files), spec["passes"], spec["check_n"])
    np.savez(spec["views_out"], **views)
    reader = time_reader("pillow", files, spec["passes"])
    print(json.dumps({"pil": PIL.__version__, "pil_file": PIL.__file__,
                      "libjpeg_turbo": features.version("libjpeg_turbo"), "methods": timings, "reader": reader}))
    return 0


def run_simd(python: Path, files: dict[str, list[Path]], passes: int, check_n: int) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory(prefix="offshelf-simd-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"files": {k: [str(p) for p in v] for k, v in files.items()},
                                    "passes": passes, "check_n": check_n,
                                    "views_out": str(Path(tmp) / "views.npz")}))
        done = subprocess.run([str(python), "-m", "benchmarks.decode_speed", "--worker", str(spec)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pillow-simd worker failed:\n{done.stderr[-3000:]}")
        with np.load(Path(tmp) / "views.npz") as npz:
            views = {k: npz[k] for k in npz.files}
    return json.loads(done.stdout), views


def _rename(timings: dict, views: dict, prefix: str) -> tuple[dict, dict]:
    renamed = {s: {z: {f"{prefix}-{m}": v for m, v in ms.items()} for z, ms in sizes.items()}
               for s, sizes in timings.items()}
    return renamed, {k.rsplit("/", 1)[0] + f"/{prefix}-" + k.rsplit("/", 1)[1]: v for k, v in views.items()}


def _merge(into: dict, part: dict) -> None:
    for s, sizes in part.items():
        for z, ms in sizes.items():
            into.setdefault(s, {}).setdefault(z, {}).update(ms)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Decoding speed: JPEG bytes to the model's input",
        "",
        f"{result['created']}; {m['cpu']}, {m['cores_usable']} cores; python {m['python']}; Pillow "
        f"{m['versions'].get('pillow')} (libjpeg-turbo {m['versions'].get('libjpeg_turbo')}); simplejpeg "
        f"{result['simplejpeg']}; pillow-simd {result['pillow_simd'].get('version') or 'not measured'}"
        + (f" (libjpeg-turbo {result['pillow_simd']['libjpeg_turbo']})" if result["pillow_simd"].get("version") else "")
        + f". Load average {result['load_average_start']} at the start, {result['load_average_end']} at the end; "
        f"other processes used {result['other_processes_cpu_share']:.0%} of the CPUs meanwhile.",
        "",
        "Sets: " + ", ".join(f"{k} ({v['images']} files, {v['long_side']} px long side)"
                             for k, v in result["sets"].items())
        + ". CPU ms of the one decoding thread per image, each image's "
        f"cheapest of {result['args']['passes']} passes (images/s = 1000 / CPU ms); method: see the docstring of "
        "benchmarks/decode_speed.py.",
        "",
        "| set | size | method | CPU ms/image | decode | resize | images/s | vs pillow-draft | MAD vs pillow-draft |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s, sizes in result["methods"].items():
        for z, ms in sizes.items():
            ref = ms["pillow-draft"]["ms_per_image"]
            for name, r in ms.items():
                diff = result["mad_vs_pillow_draft"].get(f"{s}/{z}/{name}")
                lines.append(
                    f"| {s} | {z} | {name} | {r['ms_per_image']:.2f} | {r['decode_ms']:.2f} | {r['resize_ms']:.2f} | "
                    f"{r['images_per_s']:.0f} | {ref / r['ms_per_image']:.2f}x | "
                    f"{'-' if diff is None else f'{diff:.3f}'} |")
    lines += ["", "The pipeline's reader (`Reader(224).load(path)`: read, sha256, decode, resize), 2 threads:", "",
              "| set | decoder | CPU ms/image | images/s (wall) | CPU vs pillow |",
              "| --- | --- | ---: | ---: | ---: |"]
    for s, decoders in result["reader"].items():
        for name, r in decoders.items():
            lines.append(f"| {s} | {name} | {r['cpu_ms_per_image']:.2f} | {r['images_per_s']:.0f} | "
                         f"{decoders['pillow']['cpu_ms_per_image'] / r['cpu_ms_per_image']:.2f}x |")
    lines += [""] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="baseline photos (embed_throughput's set)")
    parser.add_argument("--prog-n", type=int, default=100, help="of them re-encoded as progressive JPEGs")
    parser.add_argument("--wall-n", type=int, default=24, help="full-resolution wallpapers")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--check-n", type=int, default=20, help="images per set compared with pillow-draft")
    parser.add_argument("--no-simd", action="store_true", help="do not build or measure pillow-simd")
    parser.add_argument("--quick", action="store_true", help="smoke run: n=30, prog-n=10, wall-n=4, 1 pass")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results; "
                        "with --quick, a quick-results folder in the data cache)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker(args.worker)
    if args.quick:
        args.n, args.prog_n, args.wall_n, args.passes = 30, 10, 4, 1
    args.out = args.out or (data_dir() / "quick-results" if args.quick else RESULTS_DIR)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load_start = [round(x, 2) for x in os.getloadavg()]
    photos = photo_paths(args.n)
    files = {"photos": photos, "progressive": progressive_paths(photos, args.prog_n),
             "wallpapers": wallpaper_paths(args.wall_n)}
    blobs = _load(files)
    simd_python, simd_error = None, None
    if not args.no_simd:
        from benchmarks.harness.pillow_simd import simd_python as make_simd

        try:
            simd_python = make_simd(log=log)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            simd_error = str(exc)
            log(f"pillow-simd not measured: {exc}")
    probe = ForeignLoad()
    probe.start()
    log("Pillow and simplejpeg ...")
    methods, views = time_methods({f"pillow-{k}": v for k, v in PILLOW_METHODS.items()} | OTHER_METHODS,
                                  blobs, args.passes, args.check_n)
    loads = {"after_methods": [round(x, 2) for x in os.getloadavg()]}
    log("reader ...")
    reader = {d: time_reader(d, files, args.passes) for d in ("pillow", "simplejpeg")}
    simd_info: dict = {}
    if simd_python is not None:
        log("pillow-simd (methods and reader) ...")
        simd, simd_views = run_simd(simd_python, files, args.passes, args.check_n)
        simd_info = {"version": simd["pil"], "file": simd["pil_file"], "libjpeg_turbo": simd["libjpeg_turbo"]}
        renamed, simd_views = _rename(simd["methods"], simd_views, "pillow-simd")
        _merge(methods, renamed)
        views |= simd_views
        reader["pillow-simd"] = simd["reader"]
        loads["after_pillow_simd"] = [round(x, 2) for x in os.getloadavg()]
    reader_by_set = {s: {d: reader[d][s] for d in reader} for s in files}
    mad = {}
    for key, v in views.items():
        ref = views.get(key.rsplit("/", 1)[0] + "/pillow-draft")
        mad[key] = float(np.abs(v.astype(np.float64) - ref.astype(np.float64)).mean())
    notes = []
    if simd_error:
        notes.append(f"pillow-simd was not measured: {simd_error.splitlines()[0]}")
    for s in files:
        z = methods[s]["224"]
        fastest = min(z, key=lambda k: z[k]["ms_per_image"])
        draft = z["pillow-draft"]["ms_per_image"]
        notes.append(f"{s}, 224: fastest {fastest} ({z[fastest]['ms_per_image']:.2f} ms); simplejpeg "
                     f"{draft / z['simplejpeg']['ms_per_image']:.2f}x pillow-draft"
                     + (f", pillow-simd-draft {draft / z['pillow-simd-draft']['ms_per_image']:.2f}x"
                        if "pillow-simd-draft" in z else "") + ".")
    result = {
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "machine": machine_info(), "simplejpeg": simplejpeg.__version__, "pillow_simd": simd_info,
        "load_average_start": load_start, "load_average_during": loads,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "other_processes_cpu_share": round(probe.stop(), 3),
        "sets": {k: {"images": len(v), "long_side": _sides(v)} for k, v in files.items()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "methods": methods, "mad_vs_pillow_draft": mad, "reader": reader_by_set, "notes": notes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "decode_speed.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out / "decode_speed.md", markdown(result).encode())
    print(markdown(result))
    return 0


def _sides(paths: list[Path]) -> str:
    sides = sorted(max(Image.open(p).size) for p in paths)
    return f"{sides[0]}-{sides[-1]}"


if __name__ == "__main__":
    sys.exit(main())
