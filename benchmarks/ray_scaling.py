"""Ray scaling: the Ray engine against the local engine on this machine, and what N nodes would give.

Method (time.perf_counter, one process, everything side by side in one run; the machine is shared, so the
ratios are what to read, and the load average is recorded):

Data. `--n` (default 300) JPEG photographs, long side 1024..1600 px, made reproducibly from the real photos
available offline (`benchmarks.embed_throughput.photo_paths`, cached under $OFFSHELF_HOME/bench/data, so the
files are in the page cache: this measures CPU, not disk).

Embedding (efficientnet-lite0, batch 32, into a fresh store each time, the whole `embed` call timed):
  local     `offshelf.embed` (decoding threads + one ONNX Runtime session with all cores)
  ray-1     `embed_on_ray(actors=1)` on a running local Ray instance with this machine's CPUs
  ray-2     `embed_on_ray(actors=2)` likewise
`--rounds` rounds of local, ray-1, ray-2 in turn; the median of each is reported. The Ray instance is started
once (`ray_session`, its start and stop timed separately): that is the cluster a `--address` run joins; a
command without `--address` pays the start and stop on top, also reported. A run on `--tiny` (4) images on the
running instance measures the Ray engine's fixed cost per run (actors starting, each loading the model; the
plan), so that overhead = fixed + per-image difference.

Index. A store of `--index-n` (default 20,000) realistic synthetic 1280-d vectors
(`benchmarks.harness.synthetic.realistic_vectors`, resampled from real features), in shards of 2,500 rows.
`ivfpq` built by `build_store_index` (one process, FAISS with all cores) and by `build_index_on_ray`
(`--tasks`, default 2: train on the driver, add shards in Ray tasks, merge the inverted lists), recall@10
against exact search on 1,000 sampled queries reported for both.

Scaling arithmetic. Besides the above, it times the three steps a cluster does not parallelize: listing
(`find_images` + one stat per file, on the photos), the driver's commit (1,024 rows of 1280-d vectors into a
shard, written and fsynced) and the index merge (merge seconds per vector from the sharded build).

Usage: python -m benchmarks.ray_scaling [--n 300] [--rounds 2] [--index-n 20000] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.embed_throughput import photo_paths
from benchmarks.harness.runinfo import StageClock, environment_info, write_json
from benchmarks.harness.stores import bench_home
from offshelf import FeatureStore, embed
from offshelf.distributed import build_index_on_ray, embed_on_ray
from offshelf.distributed.cluster import ray_session
from offshelf.images import find_images
from offshelf.index import build_store_index
from offshelf.io import atomic_write_bytes
from offshelf.models.runtime import available_cores
from offshelf.store import FileState, StoreConfig

RESULTS_DIR = Path("benchmarks/results")
GOAL_OVERHEAD = 0.25
INDEX_SHARD_ROWS = 2_500
COMMIT_ROWS = 1_024
ENGINES = {"local": None, "ray-1": 1, "ray-2": 2}


def timed_embed(paths: list[Path], actors: int | None, work: Path) -> dict[str, Any]:
    """One `embed` call into a fresh store (local engine if `actors` is None)."""
    store = Path(tempfile.mkdtemp(dir=work))
    start = time.perf_counter()
    if actors is None:
        summary = embed(paths, store, progress=False)
    else:
        summary = embed_on_ray(paths, store, actors=actors, progress=False)
    seconds = time.perf_counter() - start
    assert summary.embedded == len(paths) and summary.failed == 0, summary
    shutil.rmtree(store)
    return {"images": len(paths), "seconds": round(seconds, 2), "images_per_s": round(len(paths) / seconds, 2)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of a configuration's rounds."""
    seconds = statistics.median(row["seconds"] for row in rows)
    images = rows[0]["images"]
    return {"images": images, "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 2),
            "rounds": [row["seconds"] for row in rows]}


def synthetic_store(n: int) -> FeatureStore:
    """A store of `n` realistic 1280-d vectors in shards of INDEX_SHARD_ROWS, built once and cached."""
    from benchmarks.harness.synthetic import realistic_vectors

    root = bench_home() / "stores" / f"ray-scaling-synthetic-{n}"
    if (root / "manifest.json").is_file() and len(FeatureStore.open(root)) == n:
        return FeatureStore.open(root)
    shutil.rmtree(root, ignore_errors=True)
    vectors = realistic_vectors(n, seed=0)
    store = FeatureStore.open_or_create(root, StoreConfig("synthetic-realistic", "head", "gap", "none",
                                                          vectors.shape[1]))
    with store.writer() as writer:
        for start in range(0, n, INDEX_SHARD_ROWS):
            rows = store.new_rows()
            for i in range(start, min(n, start + INDEX_SHARD_ROWS)):
                rows.add(f"/synthetic/{i}.jpg", FileState("0" * 64, 1, 1), vectors[i])
            writer.commit(rows)
    return store


def listing_rate(paths: list[Path]) -> float:
    """Files per second through the driver's planning: find_images and one stat per file."""
    start = time.perf_counter()
    found = find_images([str(p.parent) for p in paths[:1]])
    for path in found:
        os.stat(path)
    return len(found) / (time.perf_counter() - start)


def commit_rate(work: Path, dim: int = 1280) -> float:
    """Rows per second of the driver's commit step: a shard of COMMIT_ROWS rows built and written atomically."""
    store = FeatureStore.open_or_create(work / "commit", StoreConfig("synthetic", "head", "gap", "none", dim))
    vectors = np.random.default_rng(0).standard_normal((COMMIT_ROWS, dim)).astype(np.float32)
    start = time.perf_counter()
    with store.writer() as writer:
        rows = store.new_rows()
        for i, vector in enumerate(vectors):
            rows.add(f"/commit/{i}.jpg", FileState("0" * 64, 1, 1), vector)
        writer.commit(rows)
    return COMMIT_ROWS / (time.perf_counter() - start)


def scaling_paragraph(r: dict[str, Any]) -> str:
    """The arithmetic of N nodes from the measured per-node rate and the serial steps."""
    per_node = r["embed"]["ray-2"]["images_per_s"]
    listing, commit = r["serial"]["listing_files_per_s"], r["serial"]["commit_rows_per_s"]
    merge = r["index"]["sharded"]["merge_seconds"] / r["index"]["n"]
    add = r["index"]["sharded"]["add_seconds"] / r["index"]["n"] * r["index"]["sharded"]["tasks"]
    nodes_commit = commit / per_node
    return (
        f"One 2-core node embeds {per_node:.1f} images/s with the Ray engine (2 actors). N such nodes give about "
        f"N x {per_node:.1f} images/s for inference and decoding, which run on the workers, until a step that "
        f"runs once on the driver becomes the limit. The driver commits {commit:,.0f} rows/s (Parquet shards of "
        f"1,024 1280-d rows, written and fsynced), so commits stop scaling near {nodes_commit:,.0f} such nodes; "
        f"listing and stat-ing the inputs runs at {listing:,.0f} files/s once per run ({1e7 / listing / 60:.1f} "
        f"min for 10 million files, before the first image is embedded, and again on every resume). The driver "
        f"also receives every vector (5 KB each at 1280-d) over the network, about {per_node * 5 / 1024:.2f} MB/s "
        f"per node. For the index, adding costs {add * 1e6:.0f} us per vector per task and spreads over the "
        f"tasks, training runs once on a sample (at most 100,000 vectors, {r['index']['sharded']['train_seconds']:.1f} s "
        f"here) and the merge is serial at {merge * 1e6:.2f} us per vector ({merge * 1e9 / 60:.0f} min per billion), "
        f"so for large N the build time tends to train + merge + recall measurement, all on the driver, and the "
        f"driver must hold the merged index in memory."
    )


def per_image(r: dict[str, Any]) -> dict[str, float]:
    """Seconds per image beyond a run's fixed cost: (time of the full run - time of the tiny run) / (images
    between them), for the local engine and the Ray engine with 2 actors, and the Ray engine's overhead then."""
    extra = r["photos"] - r["tiny"]["images"]
    local = (r["embed"]["local"]["seconds"] - r["tiny_local"]["seconds"]) / extra
    ray = (r["embed"]["ray-2"]["seconds"] - r["tiny"]["seconds"]) / extra
    return {"local_s_per_image": local, "ray_s_per_image": ray, "overhead": ray / local - 1,
            "fixed_s": r["tiny"]["seconds"] - r["tiny"]["images"] * ray}


def markdown(r: dict[str, Any]) -> str:
    e, local, pi = r["embed"], r["embed"]["local"], per_image(r)
    lines = [
        "# Ray scaling (`benchmarks/ray_scaling.py`)",
        "",
        f"{r['photos']} real photos (long side 1024-1600 px), efficientnet-lite0, batch 32, {r['rounds']} rounds "
        f"(median shown), {r['environment']['cores']} cores; load average at start "
        f"{', '.join(f'{x:.2f}' for x in r['environment']['load_average_at_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in r['load_average_at_end'])}. Run {r['date']}.",
        "",
        "| engine | images/s | seconds | time vs local | all rounds (s) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, row in e.items():
        lines.append(f"| {name} | {row['images_per_s']:.1f} | {row['seconds']:.1f} | "
                     f"{row['seconds'] / local['seconds']:.2f}x | {', '.join(str(s) for s in row['rounds'])} |")
    o = r["overhead"]
    lines += [
        "",
        f"Ray instance start {r['ray_start_seconds']:.1f} s, stop {r['ray_stop_seconds']:.1f} s. Fixed cost of a Ray "
        f"run ({r['tiny']['images']} images, 2 actors, on the running instance): {r['tiny']['seconds']:.1f} s "
        f"(local engine: {r['tiny_local']['seconds']:.1f} s).",
        "",
        f"**Overhead of the Ray engine (2 actors) on one machine: {o['running_instance']:+.0%} of the local "
        f"engine's time on a running instance (goal <= {GOAL_OVERHEAD:.0%}: "
        f"{'met' if o['met'] else 'missed'}); {o['with_instance_start']:+.0%} for a command that starts and stops "
        f"its own local instance.**",
        "",
        f"Beyond the fixed cost (a {r['tiny']['images']}-image run), an image costs {pi['ray_s_per_image'] * 1e3:.0f} ms "
        f"with the Ray engine (2 actors) and {pi['local_s_per_image'] * 1e3:.0f} ms with the local engine: "
        f"{pi['overhead']:+.0%}, and a run pays about {pi['fixed_s']:.0f} s once (actors starting and loading the "
        "model, the plan), so the overhead of a long run tends to the former.",
        "",
        "| index build (ivfpq) | n | train + add s | train s | add s (Ray tasks) | merge s | total s | recall@1 | recall@10 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    single, sharded = r["index"]["single"], r["index"]["sharded"]
    lines.append(f"| single process | {r['index']['n']:,} | {single['build_seconds']:.1f} | | | | {single['seconds']:.1f} | "
                 f"{single['recall_at_1']:.3f} | {single['recall_at_10']:.3f} |")
    lines.append(f"| Ray, {sharded['tasks']} tasks | {r['index']['n']:,} | "
                 f"{sharded['train_seconds'] + sharded['add_seconds']:.1f} | {sharded['train_seconds']:.1f} | "
                 f"{sharded['add_seconds']:.1f} | {sharded['merge_seconds']:.2f} | {sharded['seconds']:.1f} | "
                 f"{sharded['recall_at_1']:.3f} | {sharded['recall_at_10']:.3f} |")
    lines += ["", "total = the whole call: reading the store, building, recall against exact search, saving.", "",
              "## N nodes", "", r["scaling"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--n", type=int, default=300, help="photos to embed")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tiny", type=int, default=4, help="images of the fixed-cost run")
    parser.add_argument("--index-n", type=int, default=20_000)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 24 photos, 1 round, 3,000 vectors")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None, help="only write the Markdown of a results JSON")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
        atomic_write_bytes(args.render.with_suffix(".md"), markdown(result).encode())
        return 0
    if args.quick:
        args.n, args.rounds, args.index_n = 24, 1, 3_000
    out = args.out or (bench_home() / "quick-results" if args.quick else RESULTS_DIR)
    clock = StageClock(progress=True)
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "environment": environment_info(),
                              "photos": args.n, "rounds": args.rounds}
    import ray

    result["environment"]["ray"] = ray.__version__
    paths = photo_paths(args.n)
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as tmp:
        work = Path(tmp)
        with clock.stage("warm-up (model export cache, page cache)"):
            timed_embed(paths[:8], None, work)
        start = time.perf_counter()
        with ray_session(num_cpus=available_cores()):
            result["ray_start_seconds"] = round(time.perf_counter() - start, 2)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ENGINES}
            for round_ in range(args.rounds):
                for name, actors in ENGINES.items():
                    with clock.stage(f"round {round_ + 1}: {name}"):
                        runs[name].append(timed_embed(paths, actors, work))
            with clock.stage("fixed cost"):
                result["tiny"] = timed_embed(paths[: args.tiny], 2, work)
                result["tiny_local"] = timed_embed(paths[: args.tiny], None, work)
            with clock.stage("index store"):
                store = synthetic_store(args.index_n)
            with clock.stage("index: single process"):
                t0 = time.perf_counter()
                single = build_store_index(store.root, "ivfpq")
                single_s = time.perf_counter() - t0
            with clock.stage("index: sharded on Ray"):
                t0 = time.perf_counter()
                sharded = build_index_on_ray(store.root, "ivfpq", tasks=args.tasks)
                sharded_s = time.perf_counter() - t0
            stop = time.perf_counter()
        result["ray_stop_seconds"] = round(time.perf_counter() - stop, 2)
        with clock.stage("serial steps"):
            result["serial"] = {"listing_files_per_s": round(listing_rate(paths), 1),
                                "commit_rows_per_s": round(commit_rate(work), 1)}
    result["embed"] = {name: summarize(rows) for name, rows in runs.items()}
    local_s, ray_s = result["embed"]["local"]["seconds"], result["embed"]["ray-2"]["seconds"]
    running = ray_s / local_s - 1
    with_start = (ray_s + result["ray_start_seconds"] + result["ray_stop_seconds"]) / local_s - 1
    result["overhead"] = {"running_instance": round(running, 3), "with_instance_start": round(with_start, 3),
                          "goal": GOAL_OVERHEAD, "met": running <= GOAL_OVERHEAD}
    keep = ("recall_at_1", "recall_at_10", "train_seconds", "add_seconds", "merge_seconds", "tasks", "build_seconds")
    result["index"] = {"n": args.index_n,
                       "single": {"seconds": round(single_s, 2), "build_seconds": single["build_seconds"],
                                  "recall_at_1": single["recall_at_1"], "recall_at_10": single["recall_at_10"]},
                       "sharded": {"seconds": round(sharded_s, 2), **{k: sharded[k] for k in keep}}}
    result["load_average_at_end"] = list(os.getloadavg())
    result["scaling"] = scaling_paragraph(result)
    result["stage_seconds"] = clock.seconds
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ray_scaling.json", result)
    atomic_write_bytes(out / "ray_scaling.md", markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
