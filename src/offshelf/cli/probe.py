"""`offshelf probe fit|predict|eval`: linear probes on stored features."""

from __future__ import annotations

import argparse
from pathlib import Path

from offshelf.cli.common import (
    EXIT_OK,
    Subparsers,
    add_command,
    add_force_option,
    add_labels_options,
    positive_int,
    print_json,
)
from offshelf.errors import OffshelfError
from offshelf.probe import LabelSource


def label_source(args: argparse.Namespace) -> LabelSource:
    return LabelSource(csv=args.labels, from_folders=args.labels_from_folders)


def cmd_probe_fit(args: argparse.Namespace) -> int:
    from offshelf.probe import fit_store_probe

    report = fit_store_probe(args.store, label_source(args), args.out, method=args.method,
                             post=args.post.split(",") if args.post else (), cv=args.cv, overwrite=args.force)
    if args.json:
        print_json(report)
        return EXIT_OK
    cv = report["cv"]
    print(f"fitted a {report['method']} probe on {report['n']} items ({len(report['classes'])} classes, "
          f"{report['unlabeled']} unlabeled items ignored) -> {report['probe']}")
    print(f"cross-validated: accuracy {cv['accuracy']:.4f}, mAP {cv['mAP']:.4f}")
    return EXIT_OK


def cmd_probe_predict(args: argparse.Namespace) -> int:
    from offshelf.probe import predict_images, predict_store

    if (args.store is None) == (not args.images):
        raise OffshelfError("give either --store DIR or image files, not both")
    rows = predict_store(args.probe, args.store) if args.store else predict_images(args.probe, args.images)
    if args.json:
        print_json(rows)
        return EXIT_OK
    for row in rows:
        predicted = ", ".join(row["predicted"]) if isinstance(row["predicted"], list) else row["predicted"]
        print(f"{predicted:<24} {row['path']}")
    return EXIT_OK


def cmd_probe_eval(args: argparse.Namespace) -> int:
    from offshelf.probe import eval_store_probe

    report = eval_store_probe(args.probe, args.store, label_source(args))
    if args.json:
        print_json(report)
        return EXIT_OK
    print(f"{report['n']} items: accuracy {report['accuracy']:.4f}, mAP {report['mAP']:.4f} "
          f"(VOC 11-point {report['mAP_voc11']:.4f})")
    for label, ap in report["per_class"].items():
        print(f"  {label:<24} AP {ap if ap is None else round(ap, 4)}")
    return EXIT_OK


def cmd_probe_zero_shot(args: argparse.Namespace) -> int:
    from offshelf.probe.zeroshot import zero_shot_labels

    rows = zero_shot_labels(args.store, args.classes, **({"template": args.template} if args.template else {}))
    if args.json:
        print_json(rows)
        return EXIT_OK
    for row in rows:
        print(f"{row['label']:<24} {row['score']:6.3f}  {row['path']}")
    return EXIT_OK


def register(sub: Subparsers) -> None:
    probe = add_command(sub, "probe", None, "Linear probes (SVM or logistic regression) on stored features.")
    probe_sub = probe.add_subparsers(dest="probe_command", required=True, metavar="ACTION")

    p = probe_sub.add_parser("fit", help="fit a probe on a store's labelled items")
    p.set_defaults(handler=cmd_probe_fit)
    p.add_argument("--store", required=True, type=Path)
    add_labels_options(p)
    p.add_argument("--out", required=True, type=Path, help="directory to save the probe in")
    add_force_option(p, "probe")
    p.add_argument("--method", choices=["svm", "logreg"], default="svm")
    p.add_argument("--post", default="l2", help="comma-separated post-processing: l2, power, standardize ('' for none)")
    p.add_argument("--cv", type=positive_int, default=3, help="cross-validation folds for choosing C")
    p.add_argument("--json", action="store_true")

    p = probe_sub.add_parser("predict", help="predict labels for a store's items or for image files")
    p.set_defaults(handler=cmd_probe_predict)
    p.add_argument("--probe", required=True, type=Path)
    p.add_argument("--store", type=Path, default=None)
    p.add_argument("images", nargs="*", type=Path, metavar="IMAGE")
    p.add_argument("--json", action="store_true")

    p = probe_sub.add_parser("zero-shot", help="label every stored item with the best of CLASSES (CLIP-type models)")
    p.set_defaults(handler=cmd_probe_zero_shot)
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--classes", required=True, help="comma-separated class names, e.g. cat,dog,car")
    p.add_argument("--template", default=None,
                   help='the text for a class, {} the class name (default "a photo of a {}.")')
    p.add_argument("--json", action="store_true")

    p = probe_sub.add_parser("eval", help="accuracy and mAP of a saved probe on a labelled store")
    p.set_defaults(handler=cmd_probe_eval)
    p.add_argument("--probe", required=True, type=Path)
    p.add_argument("--store", required=True, type=Path)
    add_labels_options(p)
    p.add_argument("--json", action="store_true")
