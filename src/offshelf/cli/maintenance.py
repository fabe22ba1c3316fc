"""`offshelf check` and `offshelf compact`: is a store sound (and set damage aside), and rewrite it compactly."""

from __future__ import annotations

import argparse
from pathlib import Path

from offshelf.cli.common import EXIT_OK, Subparsers, add_command, print_json

EXIT_DAMAGED = 3  # `check` found problems it did not repair


def cmd_check(args: argparse.Namespace) -> int:
    from offshelf.index import check_store_index
    from offshelf.store import check_store, resolve_store_root

    root = resolve_store_root(args.store)  # after an upgrade switch: the store that replaced it
    report = check_store(root, repair=args.repair)
    if report["problems"]:  # the index is compared with the store's rows once they can all be read
        report["index"] = {"present": None, "problems": [], "repaired": [], "skipped": "the store is damaged"}
    else:
        report["index"] = check_store_index(root, repair=args.repair)
    problems = report["problems"] + report["index"]["problems"]
    report["healthy"] = not problems
    if args.json:
        print_json(report)
        return EXIT_OK if not problems else EXIT_DAMAGED
    for entry in report["repaired"] + report["index"]["repaired"]:
        print(f"repaired ({entry['repair']}): {entry['file']}: {entry['what']}")
    for entry in problems:
        print(f"damaged: {entry['file']}: {entry['what']} (--repair: {entry['repair']})")
    for entry in report["warnings"]:
        print(f"warning: {entry['file']}: {entry['what']}")
    if report["quarantined"]:
        print(f"{len(report['quarantined'])} shards set aside in {root}/quarantine; `offshelf embed` redoes their files")
    index = report["index"]
    index_text = (f"index {index.get('kind')} of {index.get('n')}" if index["present"] else
                  "index not checked (the store is damaged)" if "skipped" in index else "no index")
    state = "healthy" if not problems else f"{len(problems)} problems"
    print(f"{root}: {state}; {report['shards']} shards, {report.get('items', '?')} items, "
          f"{report.get('removed', '?')} removed, {report.get('errors', '?')} failed files, {index_text}")
    return EXIT_OK if not problems else EXIT_DAMAGED


def cmd_compact(args: argparse.Namespace) -> int:
    from offshelf.index import update_store_index
    from offshelf.store import compact, resolve_store

    report = compact(resolve_store(args.store))
    report["index"] = update_store_index(report["store"])
    if args.json:
        print_json(report)
        return EXIT_OK
    print(f"{report['store']}: {report['items']} items ({report['removed']} removed, {report['errors']} failed "
          f"files kept as records) in {report['files_after']} files, was {report['files_before']}; "
          f"{report['bytes_before'] / 1e6:.2f} -> {report['bytes_after'] / 1e6:.2f} MB")
    return EXIT_OK


def register(sub: Subparsers) -> None:
    p = add_command(sub, "check", cmd_check, "Verify a store and its index file by file; exit 3 if damaged.")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--repair", action="store_true",
                   help="quarantine damaged shards (the next embed redoes their files) and rebuild or catch up the index")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add_command(sub, "compact", cmd_compact,
                    "Rewrite a store as one row per live item (removed items and old versions gone), atomically.")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
