"""What every command shares: exit codes, JSON output, argument types, and how a subcommand is added."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]
Subparsers = Any  # argparse's private _SubParsersAction


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (an argparse type)."""
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def add_command(sub: Subparsers, name: str, handler: Handler | None, help_text: str) -> argparse.ArgumentParser:
    """A subcommand `name` run by `handler` (None for a group with its own subcommands)."""
    parser = sub.add_parser(name, help=help_text, description=help_text)
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_precision_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--precision", default=None, choices=("fp32", "int8"),
                        help=f"fp32 or int8 model (docs/int8.md; default: {default})")


def add_force_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--force", action="store_true", help=f"replace an existing {what} at --out")


def add_labels_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--labels", type=Path, help="CSV with columns path,label (several rows for multi-label)")
    group.add_argument("--labels-from-folders", action="store_true", help="label = name of the item's folder")
