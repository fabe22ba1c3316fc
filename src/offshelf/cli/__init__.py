"""The `offshelf` command: a thin layer over the Python API, one module per command group.

Exit codes: 0 success, 2 bad usage or input, 1 internal error; errors go to stderr as one line.
The contract (command names, options, JSON shapes) is in docs/architecture.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from offshelf._version import __version__
from offshelf.cli import dedup, demo, embed, evaluate, index, maintenance, probe, search, serve, store, upgrade
from offshelf.cli.common import EXIT_INTERNAL, EXIT_USAGE
from offshelf.errors import OffshelfError
from offshelf.images import ImageDecodeError

COMMAND_GROUPS = (embed, search, index, upgrade, store, maintenance, probe, evaluate, dedup, demo, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offshelf", description="Deep image features off the shelf.")
    parser.add_argument("--version", action="version", version=f"offshelf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
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
