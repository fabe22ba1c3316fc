"""Kill points: run a real `offshelf` command in its own process and SIGKILL it at its Nth file-system write.

Each command runs in a fork of one process that imported offshelf once (a fresh interpreter would spend about 3 s on
imports per command). The fork installs a Python audit hook (PEP 578) that counts every write it makes (opening a
file for writing, creating a temporary file, rename/replace, remove, mkdir, rmdir, rmtree) and sends itself SIGKILL
just before the Nth. A first, complete run of the same command counts its writes; a seed picks N among them. Writes
made inside C++ (Parquet pages, FAISS) are not counted, but the temporary file they go to and its rename are, so
every step of an atomic write (created, filled, fsynced, renamed) is a kill point.

A `KillCase` says how to prepare a work folder, which command to run, and how to verify the folder after the
kill and after a complete re-run. Adding a command (e.g. `compact`) is one `KillCase` in `kill_cases`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offshelf.cli import main

FORKER = r"""
import json, os, signal, sys, traceback
from offshelf.cli import main  # imported once: every command runs in a fork of this process, hook installed after
_EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.truncate", "shutil.rmtree", "shutil.move", "os.link"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _run(request):
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, name in ((1, "out"), (2, "err")):
        os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    at, log, seen = request["kill_at"], request["log"], []
    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int) or path == log or not (any(c in mode for c in "wax+") if mode else flags & _WRITE_FLAGS):
                return
        elif event not in _EVENTS:
            return
        seen.append(f"{event} {args[0]}")
        if len(seen) == at:
            os.kill(os.getpid(), signal.SIGKILL)
    sys.addaudithook(hook)
    try:
        code = main(request["argv"])
    except SystemExit as exc:  # argparse: usage errors and --help; None is 0, a message is 1, as sys.exit does
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    if log:
        with open(log, "w") as handle:
            handle.write("\n".join(seen))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # not sys.exit: finalizing a fork can hang on a lock of a thread that did not survive the fork
for line in iter(sys.stdin.readline, ""):
    pid = os.fork()
    if pid == 0:
        try:
            _run(json.loads(line))
        finally:  # _run ends in os._exit; anything it raised is printed and exits 1, as a crashed command would
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""
KILLED = -9
TIMEOUT = 600


@functools.cache
def _forker() -> subprocess.Popen[str]:
    """A process that has imported offshelf and forks one child per command (about 3 s of imports saved each)."""
    process = subprocess.Popen([sys.executable, "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    atexit.register(process.kill)
    return process


def run_offshelf(argv: list[str], kill_at: int = 0, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `offshelf ARGV` in its own process (a fork of one that imported offshelf), SIGKILLed before its
    `kill_at`-th write (0: never); `log` gets the writes."""
    forker = _forker()
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        request = {"argv": argv, "kill_at": kill_at, "log": str(log) if log else None, "out": str(out),
                   "err": str(err), "env": dict(os.environ), "cwd": os.getcwd()}
        forker.stdin.write(json.dumps(request) + "\n")
        forker.stdin.flush()
        if not select.select([forker.stdout], [], [], TIMEOUT)[0]:
            os.killpg(forker.pid, signal.SIGKILL)  # the forker and the command it runs
            _forker.cache_clear()
            raise subprocess.TimeoutExpired(argv, TIMEOUT)
        line = forker.stdout.readline()
        assert line, f"the forker exited with {forker.wait()}"
        return subprocess.CompletedProcess(argv, int(line), out.read_text(), err.read_text())


def run_offshelf_here(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `offshelf ARGV` through `main` in this process (what `python -m offshelf.cli` exits with and prints),
    for runs that are not killed: no fork, no start-up cost."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage errors and --help exit before a handler runs
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)  # as sys.exit maps it
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@dataclass(frozen=True)
class KillCase:
    """A command to kill, the folder it works in, and what must hold after the kill and after a re-run."""

    name: str
    prepare: Callable[[Path], None]  # make the starting state in an empty work folder
    argv: Callable[[Path], list[str]]  # the command (also the re-run)
    verify: Callable[[Path, bool], None]  # (work folder, complete?) -> AssertionError naming what is wrong
    rerun_args: Callable[[], list[str]] = field(default=lambda: [])  # extra options of the re-run


def count_writes(case: KillCase, work: Path) -> list[str]:
    """The writes of a complete run of `case` (prepared in `work`); checks the run and its verification."""
    case.prepare(work)
    log = work / "writes.log"
    result = run_offshelf(case.argv(work), log=log)
    assert result.returncode == 0, f"{case.name}: {result.stderr[-2000:]}"
    case.verify(work, True)
    return log.read_text().splitlines()


def run_kill_point(case: KillCase, work: Path, kill_at: int, writes: list[str]) -> dict[str, Any]:
    """Prepare `work`, kill the command before write `kill_at`, verify, re-run to completion, verify again."""
    case.prepare(work)
    killed = run_offshelf(case.argv(work), kill_at=kill_at)
    assert killed.returncode in (KILLED, 0), f"{case.name} @ {kill_at}: {killed.stderr[-2000:]}"
    case.verify(work, False)
    rerun = run_offshelf_here([*case.argv(work), *case.rerun_args()])  # not killed: no start-up cost
    assert rerun.returncode == 0, f"{case.name} re-run after kill @ {kill_at}: {rerun.stderr[-2000:]}"
    case.verify(work, True)
    return {"case": case.name, "kill_at": kill_at, "of": len(writes), "killed": killed.returncode == KILLED,
            "before": writes[kill_at - 1] if 0 < kill_at <= len(writes) else None}


def seeded_kill_points(n_writes: int, seeds: list[int]) -> list[int]:
    """One kill point per seed, uniformly among the writes."""
    return [random.Random(seed).randint(1, n_writes) for seed in seeds]


# -- what must hold ---------------------------------------------------------------------------------
def shard_rows(store: Path) -> int:
    """How many embedding rows the store's shards hold (every version of every item)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in sorted((store / "shards").glob("[0-9]*.parquet")))


def assert_store_readable(store: Path) -> None:
    """A store (if it exists) opens and reads: only committed, complete files are visible."""
    from offshelf.store import FeatureStore

    if (store / "manifest.json").is_file():
        opened = FeatureStore.open(store)
        opened.vectors()
        opened.errors()


def assert_every_row_found(store: Path, k: int = 3) -> int:
    """Every stored vector, searched with `offshelf search`'s Searcher, finds its own item first; returns rows."""
    from offshelf.search import Searcher

    searcher = Searcher(store)
    ids, paths, vectors = searcher.store.vectors()
    hits = searcher.search_vectors(vectors, k=k)
    lost = [path for i, path, found in zip(ids.tolist(), paths, hits) if not found or found[0].id != i]
    assert not lost, f"{len(lost)} of {len(ids)} stored rows of {store} are not found by search, e.g. {lost[0]}"
    return len(ids)


def assert_one_row_per_image(store: Path, images: list[Path]) -> None:
    """The store holds exactly `images`, each once, and its shards hold no second row for any of them."""
    from offshelf.store import FeatureStore

    paths = FeatureStore.open(store).table().column("path").to_pylist()
    assert sorted(paths) == sorted(map(str, images)), f"{store} holds {len(paths)} items, expected {len(images)}"
    assert shard_rows(store) == len(images), f"{store} shards hold {shard_rows(store)} rows for {len(images)} images"


def index_ids(store: Path) -> set[int] | None:
    """The ids in the store's saved index (None without one); the index must load."""
    from offshelf.index import load_store_index

    index = load_store_index(store)
    return None if index is None else set(index.ids().tolist())


def store_ids(store: Path) -> set[int]:
    from offshelf.store import FeatureStore

    return set(FeatureStore.open(store).table().column("id").to_pylist())


# -- the cases --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KillData:
    """Shared, read-only inputs: images, a store of them (old model), one of the new model, a map between."""

    images: list[Path]
    old_store: Path
    new_store: Path
    map_dir: Path


def build_kill_data(root: Path, images: list[Path]) -> KillData:
    """Embed `images` with efficientnet-lite0 and -lite2 and fit a Procrustes map between them (once per root)."""
    from offshelf.extract import embed
    from offshelf.upgrade import fit_alignment, save_alignment

    old, new, map_dir = root / "old-store", root / "new-store", root / "map"
    for store, model in ((old, "efficientnet-lite0"), (new, "efficientnet-lite2")):
        if not (store / "manifest.json").is_file():
            assert embed(images, store, model=model, progress=False).failed == 0
    if not (map_dir / "meta.json").is_file():
        save_alignment(fit_alignment(old, new)[0], map_dir)
    return KillData(list(images), old, new, map_dir)


def _fresh(work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)


def _copy_store(source: Path, target: Path, with_index: bool) -> None:
    shutil.copytree(source, target, ignore=None if with_index else shutil.ignore_patterns("index"))


@functools.cache
def _help_has(command: str, option: str) -> bool:
    """Whether `offshelf COMMAND` takes `option` (e.g. `--force`, which a re-run over a partial output needs)."""
    return option in run_offshelf_here([command, "--help"]).stdout


def embed_case(data: KillData, indexed: bool = False) -> KillCase:
    """`offshelf embed` of every image, two per shard; `indexed`: into a store holding half of them and an index."""
    def prepare(work: Path) -> None:
        _fresh(work)
        if indexed:
            from offshelf.extract import embed
            from offshelf.index import build_store_index

            embed(data.images[: len(data.images) // 2], work / "store", progress=False)
            build_store_index(work / "store", "hnsw")

    def verify(work: Path, complete: bool) -> None:
        store = work / "store"
        assert_store_readable(store)
        if complete:
            assert_one_row_per_image(store, data.images)
            assert_every_row_found(store)

    return KillCase("embed" + ("-indexed" if indexed else ""), prepare,
                    lambda work: ["embed", *map(str, data.images), "--store", str(work / "store"), "--batch-size",
                                  "2", "--shard-size", "2", "--quiet", "--json"], verify)


def index_build_case(data: KillData, over: str | None = None) -> KillCase:
    """`offshelf index build --kind hnsw`; `over`: replacing a saved index of that kind (an index save)."""
    def prepare(work: Path) -> None:
        _fresh(work)
        _copy_store(data.old_store, work / "store", with_index=False)
        if over:
            from offshelf.index import build_store_index

            build_store_index(work / "store", over)

    def verify(work: Path, complete: bool) -> None:
        store = work / "store"
        indexed = index_ids(store)  # loads: the old index or the new one, never a mix
        assert indexed is None or indexed == store_ids(store), "the saved index does not hold the store's ids"
        if over:
            assert indexed is not None, "the previous index was lost"
        if complete:
            from offshelf.index.base import read_manifest

            assert read_manifest(store / "index")["kind"] == "hnsw"
            assert_every_row_found(store)

    return KillCase("index-save" if over else "index-build", prepare,
                    lambda work: ["index", "build", "--store", str(work / "store"), "--kind", "hnsw", "--json"],
                    verify)


def align_case(data: KillData) -> KillCase:
    """`offshelf align` of the new store onto the old: the map folder is absent, refused, or complete."""
    def verify(work: Path, complete: bool) -> None:
        from offshelf.errors import OffshelfError
        from offshelf.store import FeatureStore
        from offshelf.upgrade import load_alignment

        try:
            alignment = load_alignment(work / "map")
        except OffshelfError:
            assert not complete, "the re-run left no loadable map"
            return
        _, _, new_vectors = FeatureStore.open(data.new_store).vectors()
        mapped = alignment.transform(new_vectors)
        assert mapped.shape == (len(new_vectors), alignment.old_identity["dim"]) and np.isfinite(mapped).all()

    return KillCase("align", _fresh,
                    lambda work: ["align", "--old", str(data.old_store), "--new", str(data.new_store), "--out",
                                  str(work / "map"), "--json"], verify,
                    rerun_args=lambda: ["--force"] if _help_has("align", "--force") else [])


def upgrade_case(data: KillData) -> KillCase:
    """`offshelf index upgrade` of a copy of the old store (with an HNSW index) to the new model."""
    def prepare(work: Path) -> None:
        _fresh(work)
        _copy_store(data.old_store, work / "old", with_index=False)
        from offshelf.index import build_store_index

        build_store_index(work / "old", "hnsw")

    def verify(work: Path, complete: bool) -> None:
        from offshelf.store import read_upgrade_marker

        assert_store_readable(work / "old")
        assert_store_readable(work / "new")
        marker = read_upgrade_marker(work / "old")
        if marker is not None:  # switched: the new store is complete, searched through the old one's name
            assert_one_row_per_image(work / "new", data.images)
        if complete:
            assert marker is not None, "the re-run did not switch"
            assert index_ids(work / "new") == store_ids(work / "new")
            assert_every_row_found(work / "old")

    return KillCase("upgrade", prepare,
                    lambda work: ["index", "upgrade", "--store", str(work / "old"), "--align", str(data.map_dir),
                                  "--new-store", str(work / "new"), "--quiet", "--json"], verify)


def compact_case(data: KillData) -> KillCase:
    """`offshelf compact` of a store with re-embedded and removed items: old state or new, then the collection."""
    def prepare(work: Path) -> None:
        _fresh(work)
        _copy_store(data.old_store, work / "store", with_index=True)
        from offshelf.store import FeatureStore

        FeatureStore.open(work / "store").remove(paths=[str(data.images[0])])

    def verify(work: Path, complete: bool) -> None:
        store = work / "store"
        assert sorted(store_ids(store)) == sorted(store_ids(data.old_store) - store_ids_of(data.images[:1]))
        assert_every_row_found(store)
        if complete:
            assert shard_rows(store) == len(data.images) - 1, "compact left more than one row per live item"

    return KillCase("compact", prepare, lambda work: ["compact", "--store", str(work / "store"), "--json"], verify)


def store_ids_of(images: list[Path]) -> set[int]:
    from offshelf.store.feature_store import path_id

    return {path_id(str(p)) for p in images}


def kill_cases(data: KillData) -> dict[str, KillCase]:
    """Every command the kill-point tests and `benchmarks/reliability.py` kill."""
    cases = [embed_case(data), embed_case(data, indexed=True), index_build_case(data),
             index_build_case(data, over="flat"), align_case(data), upgrade_case(data), compact_case(data)]
    return {case.name: case for case in cases}


def offshelf_check(store: Path, repair: bool = False) -> dict[str, Any]:
    """`offshelf check --store STORE --json [--repair]`: its report; AssertionError unless it exits 0."""
    result = run_offshelf_here(["check", "--store", str(store), "--json", *(["--repair"] if repair else [])])
    assert result.returncode == 0, f"offshelf check {store}: exit {result.returncode}: {result.stderr[-2000:]}"
    return json.loads(result.stdout)
