"""`offshelf demo`: embed the bundled photos and find them again from edited copies."""

from __future__ import annotations

import argparse
from pathlib import Path

from offshelf.cli.common import EXIT_OK, Subparsers, add_command, positive_int, print_json
from offshelf.cli.serve import add_serve_options


def cmd_demo(args: argparse.Namespace) -> int:
    from offshelf.demo import format_demo, run_demo

    summary, queries = run_demo(args.store, k=args.k, progress=not args.quiet)
    if args.json:
        print_json({"embed": summary.to_dict(), "queries": [query.to_dict() for query in queries]})
    else:
        print(format_demo(summary, queries))
    if args.serve:
        from offshelf.cli.serve import run_server

        return run_server(args, Path(summary.store), open_page=True)
    return EXIT_OK


def register(sub: Subparsers) -> None:
    p = add_command(sub, "demo", cmd_demo, "Embed the bundled photos and find them again from edited copies.")
    p.add_argument("--store", type=Path, default=None, help="where to keep the demo store")
    p.add_argument("-k", type=positive_int, default=3)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--serve", action="store_true", help="then serve the demo store and open the search page")
    add_serve_options(p, json_option=False)
