"""`offshelf index build` and `offshelf index upgrade`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from offshelf.cli.common import EXIT_OK, EXIT_USAGE, Subparsers, add_command, positive_int, print_json
from offshelf.cli.engine import add_engine_options, check_engine_options


def cmd_index_build(args: argparse.Namespace) -> int:
    check_engine_options(args, ray_only=("address", "tasks"), local_only=("target_recall",))
    if args.engine == "ray":
        from offshelf.distributed import build_index_on_ray

        report = build_index_on_ray(args.store, args.kind or "ivfpq", pca=args.pca, whiten=args.whiten, address=args.address,
                                    tasks=args.tasks)
    else:
        from offshelf.index import build_store_index

        report = build_store_index(args.store, args.kind or "auto", pca=args.pca, target_recall=args.target_recall,
                                   whiten=args.whiten)
    if args.json:
        print_json(report)
        return EXIT_OK
    print(f"{report['kind']} index of {report['n']} vectors: recall@1 {report['recall_at_1']:.3f}, "
          f"recall@10 {report['recall_at_10']:.3f} (against exact search), "
          f"{report['bytes_per_vector']:.0f} bytes/vector, {report['qps']:.0f} queries/s -> {report['path']}")
    if report.get("engine") == "ray":
        print(f"built in {report['tasks']} Ray tasks: train {report['train_seconds']:.1f} s, add "
              f"{report['add_seconds']:.1f} s, merge {report['merge_seconds']:.2f} s")
    if "tuning" in report:
        print(f"tuning: {report['tuning'].get('message', report['tuning'])}")
    return EXIT_OK


def cmd_index_upgrade(args: argparse.Namespace) -> int:
    from offshelf.upgrade import upgrade_index

    report = upgrade_index(args.store, args.align, args.new_store, progress=not args.quiet)
    if args.json:
        print_json(report)
    else:
        outcome = "switched: searches of the old store now use the new one" if report["switched"] else "not switched"
        print(f"re-embedded {report['embedded']} of {report.get('items', 0)} items ({report['failed']} failed) "
              f"into {report['new_store']} in {report['seconds']:.1f} s; {outcome}")
    if not report["switched"]:
        print(f"offshelf: error: {report.get('message', 'the upgrade did not switch')}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def register(sub: Subparsers) -> None:
    index = add_command(sub, "index", None, "Approximate nearest-neighbour indexes kept with a store.")
    index_sub = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    p = index_sub.add_parser("build", help="build (or rebuild) the store's index and measure its recall")
    p.set_defaults(handler=cmd_index_build)
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--kind", default=None, choices=["auto", "flat", "hnsw", "ivfpq", "binary", "hnswpca"],
                   help="default: auto (chosen from the store's size, tuned to --target-recall, default 0.95); "
                        "ivfpq with --engine ray")
    p.add_argument("--pca", type=positive_int, default=None, help="reduce to D dims by PCA first")
    p.add_argument("--whiten", action="store_true", help="PCA-whiten (with --pca)")
    p.add_argument("--target-recall", type=float, default=None, help="tune search (and build) params to reach it")
    add_engine_options(p, {"tasks": "Ray tasks adding the store's shards in parallel (default: the cluster's CPUs)"})
    p.add_argument("--json", action="store_true")
    p = index_sub.add_parser("upgrade", help="re-embed the store with the map's new model, then switch searches to it")
    p.set_defaults(handler=cmd_index_upgrade)
    p.add_argument("--store", required=True, type=Path, help="the old store")
    p.add_argument("--align", required=True, type=Path, metavar="MAP_DIR", help="map fitted by `offshelf align`")
    p.add_argument("--new-store", type=Path, default=None, help="the new store (default: OLD-<new model> beside it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true")
