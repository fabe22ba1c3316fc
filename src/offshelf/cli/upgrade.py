"""`offshelf align`: fit a map from a new model's space into an old model's."""

from __future__ import annotations

import argparse
from pathlib import Path

from offshelf.cli.common import EXIT_OK, Subparsers, add_command, add_force_option, print_json


def cmd_align(args: argparse.Namespace) -> int:
    from offshelf.io import check_bundle_target
    from offshelf.upgrade import fit_alignment, save_alignment

    check_bundle_target(args.out, args.force)  # before the fitting, not after it
    alignment, report = fit_alignment(args.old, args.new, method=args.method)
    report["map"] = str(save_alignment(alignment, args.out, overwrite=args.force))
    if args.json:
        print_json(report)
        return EXIT_OK
    if report["holdout_cosine"] is None:
        held = "no held-out pairs"
    else:
        held = (f"held out {report['n_holdout']}: cosine {report['holdout_cosine']:.3f}, top-1 "
                f"{report['holdout_top1']:.3f} (whole store {report['holdout_top1_all']:.3f})")
    print(f"{report['method']} map from {report['n_pairs']} pairs; {held} -> {report['map']}")
    return EXIT_OK


def register(sub: Subparsers) -> None:
    p = add_command(sub, "align", cmd_align, "Fit a map from a new model's embeddings into an old model's.")
    p.add_argument("--old", required=True, type=Path, help="store of the old model")
    p.add_argument("--new", required=True, type=Path, help="store of the new model (the same images, matched by path)")
    p.add_argument("--out", required=True, type=Path, metavar="MAP_DIR", help="where to save the map")
    add_force_option(p, "map")
    p.add_argument("--method", choices=["procrustes", "linear", "mlp"], default="procrustes")
    p.add_argument("--json", action="store_true")
