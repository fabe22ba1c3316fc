"""The `offshelf` command: one thin layer over the Python API (contract in DESIGN.md section 3).

Exit codes: 0 success, 2 bad usage or input, 1 internal error; errors go to stderr as one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import OffshelfError
from .images import DEFAULT_MAX_PIXELS, VIEW_COUNTS, ImageDecodeError

if TYPE_CHECKING:
    from .probing import LabelSource

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    specs = list_models()
    if args.json:
        _print_json([spec.to_dict() for spec in specs])
        return EXIT_OK
    print(f"{'name':<20} {'dim':>5} {'input':>6}  {'default layer':<14} layers")
    for spec in specs:
        print(f"{spec.name:<20} {spec.dim:>5} {spec.preprocessing.size:>6}  {spec.default_layer:<14} "
              f"{', '.join(spec.layer_names)}")
    return EXIT_OK


def cmd_embed(args: argparse.Namespace) -> int:
    from .extract import embed

    summary = embed(
        args.paths,
        args.store,
        model=args.model,
        layer=args.layer,
        pool=args.pool,
        augment=args.augment,
        batch_size=args.batch_size,
        workers=args.workers,
        threads=args.threads,
        shard_size=args.shard_size,
        max_pixels=args.max_pixels,
        progress=not args.quiet,
    )
    if args.json:
        _print_json(summary.to_dict())
        return EXIT_OK
    rate = summary.embedded / summary.seconds if summary.seconds else 0.0
    print(f"embedded {summary.embedded}, skipped {summary.skipped} (already stored), failed {summary.failed} "
          f"in {summary.seconds:.1f} s ({rate:.1f} images/s) -> {summary.store}")
    for failure in summary.failures:
        print(f"  failed: {failure['path']}: {failure['reason']}")
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    if args.align is not None:
        from .upgrade import aligned_search

        hits = aligned_search(args.query, args.store, args.align, k=args.k)
    else:
        from .search import search

        hits = search(args.query, args.store, k=args.k)
    if args.json:
        _print_json([hit.to_dict() for hit in hits])
        return EXIT_OK
    print(f"{'rank':>4}  {'score':>6}  path")
    for hit in hits:
        print(f"{hit.rank:>4}  {hit.score:>6.3f}  {hit.path}")
    return EXIT_OK


def cmd_index_build(args: argparse.Namespace) -> int:
    from .index import build_store_index

    report = build_store_index(args.store, args.kind, pca=args.pca, target_recall=args.target_recall,
                               whiten=args.whiten)
    if args.json:
        _print_json(report)
        return EXIT_OK
    print(f"{report['kind']} index of {report['n']} vectors: recall@1 {report['recall_at_1']:.3f}, "
          f"recall@10 {report['recall_at_10']:.3f} (against exact search), "
          f"{report['bytes_per_vector']:.0f} bytes/vector, {report['qps']:.0f} queries/s -> {report['path']}")
    if "tuning" in report:
        print(f"tuning: {report['tuning'].get('message', report['tuning'])}")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from .index import update_store_index
    from .store import FeatureStore

    if not args.paths and not args.ids:
        raise OffshelfError("name the items to remove: image paths and/or --id N")
    store = FeatureStore.open(args.store)
    removed = store.remove(paths=[str(Path(p).resolve()) for p in args.paths], ids=args.ids)
    index = update_store_index(store.root)
    if args.json:
        _print_json({"removed": removed, "index": index})
        return EXIT_OK
    print(f"removed {len(removed)} items from {store.root}" + (" and its index" if index else ""))
    return EXIT_OK


def cmd_index_upgrade(args: argparse.Namespace) -> int:
    from .upgrade import upgrade_command

    report = upgrade_command(args.store, args.align, args.new_store, progress=not args.quiet)
    if args.json:
        _print_json(report)
    else:
        outcome = "switched: searches of the old store now use the new one" if report["switched"] else "not switched"
        print(f"re-embedded {report['embedded']} of {report.get('items', 0)} items ({report['failed']} failed) "
              f"into {report['new_store']} in {report['seconds']:.1f} s; {outcome}")
    if not report["switched"]:
        print(f"offshelf: error: {report.get('message', 'the upgrade did not switch')}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_align(args: argparse.Namespace) -> int:
    from .align import align_command

    report = align_command(args.old, args.new, args.out, args.method)
    if args.json:
        _print_json(report)
        return EXIT_OK
    if report["holdout_cosine"] is None:
        held = "no held-out pairs"
    else:
        held = (f"held out {report['n_holdout']}: cosine {report['holdout_cosine']:.3f}, top-1 "
                f"{report['holdout_top1']:.3f} (whole store {report['holdout_top1_all']:.3f})")
    print(f"{report['method']} map from {report['n_pairs']} pairs; {held} -> {report['map']}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from .store import FeatureStore

    store = FeatureStore.open(args.store)
    errors = store.errors().select(["path", "reason"]).to_pylist()
    info = {"store": str(store.root), **store.config.identity(), "items": len(store), "errors": errors}
    if args.json:
        _print_json(info)
        return EXIT_OK
    print(f"{info['store']}: {info['items']} items, {store.config.describe()}")
    print(f"{len(errors)} files failed:" if errors else "no failed files")
    for error in errors:
        print(f"  {error['path']}: {error['reason']}")
    return EXIT_OK


def _label_source(args: argparse.Namespace) -> LabelSource:
    from .probing import LabelSource

    return LabelSource(csv=args.labels, from_folders=args.labels_from_folders)


def cmd_probe_fit(args: argparse.Namespace) -> int:
    from .probing import fit_store_probe

    report = fit_store_probe(args.store, _label_source(args), args.out, method=args.method,
                             post=args.post.split(",") if args.post else (), cv=args.cv)
    if args.json:
        _print_json(report)
        return EXIT_OK
    cv = report["cv"]
    print(f"fitted a {report['method']} probe on {report['n']} items ({len(report['classes'])} classes, "
          f"{report['unlabeled']} unlabeled items ignored) -> {report['probe']}")
    print(f"cross-validated: accuracy {cv['accuracy']:.4f}, mAP {cv['mAP']:.4f}")
    return EXIT_OK


def cmd_probe_predict(args: argparse.Namespace) -> int:
    from .probing import predict_images, predict_store

    if (args.store is None) == (not args.images):
        raise OffshelfError("give either --store DIR or image files, not both")
    rows = predict_store(args.probe, args.store) if args.store else predict_images(args.probe, args.images)
    if args.json:
        _print_json(rows)
        return EXIT_OK
    for row in rows:
        predicted = ", ".join(row["predicted"]) if isinstance(row["predicted"], list) else row["predicted"]
        print(f"{predicted:<24} {row['path']}")
    return EXIT_OK


def cmd_probe_eval(args: argparse.Namespace) -> int:
    from .probing import eval_store_probe

    report = eval_store_probe(args.probe, args.store, _label_source(args))
    if args.json:
        _print_json(report)
        return EXIT_OK
    print(f"{report['n']} items: accuracy {report['accuracy']:.4f}, mAP {report['mAP']:.4f} "
          f"(VOC 11-point {report['mAP_voc11']:.4f})")
    for label, ap in report["per_class"].items():
        print(f"  {label:<24} AP {ap if ap is None else round(ap, 4)}")
    return EXIT_OK


BENCHMARKS = {"embed": "throughput", "classify": "classify", "retrieval": "retrieval", "compat": "compat"}  # `offshelf bench NAME` -> module offshelf.bench.<module> with main(argv)


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f".bench.{BENCHMARKS[args.benchmark]}", __package__)
    return int(module.main(args.options))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_demo, run_demo

    summary, queries = run_demo(args.store, k=args.k, progress=not args.quiet)
    if args.json:
        _print_json({"embed": summary.to_dict(), "queries": [query.to_dict() for query in queries]})
    else:
        print(format_demo(summary, queries))
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offshelf", description="Deep image features off the shelf.")
    parser.add_argument("--version", action="version", version=f"offshelf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int] | None, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if handler is not None:
            p.set_defaults(handler=handler)
        return p

    p = command("models", cmd_models, "List the available backbones.")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("embed", cmd_embed, "Embed images (folders, files, globs) into a feature store.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--store", required=True, type=Path, help="feature store directory (created if absent)")
    p.add_argument("--model", default="efficientnet-lite0", help="backbone name (see `offshelf models`)")
    p.add_argument("--layer", default=None, help="layer of the backbone (default: the model's default)")
    p.add_argument("--pool", default=None, help="gap (default), gmp, gem, gem:P, rmac or rmac:L for conv-map layers")
    p.add_argument("--augment", default="none", choices=sorted(VIEW_COUNTS), help="views averaged per image")
    p.add_argument("--batch-size", type=_positive_int, default=32,
                   help="model inputs per call (with --augment, images x views)")
    p.add_argument("--workers", type=_positive_int, default=None, help="decoding threads (default: cores)")
    p.add_argument("--threads", type=_positive_int, default=None, help="ONNX Runtime threads (default: cores)")
    p.add_argument("--shard-size", type=_positive_int, default=1024, help="images per committed shard")
    p.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS, help="decompression-bomb limit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")

    p = command("search", cmd_search, "Find the stored images most similar to a query image.")
    p.add_argument("query", type=Path, metavar="QUERY_IMAGE")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("-k", type=_positive_int, default=10, help="number of results")
    p.add_argument("--align", type=Path, default=None, metavar="MAP_DIR",
                   help="embed the query with the map's new model and map it into the store's space")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    index = command("index", None, "Approximate nearest-neighbour indexes kept with a store.")
    index_sub = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    p = index_sub.add_parser("build", help="build (or rebuild) the store's index and measure its recall")
    p.set_defaults(handler=cmd_index_build)
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--kind", required=True, choices=["flat", "hnsw", "ivfpq", "binary"])
    p.add_argument("--pca", type=_positive_int, default=None, help="reduce to D dims by PCA first")
    p.add_argument("--whiten", action="store_true", help="PCA-whiten (with --pca)")
    p.add_argument("--target-recall", type=float, default=None, help="tune search (and build) params to reach it")
    p.add_argument("--json", action="store_true")
    p = index_sub.add_parser("upgrade", help="re-embed the store with the map's new model, then switch searches to it")
    p.set_defaults(handler=cmd_index_upgrade)
    p.add_argument("--store", required=True, type=Path, help="the old store")
    p.add_argument("--align", required=True, type=Path, metavar="MAP_DIR", help="map fitted by `offshelf align`")
    p.add_argument("--new-store", type=Path, default=None, help="the new store (default: OLD-<new model> beside it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true")

    p = command("align", cmd_align, "Fit a map from a new model's embeddings into an old model's.")
    p.add_argument("--old", required=True, type=Path, help="store of the old model")
    p.add_argument("--new", required=True, type=Path, help="store of the new model (the same images, matched by path)")
    p.add_argument("--out", required=True, type=Path, metavar="MAP_DIR", help="where to save the map")
    p.add_argument("--method", choices=["procrustes", "linear", "mlp"], default="procrustes")
    p.add_argument("--json", action="store_true")

    p = command("remove", cmd_remove, "Remove items from a store (and its index) so they are never found again.")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("paths", nargs="*", metavar="PATH", help="stored image paths")
    p.add_argument("--id", dest="ids", type=int, action="append", default=[], help="a stored item id (repeatable)")
    p.add_argument("--json", action="store_true")

    p = command("info", cmd_info, "Describe a feature store and list the files that failed.")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    probe = command("probe", None, "Linear probes (SVM or logistic regression) on stored features.")
    probe_sub = probe.add_subparsers(dest="probe_command", required=True, metavar="ACTION")

    def labels_options(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--labels", type=Path, help="CSV with columns path,label (several rows for multi-label)")
        group.add_argument("--labels-from-folders", action="store_true", help="label = name of the item's folder")

    p = probe_sub.add_parser("fit", help="fit a probe on a store's labelled items")
    p.set_defaults(handler=cmd_probe_fit)
    p.add_argument("--store", required=True, type=Path)
    labels_options(p)
    p.add_argument("--out", required=True, type=Path, help="directory to save the probe in")
    p.add_argument("--method", choices=["svm", "logreg"], default="svm")
    p.add_argument("--post", default="l2", help="comma-separated post-processing: l2, power, standardize ('' for none)")
    p.add_argument("--cv", type=_positive_int, default=3, help="cross-validation folds for choosing C")
    p.add_argument("--json", action="store_true")

    p = probe_sub.add_parser("predict", help="predict labels for a store's items or for image files")
    p.set_defaults(handler=cmd_probe_predict)
    p.add_argument("--probe", required=True, type=Path)
    p.add_argument("--store", type=Path, default=None)
    p.add_argument("images", nargs="*", type=Path, metavar="IMAGE")
    p.add_argument("--json", action="store_true")

    p = probe_sub.add_parser("eval", help="accuracy and mAP of a saved probe on a labelled store")
    p.set_defaults(handler=cmd_probe_eval)
    p.add_argument("--probe", required=True, type=Path)
    p.add_argument("--store", required=True, type=Path)
    labels_options(p)
    p.add_argument("--json", action="store_true")

    p = command("bench", cmd_bench, "Run a benchmark; options after the name go to it (see `offshelf bench NAME -h`).")
    p.add_argument("benchmark", choices=sorted(BENCHMARKS))
    p.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options, e.g. --quick --json")

    p = command("demo", cmd_demo, "Embed the bundled photos and find them again from edited copies.")
    p.add_argument("--store", type=Path, default=None, help="where to keep the demo store")
    p.add_argument("-k", type=_positive_int, default=3)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (OffshelfError, ImageDecodeError, FileNotFoundError) as exc:
        print(f"offshelf: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("offshelf: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback, for a user
        print(f"offshelf: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
