"""`offshelf evaluate STORE...`: compare stores (and hand-crafted baselines) on the user's labelled images.

Its handler returns the exit code and lets `OffshelfError` propagate (`offshelf.cli.main` prints it, exit 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from offshelf.cli.common import EXIT_OK, Subparsers, add_command, add_json_option, add_labels_options, print_json
from offshelf.errors import OffshelfError

HELP = "Compare stores (model, layer, pooling) and baselines on labelled images: cross-validated probe and retrieval."


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {value}")
    return value


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def register(sub: Subparsers) -> None:
    p = add_command(sub, "evaluate", cmd_evaluate, HELP)
    p.add_argument("stores", nargs="+", type=Path, metavar="STORE", help="feature store directories")
    add_labels_options(p)
    p.add_argument("--baselines", type=_names, default=[], metavar="NAMES",
                   help="also evaluate hand-crafted features of the same images: comma-separated from raw, colour, "
                        "hog, lbp")
    p.add_argument("--folds", type=_at_least_two, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--method", choices=["svm", "logreg"], default="svm", help="linear probe (default svm)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold shuffling")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE", help="write a bar chart (PNG, SVG or PDF)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_json_option(p)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The results as an aligned text table with a one-line header saying what was measured."""
    first = results[0]
    lines = [
        (f"{first['n']} items, {len(first['classes'])} classes; {first['folds']}-fold cross-validated linear probe "
         "(C chosen inside each training fold) and leave-one-out retrieval")
    ]
    header = ("name", "model", "layer", "pool", "dim", "accuracy", "mAP", "retrieval mAP", "seconds")
    rows = [
        (
            str(r["name"]), str(r["model"]), str(r["layer"] or "-"), str(r["pool"] or "-"), str(r["dim"]),
            f"{r['accuracy']:.3f} ± {r['accuracy_std']:.3f}", _score(r["mAP"]), _score(r["retrieval_mAP"]),
            f"{r['seconds']:.1f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    numeric = set(range(4, len(header)))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines += [line(header).rstrip(), *(line(row).rstrip() for row in rows)]
    for r in results:
        if r.get("zero_shot_accuracy") is not None:
            lines.append(f"{r['name']}: zero-shot accuracy {r['zero_shot_accuracy']:.3f} (text tower, "
                         "\"a photo of a {label}.\", no training)")
        if r.get("unlabeled") or r.get("skipped"):
            lines.append(f"{r['name']}: {r['unlabeled']} unlabeled items ignored, {r['skipped']} labelled items "
                         "not in every store or not decodable left out")
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run `offshelf evaluate`; returns the exit code (0)."""
    from offshelf.evaluate import evaluate_stores, plot_results, require_matplotlib
    from offshelf.probe import LabelSource

    if args.plot is not None:  # fail before the long part
        require_matplotlib()
        if not args.plot.parent.is_dir():
            raise OffshelfError(f"cannot write the plot {args.plot}: folder {args.plot.parent} does not exist")
    labels = LabelSource(csv=args.labels, from_folders=args.labels_from_folders)
    results = evaluate_stores(args.stores, labels, baselines=args.baselines, folds=args.folds, seed=args.seed,
                              method=args.method, progress=not args.quiet)
    if args.plot is not None:
        plot_results(results, args.plot)
    if args.json:
        print_json(results)
        return EXIT_OK
    print(format_table(results))
    if args.plot is not None:
        print(f"plot -> {args.plot}")
    return EXIT_OK
