"""`--engine local|ray` and its options, shared by `offshelf embed` and `offshelf index build`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from offshelf.cli.common import positive_int
from offshelf.errors import OffshelfError


def add_engine_options(parser: argparse.ArgumentParser, counts: dict[str, str]) -> None:
    """`--engine`, `--address` and the command's Ray-only counts (`{"actors": help}`)."""
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: this process (default); ray: Ray (docs/distributed.md)")
    parser.add_argument("--address", default=None,
                        help="with --engine ray: join the Ray cluster at ADDR (default: start a local instance)")
    for name, help_text in counts.items():
        parser.add_argument(f"--{name}", type=positive_int, default=None, help=f"with --engine ray: {help_text}")


def check_engine_options(args: argparse.Namespace, *, ray_only: Sequence[str], local_only: Sequence[str]) -> None:
    """OffshelfError (exit 2) for an option the chosen engine does not take."""
    wrong = ray_only if args.engine == "local" else local_only
    given = [f"--{name.replace('_', '-')}" for name in wrong if getattr(args, name) is not None]
    if given:
        raise OffshelfError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to --engine "
                            f"{args.engine}")
