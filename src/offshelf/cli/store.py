"""`offshelf info` and `offshelf remove`: what a store holds, and taking items out of it."""

from __future__ import annotations

import argparse
from pathlib import Path

from offshelf.cli.common import EXIT_OK, Subparsers, add_command, print_json
from offshelf.errors import OffshelfError


def cmd_info(args: argparse.Namespace) -> int:
    from offshelf.store import resolve_store

    store = resolve_store(args.store)  # after an upgrade switch: the store that replaced it
    errors = store.errors().select(["path", "reason"]).to_pylist()
    info = {"store": str(store.root), **store.config.identity(), "items": len(store), "errors": errors,
            "removed": store.removed().num_rows}
    if args.json:
        print_json(info)
        return EXIT_OK
    print(f"{info['store']}: {info['items']} items, {store.config.describe()}")
    print(f"{len(errors)} files failed:" if errors else "no failed files")
    for error in errors:
        print(f"  {error['path']}: {error['reason']}")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from offshelf.index import update_store_index
    from offshelf.store import resolve_store

    if not args.paths and not args.ids:
        raise OffshelfError("name the items to remove: image paths and/or --id N")
    store = resolve_store(args.store)  # after an upgrade switch: the store that replaced it
    removed = store.remove(paths=[str(Path(p).resolve()) for p in args.paths], ids=args.ids)
    index = update_store_index(store.root)
    if args.json:
        print_json({"removed": removed, "index": index})
        return EXIT_OK
    print(f"removed {len(removed)} items from {store.root}" + (" and its index" if index else ""))
    return EXIT_OK


def register(sub: Subparsers) -> None:
    p = add_command(sub, "remove", cmd_remove, "Remove items from a store (and its index) for good: never found "
                    "again, and left out by later `embed` runs unless re-added with `embed --readd`.")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("paths", nargs="*", metavar="PATH", help="stored image paths")
    p.add_argument("--id", dest="ids", type=int, action="append", default=[], help="a stored item id (repeatable)")
    p.add_argument("--json", action="store_true")

    p = add_command(sub, "info", cmd_info, "Describe a feature store and list the files that failed.")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
