"""`offshelf serve`: the HTTP API, its search page and metrics over one store (see docs/serve.md)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import threading
import time
import urllib.request
import webbrowser
from pathlib import Path
from typing import Any

from offshelf.cli.common import (
    EXIT_OK,
    Subparsers,
    add_command,
    add_precision_option,
    non_negative_float,
    positive_int,
)
from offshelf.errors import OffshelfError
from offshelf.images import DEFAULT_MAX_PIXELS


def port_number(text: str) -> int:
    """A TCP port to listen on, 1-65535 (an argparse type)."""
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {value}")
    return value


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _open_when_up(url: str, timeout: float = 120.0) -> None:
    """Open the page in the user's browser once /healthz answers (in a background thread)."""
    def wait_and_open() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "healthz", timeout=1):
                    webbrowser.open(url)
                    return
            except OSError:
                time.sleep(0.2)

    threading.Thread(target=wait_and_open, daemon=True, name="offshelf-open-page").start()


def run_server(args: argparse.Namespace, store: Path, *, open_page: bool = False) -> int:
    """Serve `store` with the options of `add_serve_options` (blocks until interrupted)."""
    try:
        from offshelf.serve import ServeConfig, serve
    except ModuleNotFoundError as exc:  # the serve extra is optional
        raise OffshelfError(f"offshelf serve needs {exc.name}: pip install 'offshelf[serve]'") from None

    config = ServeConfig(store=store, probe=args.probe, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                         workers=args.workers, threads=args.threads, max_upload_bytes=args.max_upload_mb * 2**20,
                         max_pixels=args.max_pixels, cors_origins=tuple(args.cors_origin or ()),
                         precision=args.precision)
    if not _is_loopback(args.host) and config.api_key is None:
        print(f"offshelf: warning: serving on {args.host} with writes open to anyone who can reach it; "
              "set OFFSHELF_API_KEY to guard them", file=sys.stderr)

    def announce(service: Any, url: str) -> None:
        info = {"url": url, "store": str(service.store.root), "items": len(service), "model": service.store.config.model,
                "index": service.searcher.index.kind, "docs": url + "docs", "writes_need_key": config.api_key is not None}
        if args.json:
            print(json.dumps(info), flush=True)
        else:
            print(f"offshelf: serving {info['items']} items of {info['store']} at {url} (API docs: {url}docs); "
                  "Ctrl-C stops", flush=True)
        if open_page:
            _open_when_up(url)

    serve(config, host=args.host, port=args.port, on_ready=announce)
    return EXIT_OK


def add_serve_options(p: argparse.ArgumentParser, *, json_option: bool = True) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--probe", type=Path, default=None, metavar="PROBE_DIR", help="a probe for /v1/classify")
    p.add_argument("--max-batch", type=positive_int, default=16, help="images per model batch at most (1: no batching)")
    p.add_argument("--max-wait-ms", type=non_negative_float, default=5.0, help="how long a batch waits to fill at most")
    p.add_argument("--workers", type=positive_int, default=None, help="decoding threads (default: the cores)")
    p.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime threads (default: the cores)")
    add_precision_option(p, "the store's")
    p.add_argument("--max-upload-mb", type=positive_int, default=20, help="largest upload accepted (413 above)")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help="decompression-bomb limit")
    p.add_argument("--cors-origin", action="append", metavar="ORIGIN", help="allow this origin (repeatable; none by default)")
    if json_option:
        p.add_argument("--json", action="store_true", help="print the address and what is served as one JSON line")


def cmd_serve(args: argparse.Namespace) -> int:
    return run_server(args, args.store)


def register(sub: Subparsers) -> None:
    p = add_command(sub, "serve", cmd_serve, "Serve a store over HTTP: search API, search page, metrics.")
    p.add_argument("--store", required=True, type=Path)
    add_serve_options(p)
