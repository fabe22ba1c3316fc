"""The `offshelf` command: one thin layer over the Python API (contract in DESIGN.md section 3).

Exit codes: 0 success, 2 bad usage or input, 1 internal error; errors go to stderr as one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import OffshelfError
from .images import DEFAULT_MAX_PIXELS, VIEW_COUNTS, ImageDecodeError

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
    from .search import search

    hits = search(args.query, args.store, k=args.k)
    if args.json:
        _print_json([hit.to_dict() for hit in hits])
        return EXIT_OK
    print(f"{'rank':>4}  {'score':>6}  path")
    for hit in hits:
        print(f"{hit.rank:>4}  {hit.score:>6.3f}  {hit.path}")
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

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = command("models", cmd_models, "List the available backbones.")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("embed", cmd_embed, "Embed images (folders, files, globs) into a feature store.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--store", required=True, type=Path, help="feature store directory (created if absent)")
    p.add_argument("--model", default="efficientnet-lite0", help="backbone name (see `offshelf models`)")
    p.add_argument("--layer", default=None, help="layer of the backbone (default: the model's default)")
    p.add_argument("--pool", default=None, help="gap (default), gmp, gem or gem:P for conv-map layers")
    p.add_argument("--augment", default="none", choices=sorted(VIEW_COUNTS), help="views averaged per image")
    p.add_argument("--batch-size", type=_positive_int, default=32)
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
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("info", cmd_info, "Describe a feature store and list the files that failed.")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")

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
