"""`offshelf search`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from offshelf.cli.common import EXIT_OK, Subparsers, add_command, add_precision_option, positive_int, print_json
from offshelf.errors import OffshelfError


def cmd_search(args: argparse.Namespace) -> int:
    if (args.query is None) == (args.text is None):
        raise OffshelfError("give either a query image or --text, not both")
    if args.text is not None:
        if args.align is not None:
            raise OffshelfError("--align maps image queries of another model; it does not apply to --text")
        from offshelf.search import search_text

        hits = search_text(args.text, args.store, k=args.k)
    elif args.align is not None:
        from offshelf.upgrade import aligned_search

        hits = aligned_search(args.query, args.store, args.align, k=args.k)
    else:
        from offshelf.search import Searcher

        searcher = Searcher(args.store, precision=args.precision)
        if searcher.caught_up:
            print(f"offshelf: note: the index lagged behind the store (commit {searcher.caught_up['from_seq']} "
                  f"-> {searcher.caught_up['to_seq']}); caught up before searching", file=sys.stderr)
        hits = searcher.search_files([args.query], k=args.k)[0]
    if args.json:
        print_json([hit.to_dict() for hit in hits])
        return EXIT_OK
    print(f"{'rank':>4}  {'score':>6}  path")
    for hit in hits:
        print(f"{hit.rank:>4}  {hit.score:>6.3f}  {hit.path}")
    return EXIT_OK


def register(sub: Subparsers) -> None:
    p = add_command(sub, "search", cmd_search, "Find the stored images most similar to a query image (or text).")
    p.add_argument("query", type=Path, nargs="?", default=None, metavar="QUERY_IMAGE")
    p.add_argument("--text", default=None, help="a text query instead of an image (CLIP-type models)")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("-k", type=positive_int, default=10, help="number of results")
    p.add_argument("--align", type=Path, default=None, metavar="MAP_DIR",
                   help="embed the query with the map's new model and map it into the store's space")
    add_precision_option(p, "the store's")
    p.add_argument("--json", action="store_true", help="machine-readable output")
