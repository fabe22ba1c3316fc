"""`offshelf models` and `offshelf embed`."""

from __future__ import annotations

import argparse
from pathlib import Path

from offshelf.cli.common import (
    EXIT_OK,
    Subparsers,
    add_command,
    add_json_option,
    add_precision_option,
    positive_int,
    print_json,
)
from offshelf.cli.engine import add_engine_options, check_engine_options
from offshelf.images import DEFAULT_MAX_PIXELS, VIEW_COUNTS


def cmd_models(args: argparse.Namespace) -> int:
    from offshelf.models import list_models

    specs = list_models()
    if args.json:
        print_json([spec.to_dict() for spec in specs])
        return EXIT_OK
    print(f"{'name':<20} {'dim':>5} {'input':>6}  {'default layer':<14} layers")
    for spec in specs:
        print(f"{spec.name:<20} {spec.dim:>5} {spec.preprocessing.size:>6}  {spec.default_layer:<14} "
              f"{', '.join(spec.layer_names)}")
    return EXIT_OK


def cmd_embed(args: argparse.Namespace) -> int:
    options = {"model": args.model, "layer": args.layer, "pool": args.pool, "augment": args.augment,
               "batch_size": args.batch_size, "shard_size": args.shard_size, "max_pixels": args.max_pixels,
               "progress": not args.quiet, "readd": args.readd}
    check_engine_options(args, ray_only=("address", "actors"),
                         local_only=("workers", "threads", "precision", "calibrate_on"))
    if args.engine == "ray":
        from offshelf.distributed import embed_on_ray

        summary = embed_on_ray(args.paths, args.store, address=args.address, actors=args.actors or 1, **options)
    else:
        from offshelf.extract import embed

        summary = embed(args.paths, args.store, workers=args.workers, threads=args.threads, precision=args.precision,
                        calibrate_on=args.calibrate_on, **options)
    if args.json:
        print_json(summary.to_dict())
        return EXIT_OK
    rate = summary.embedded / summary.seconds if summary.seconds else 0.0
    print(f"embedded {summary.embedded}, skipped {summary.skipped} (already stored), failed {summary.failed} "
          f"in {summary.seconds:.1f} s ({rate:.1f} images/s) -> {summary.store}")
    if summary.removed:
        print(f"  left out {summary.removed} files removed from the store (--readd adds them back)")
    for failure in summary.failures:
        print(f"  failed: {failure['path']}: {failure['reason']}")
    return EXIT_OK


def register(sub: Subparsers) -> None:
    p = add_command(sub, "models", cmd_models, "List the available backbones.")
    add_json_option(p)

    p = add_command(sub, "embed", cmd_embed, "Embed images (folders, files, globs) into a feature store.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--store", required=True, type=Path, help="feature store directory (created if absent)")
    p.add_argument("--model", default=None,
                   help="backbone name (see `offshelf models`; default: the store's, or efficientnet-lite0)")
    p.add_argument("--layer", default=None, help="layer of the backbone (default: the model's default)")
    p.add_argument("--pool", default=None, help="gap (default), gmp, gem, gem:P, rmac or rmac:L for conv-map layers")
    p.add_argument("--augment", default=None, choices=sorted(VIEW_COUNTS),
                   help="views averaged per image (default: the store's, or none)")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="model inputs per call (with --augment, images x views)")
    p.add_argument("--workers", type=positive_int, default=None, help="decoding threads (default: cores)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="ONNX Runtime threads per batch; cores // N batches run at once (default: 1 per batch, "
                   "a batch per core)")
    p.add_argument("--shard-size", type=positive_int, default=1024, help="images per committed shard")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help="decompression-bomb limit")
    p.add_argument("--readd", action="store_true", help="embed files removed from the store again (re-add them)")
    add_precision_option(p, "the store's, or fp32")
    p.add_argument("--calibrate-on", type=Path, default=None, metavar="DIR",
                   help="with --precision int8: calibrate the int8 graph on these images (default: shipped photos)")
    add_engine_options(p, {"actors": "ONNX Runtime actors in Ray's pool (default 1; each gets its share of the CPUs)"})
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
