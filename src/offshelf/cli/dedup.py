"""`offshelf dedup PATH... --store DIR`: near-duplicate groups, and `offshelf dedup --restore LOG`."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from offshelf.cli.common import EXIT_OK, Subparsers, add_command, add_json_option, positive_int, print_json
from offshelf.errors import OffshelfError

HELP = "Find near-duplicate images: groups, the item to keep, a threshold calibrated on your own images."


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def register(sub: Subparsers) -> None:
    p = add_command(sub, "dedup", cmd_dedup, HELP)
    p.add_argument("paths", nargs="*", metavar="PATH", help="folders, files, globs")
    p.add_argument("--store", type=Path, help="feature store directory (created if absent)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity of a duplicate (default: calibrated on the collection)")
    p.add_argument("--target-precision", type=_fraction, default=0.95, help="for the calibration (default 0.95)")
    p.add_argument("--sample", type=positive_int, default=60, help="images the calibration edits (default 60)")
    p.add_argument("--recalibrate", action="store_true", help="calibrate again instead of reusing the saved one")
    p.add_argument("--keep", choices=["largest", "oldest", "newest", "first"], default="largest",
                   help="which item of a group to keep (default largest)")
    p.add_argument("--method", choices=["auto", "exact", "index"], default="auto",
                   help="exact range search, or the store's ANN index (auto: the index from 50,000 items)")
    p.add_argument("--model", default="efficientnet-lite0", help="backbone of a new store")
    p.add_argument("--move-to", type=Path, default=None, metavar="DIR",
                   help="move the duplicates into DIR, with a log that --restore undoes")
    p.add_argument("--restore", type=Path, default=None, metavar="LOG",
                   help="move the files of a log back, and add them back to the store (--store, else the log's)")
    p.add_argument("--csv", type=Path, default=None, metavar="FILE", help="write group,role,path,score rows")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_json_option(p)


def _write_csv(path: Path, groups: list[dict]) -> None:
    from offshelf.io import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["group", "role", "path", "score"])
            for i, group in enumerate(groups, start=1):
                out.writerow([i, "keep", group["keep"], ""])
                out.writerows([i, "duplicate", d, f"{s:.4f}"] for d, s in zip(group["duplicates"], group["scores"]))

    atomic_write(path, write)


def cmd_dedup(args: argparse.Namespace) -> int:
    """Run `offshelf dedup`; returns the exit code (0)."""
    from offshelf.dedup import dedup, restore

    if args.restore is not None:
        if args.paths or args.move_to:
            raise OffshelfError("--restore LOG takes no PATH and no --move-to")
        result = restore(args.restore, args.store, progress=not args.quiet)
        if args.json:
            print_json(result)
        else:
            print(f"restored {result['restored']} files ({result['already_in_place']} already in place) "
                  f"from {result['log']}; {result['readded']} added back to store {result['store']}"
                  + (f" (not added back: {result['readd_skipped']})" if "readd_skipped" in result else ""))
        return EXIT_OK
    if not args.paths or args.store is None:
        raise OffshelfError("dedup needs PATH... and --store DIR (or --restore LOG)")
    report = dedup(args.paths, args.store, threshold=args.threshold, keep=args.keep,
                   target_precision=args.target_precision, sample=args.sample, recalibrate=args.recalibrate,
                   method=args.method, move_to=args.move_to, model=args.model, progress=not args.quiet)
    if args.csv is not None:
        _write_csv(args.csv, report.groups)
    if args.json:
        print_json(report.to_dict())
        return EXIT_OK
    cal = report.calibration
    if cal is not None:
        print(f"threshold {report.threshold:.4f} ({cal['space']} cosine), calibrated on {cal['n_copies']} edited "
              f"copies of {cal['n_sample']} images: precision {cal['precision']:.3f} "
              f"(target {cal['target_precision']}), estimated recall {cal['recall']:.3f}"
              + ("" if cal["reached"] else "  -- TARGET NOT REACHED"))
    else:
        print(f"threshold {report.threshold:.4f} (plain cosine, given)")
    c = report.compared
    print(f"{c['items']} images, {c['new']} compared anew ({c['previously_compared']} from the last run), "
          f"{c['pairs']} pairs, {len(report.groups)} groups")
    for group in report.groups:
        print(f"keep {group['keep']}")
        for path, score in zip(group['duplicates'], group['scores']):
            print(f"  {score:.3f}  {path}")
    if report.log:
        print(f"moved {len(report.moved)} duplicates; undo with: offshelf dedup --restore {report.log}")
    return EXIT_OK
