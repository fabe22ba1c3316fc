"""`VectorIndex`: what every kind shares — preprocessing, id bookkeeping, tombstones, re-ranking, locking, saving.

Every kind stores its entries at consecutive *positions* in one FAISS index (flat, HNSW, IVF-PQ or binary) that
only ever grows; `_ids[pos]` is the stored item's int64 id and `_alive[pos]` whether it is still searchable.
Removing an id clears its `_alive` bit (a tombstone) and searches skip dead positions through a FAISS
`IDSelectorBitmap`; re-adding an id tombstones the old entry and appends the new one. Tombstoned entries keep
their memory until the index is rebuilt (`build_index` / `build_store_index` compact).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, ClassVar

import faiss
import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer

from offshelf._version import __version__
from offshelf.errors import OffshelfError
from offshelf.index._rwlock import RWLock
from offshelf.io import atomic_write, atomic_write_json, exclusive_lock, remove_stale_tmp_files
from offshelf.io.bundles import arrays_from_file
from offshelf.store.identity import check_identity
from offshelf.store.streaming import CHUNK_ROWS, StoreVectors
from offshelf.transforms import pipeline_from_bundle, pipeline_to_bundle

FORMAT = 1
MANIFEST = "index.json"
LOCK_FILE = ".lock"
TRAIN_SAMPLE = 100_000  # vectors used to fit PCA, ITQ and the IVF/PQ quantizers
RERANK_CHUNK = 1 << 22  # floats gathered at once while re-ranking
ADD_CHUNK = CHUNK_ROWS  # vectors transformed and added at once by build_index
DATA_FILES = ("faiss", "arrays")  # saved as {name}-{token}.{ext}, named by the manifest
_EXT = {"faiss": "index", "arrays": "npz"}
_KINDS: dict[str, type[VectorIndex]] = {}


def as_matrix(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Rows as a C-contiguous float32 matrix of width `dim`; OffshelfError otherwise."""
    x = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise OffshelfError(f"vectors have shape {x.shape}, the index takes (n, {dim})")
    if not np.isfinite(x).all():
        raise OffshelfError("vectors contain NaN or infinity")
    return x


def as_ids(ids: np.ndarray, n: int | None = None) -> np.ndarray:
    """Non-negative int64 ids; with `n`, exactly n distinct ones (one per vector)."""
    out = np.asarray(ids, dtype=np.int64).reshape(-1)
    if (out < 0).any():
        raise OffshelfError("ids must be non-negative (-1 marks missing results)")
    if n is not None and (len(out) != n or len(np.unique(out)) != n):
        raise OffshelfError(f"need {n} distinct ids, one per vector; got {len(out)} ({len(np.unique(out))} distinct)")
    return out


def digests(vectors: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint of each row's exact float32 bytes: tells whether a stored vector changed."""
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    raw = b"".join(hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in rows)
    return np.frombuffer(raw, dtype=np.int64).copy()


class _Sink:
    """Counts bytes: a FAISS writer callback that can pass them on to a file; or the size and sha256 of a file."""

    def __init__(self) -> None:
        self.size, self.sha256, self._handle = 0, "", None

    def to(self, handle: Any) -> _Sink:
        self._handle = handle
        return self

    def __call__(self, block: bytes) -> int:
        self.size += len(block)
        if self._handle is not None:
            self._handle.write(block)
        return len(block)

    def hash_handle(self, handle: Any) -> _Sink:
        """Size and sha256 of an open file's bytes, read in blocks; leaves it at its start."""
        digest, self.size = hashlib.sha256(), 0
        handle.seek(0)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            self.size += len(block)
        handle.seek(0)
        self.sha256 = digest.hexdigest()
        return self

    def hash_file(self, path: Path) -> _Sink:
        with open(path, "rb") as handle:
            return self.hash_handle(handle)


def _projection(pipeline: Pipeline) -> tuple[np.ndarray, np.ndarray] | None:
    """The fitted PCA step as float32 (mean, matrix), None without one.

    `transform` applies the pipeline with these arrays and `faiss.normalize_L2` instead of calling sklearn:
    sklearn's input validation costs about 0.5 ms per step and call, more than an HNSW search of one query.
    """
    pca = pipeline.named_steps.get("pca")
    if pca is None:
        return None
    matrix = pca.components_.T
    if pca.whiten:  # as sklearn does: divide by the component's standard deviation (floored at eps)
        scale = np.sqrt(pca.explained_variance_)
        matrix = matrix / np.maximum(scale, np.finfo(scale.dtype).eps)
    return pca.mean_.astype(np.float32), np.ascontiguousarray(matrix, dtype=np.float32)


def _pipeline(pca: int | None, whiten: bool) -> Pipeline:
    """L2 -> [PCA(pca, whiten) -> L2]: cosine similarity becomes an inner product, before and after PCA."""
    steps: list[tuple[str, Any]] = [("l2", Normalizer())]
    if pca is not None or whiten:
        steps += [("pca", PCA(n_components=pca, whiten=whiten, random_state=0)), ("l2_pca", Normalizer())]
    return Pipeline(steps)


@contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """One process at a time may write an index directory."""
    with exclusive_lock(directory / LOCK_FILE, f"index {directory}"):
        yield


class VectorIndex:
    """Approximate (or exact) cosine search over int64-identified vectors; one FAISS index underneath.

    Thread safety: `search`, `transform`, `ids`, `ntotal`, `bytes_per_vector` and `save` may run concurrently
    from any number of threads; `add`, `remove` and `set_params` take an exclusive lock, so they wait for
    running searches and searches started meanwhile wait for them. A search therefore sees the index either
    entirely before or entirely after each `add`/`remove`. `train` is not thread-safe (call it once, first).
    """

    kind: ClassVar[str]
    build_defaults: ClassVar[dict[str, Any]] = {}
    search_defaults: ClassVar[dict[str, Any]] = {}
    knob: ClassVar[str | None] = None  # the search-time parameter `tune` raises
    reranks: ClassVar[bool] = False  # a `rerank` > 0 at build time keeps float vectors to re-score candidates
    learns: ClassVar[bool] = True  # False: the FAISS index learns nothing from training vectors (flat, HNSW)
    _write_faiss: ClassVar[Callable[[Any, Any], None]] = staticmethod(faiss.write_index)
    _read_faiss: ClassVar[Callable[[Any], Any]] = staticmethod(faiss.read_index)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _KINDS[cls.kind] = cls

    def __init__(self, dim: int, *, pca: int | None = None, whiten: bool = False,
                 identity: dict[str, Any] | None = None, **params: Any) -> None:
        unknown = set(params) - set(self.build_defaults) - set(self.search_defaults)
        if unknown:
            known = sorted({*self.build_defaults, *self.search_defaults})
            raise OffshelfError(f"unknown {self.kind} parameter(s) {sorted(unknown)}; known: {known}")
        self.dim, self.pca, self.whiten, self.identity = dim, pca, bool(whiten), identity
        self.d = dim  # the working (index) dimension: PCA's output once trained
        self.pipeline = _pipeline(pca, whiten)
        self._projection: tuple[np.ndarray, np.ndarray] | None = None
        self._params: dict[str, Any] = {**self.build_defaults, **self.search_defaults, **params}
        self._faiss: Any = None
        self._ids = np.empty(0, np.int64)
        self._alive = np.empty(0, bool)
        self._digests = np.empty(0, np.int64)
        self._floats: np.ndarray | None = None  # the kept rows of `_floats_buffer`, which may have room for more
        self._floats_buffer = np.empty((0, 0), np.float32)
        self._bitmap: np.ndarray | None = None
        self._selector: faiss.IDSelectorBitmap | None = None
        self._lock = RWLock()
        self.store_seq: int | None = None  # the last store commit the index covers (see store_index)

    # -- kind-specific hooks ---------------------------------------------------------------------
    def _resolve(self, params: dict[str, Any], n: int) -> dict[str, Any]:
        """Fill automatic (None) parameters for `n` training vectors of dim `self.d`; validate."""
        return params

    def _new_faiss(self, x: np.ndarray) -> Any:
        """A trained, empty FAISS index for working-space vectors like `x`."""
        raise NotImplementedError

    def _encode(self, x: np.ndarray) -> np.ndarray:
        """What the FAISS index stores for working-space vectors `x`."""
        return x

    def _search_codes(self, x: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, positions) of the `depth` best live entries for each row of `x`."""
        raise NotImplementedError

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what `_state_arrays` saved."""

    def _knob_values(self) -> list[int]:
        """Values of `knob` for `tune` to try, cheapest first."""
        return []

    def _larger_params(self) -> dict[str, Any] | None:
        """Build parameters to rebuild with when no knob value reaches a target (None: nothing larger)."""
        return None

    # -- building --------------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, Any]:
        """Every parameter (build and search), JSON-ready; `build_index(..., **params)` rebuilds alike."""
        return {"pca": self.pca, "whiten": self.whiten, **self._params}

    @property
    def is_trained(self) -> bool:
        return self._faiss is not None

    def train(self, vectors: np.ndarray | StoreVectors) -> VectorIndex:
        """Fit the preprocessing and the quantizers on (a sample of) `vectors`; does not add them.

        Only the sample is read (`vectors` may be a `StoreVectors`); a kind that learns nothing from the data,
        without PCA, reads just the first rows."""
        if not isinstance(vectors, StoreVectors):
            vectors = np.atleast_2d(np.asarray(vectors))
        n = len(vectors)
        if not self.learns and self.pca is None and not self.whiten:
            rows: Any = slice(0, min(n, 1))
        elif n > TRAIN_SAMPLE:
            rows = np.sort(np.random.default_rng(0).choice(n, TRAIN_SAMPLE, replace=False))
        else:
            rows = slice(0, n)
        x = as_matrix(vectors[rows], self.dim)
        if self.pca is not None and not 0 < self.pca <= min(x.shape):
            raise OffshelfError(f"pca must be between 1 and min(n, dim) = {min(x.shape)}, got {self.pca}")
        self._projection = _projection(self.pipeline.fit(x))
        working = self._working(x)
        del x  # the sample in the input space is not needed any more: one copy fewer while the quantizers train
        self.d = working.shape[1]
        self._params = self._resolve(dict(self._params), n)
        self._check_search_params(self._params)
        self._faiss = self._new_faiss(working)
        if self.reranks and self._params["rerank"] > 0:
            self._floats = self._floats_buffer = np.empty((0, self.d), np.float32)
        return self

    def set_params(self, **params: Any) -> VectorIndex:
        """Change search-time parameters (e.g. efSearch, nprobe, rerank)."""
        unknown = set(params) - set(self.search_defaults)
        if unknown:
            raise OffshelfError(f"{sorted(unknown)} are not search-time parameters of {self.kind} "
                                f"(those are {sorted(self.search_defaults)}); rebuild to change them")
        self._check_search_params(params)
        if params.get("rerank", 0) > 0 and self._floats is None:
            raise OffshelfError(f"this {self.kind} index keeps no float vectors to re-rank with; "
                                "rebuild it with rerank > 0")
        with self._lock.write():
            self._params.update(params)
        return self

    def _check_search_params(self, params: dict[str, Any]) -> None:
        for name in set(params) & set(self.search_defaults):
            value, least = params[name], 0 if name == "rerank" else 1
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise OffshelfError(f"{self.kind} {name} must be an integer >= {least}, got {value!r}")

    # -- using -----------------------------------------------------------------------------------
    def _check_trained(self) -> None:
        if not self.is_trained:
            raise OffshelfError(f"the {self.kind} index is not trained; call train() (or use build_index)")

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors in the index's working space: L2-normalized, then PCA-projected and L2-normalized if `pca`."""
        self._check_trained()
        return self._working(vectors)

    def _working(self, vectors: np.ndarray) -> np.ndarray:
        """`transform` once the pipeline is fitted (the quantizers need not be)."""
        x = np.array(as_matrix(vectors, self.dim), dtype=np.float32, copy=True)  # normalized in place
        faiss.normalize_L2(x)
        if self._projection is not None:
            mean, matrix = self._projection
            x = np.ascontiguousarray((x - mean) @ matrix, dtype=np.float32)
            faiss.normalize_L2(x)
        return x

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors under `ids` (distinct); an id already present is replaced by its new vector."""
        raw = as_matrix(vectors, self.dim)
        ids = as_ids(ids, len(raw))
        x = self.transform(raw)
        codes, prints = self._encode(x), digests(raw)
        with self._lock.write():
            self._tombstone(ids)
            self._faiss.add(codes)
            self._ids = np.concatenate([self._ids, ids])
            self._alive = np.concatenate([self._alive, np.ones(len(ids), bool)])
            self._digests = np.concatenate([self._digests, prints])
            if self._floats is not None:
                self._append_floats(x)
            self._refresh_selector()

    def merge_from(self, other: VectorIndex) -> None:
        """Append `other`'s entries, moving its FAISS codes here (IVF inverted lists, flat codes): `other` must be
        a copy of this index as trained, then filled separately (one part of a sharded build); it is left empty.
        An id present in both keeps `other`'s entry, as a later `add` would."""
        if type(other) is not type(self) or other.d != self.d or other.params != self.params:
            raise OffshelfError(f"cannot merge a {other.kind} index with other parameters into this {self.kind} index")
        if not hasattr(self._faiss, "merge_from") or isinstance(self._faiss, (faiss.IndexHNSW, faiss.IndexBinaryHNSW)):
            raise OffshelfError(f"FAISS cannot merge {self.kind} indexes; build them in one process")
        with self._lock.write(), other._lock.write():
            self._tombstone(other._ids[other._alive])
            # IVF lists hold positions and take `other`'s shifted past ours; flat codes are positional already
            self._faiss.merge_from(other._faiss, len(self._ids) if isinstance(self._faiss, faiss.IndexIVF) else 0)
            self._ids = np.concatenate([self._ids, other._ids])
            self._alive = np.concatenate([self._alive, other._alive])
            self._digests = np.concatenate([self._digests, other._digests])
            if self._floats is not None and other._floats is not None:
                self._append_floats(other._floats)
            self._refresh_selector()

    def reserve(self, n: int) -> None:
        """Make room for `n` more entries before adding them in chunks, so that memory grows once, not by
        doubling (a doubling vector briefly holds the old and the new copy: 1.5x to 2x the final size)."""
        self._check_trained()
        with self._lock.write():
            self._reserve_codes(len(self._ids) + n)
            if self._floats is not None:
                self._grow_floats(len(self._floats) + n)

    def _reserve_codes(self, total: int) -> None:
        """Let the FAISS index hold `total` entries without reallocating (kinds storing raw vectors)."""

    def _grow_floats(self, capacity: int) -> None:
        assert self._floats is not None
        if len(self._floats_buffer) < capacity:
            buffer = np.empty((capacity, self.d), np.float32)
            buffer[: len(self._floats)] = self._floats
            self._floats_buffer = buffer
            self._floats = buffer[: len(self._floats)]

    def _append_floats(self, x: np.ndarray) -> None:
        """Keep `x` after the kept float vectors, in the reserved room (growing by half when there is none)."""
        assert self._floats is not None
        filled = len(self._floats)
        if not filled and not len(self._floats_buffer):
            self._floats = self._floats_buffer = x  # this call's own copy: no second one for a one-shot add
            return
        if len(self._floats_buffer) < filled + len(x):
            self._grow_floats(max(filled + len(x), filled + filled // 2))
        self._floats_buffer[filled : filled + len(x)] = x
        self._floats = self._floats_buffer[: filled + len(x)]

    def remove(self, ids: np.ndarray) -> int:
        """Make `ids` unsearchable (tombstones); returns how many were present."""
        ids = as_ids(ids)
        with self._lock.write():
            removed = self._tombstone(ids)
            self._refresh_selector()
        return removed

    def _tombstone(self, ids: np.ndarray) -> int:
        hit = self._alive & np.isin(self._ids, ids)
        self._alive[hit] = False
        return int(hit.sum())

    def _refresh_selector(self) -> None:
        if self._alive.all():
            self._bitmap = self._selector = None
        else:
            self._bitmap = np.packbits(self._alive, bitorder="little")
            self._selector = faiss.IDSelectorBitmap(len(self._bitmap), faiss.swig_ptr(self._bitmap))

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """`(scores float32 (nq, k), ids int64 (nq, k))`, best first; missing results are id -1, score -inf.

        Scores are cosine similarities in the working space (exact after re-ranking; PQ-approximated for
        ivfpq; for binary without re-ranking 1 - 2 * hamming / nbits, the cosine of the sign codes).
        """
        if k < 1:
            raise OffshelfError(f"k must be at least 1, got {k}")
        x = self.transform(queries)
        with self._lock.read():
            if not len(self._ids):
                return np.full((len(x), k), -np.inf, np.float32), np.full((len(x), k), -1, np.int64)
            rerank = self._params.get("rerank", 0) if self._floats is not None else 0
            scores, pos = self._search_codes(x, max(k, rerank))
            if rerank:
                scores, pos = self._rerank(x, pos, k)
            ids = np.where(pos >= 0, self._ids[pos], -1)
        return np.where(pos >= 0, scores, -np.inf).astype(np.float32), ids

    def _rerank(self, x: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Re-score candidate positions with the kept float vectors (exact inner products); keep the best k."""
        assert self._floats is not None
        scores = np.empty(pos.shape, np.float32)
        rows = max(1, RERANK_CHUNK // (pos.shape[1] * self.d))
        for start in range(0, len(x), rows):
            block = pos[start : start + rows]
            candidates = self._floats[np.maximum(block, 0)]
            exact = np.einsum("qkd,qd->qk", candidates, x[start : start + rows])
            scores[start : start + rows] = np.where(block >= 0, exact, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(pos, order, 1)

    @property
    def ntotal(self) -> int:
        """Number of searchable (live) entries."""
        with self._lock.read():
            return int(np.count_nonzero(self._alive))

    @property
    def ntombstones(self) -> int:
        """Removed or replaced entries still held in memory until a rebuild."""
        with self._lock.read():
            return len(self._alive) - int(np.count_nonzero(self._alive))

    def ids(self) -> np.ndarray:
        """The ids of the live entries, in insertion order."""
        with self._lock.read():
            return self._ids[self._alive]

    def _live_digests(self) -> dict[int, int]:
        with self._lock.read():
            return dict(zip(self._ids[self._alive].tolist(), self._digests[self._alive].tolist()))

    @property
    def bytes_per_vector(self) -> float:
        """Memory per stored entry, measured: the serialized FAISS index (codes, graph links, IVF ids and
        centroids) plus the float vectors kept for re-ranking, over the entries (tombstones included)."""
        with self._lock.read():
            if not len(self._ids):
                return 0.0
            floats = 0 if self._floats is None else self._floats.nbytes
            counted = _Sink()
            self._write_faiss(self._faiss, faiss.PyCallbackIOWriter(counted))
            return (counted.size + floats) / len(self._ids)

    def check_identity(self, identity: dict[str, Any], where: str) -> None:
        """OffshelfError unless `identity` (model, layer, pool, augment, dim) is the one the index was built for."""
        check_identity(identity, self.identity, f"the index holds features with {{expected}} but {where} has "
                       "{found}; rebuild it with `offshelf index build`", OffshelfError)

    # -- saving ----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Save atomically: a crash at any point leaves the previously saved index loadable and intact.

        Data files get fresh names and are each written with write-fsync-rename; the manifest (`index.json`),
        which names them, is replaced last, and only then are the previous files deleted.
        """
        target = Path(directory)
        with directory_lock(target):
            self._write(target)
        return target

    def _write(self, target: Path) -> None:
        """`save` without taking the directory lock (the caller holds it). The data files are streamed to disk
        (FAISS's writer, `np.savez` member by member): saving holds no copy of the index's bytes."""
        self._check_trained()
        token = secrets.token_hex(8)
        files = {key: f"{key}-{token}.{_EXT[key]}" for key in DATA_FILES}
        with self._lock.read():
            manifest, arrays = self._snapshot()
            written = {key: _Sink() for key in DATA_FILES}

            def writer(key: str) -> Callable[[Path], None]:
                def write(tmp: Path) -> None:
                    with open(tmp, "wb") as handle:
                        if key == "faiss":
                            self._write_faiss(self._faiss, faiss.PyCallbackIOWriter(written[key].to(handle)))
                        else:
                            np.savez(handle, **arrays)
                    written[key].hash_file(tmp)
                return write

            for key in DATA_FILES:
                atomic_write(target / files[key], writer(key))
        manifest["files"] = {key: {"name": files[key], "bytes": written[key].size,
                                   "sha256": written[key].sha256} for key in DATA_FILES}
        atomic_write_json(target / MANIFEST, manifest)
        for key in DATA_FILES:
            for old in target.glob(f"{key}-*.{_EXT[key]}"):
                if old.name != files[key]:
                    old.unlink(missing_ok=True)
        remove_stale_tmp_files(target)

    def _snapshot(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The manifest (without file names) and the arrays to save (the caller holds the read lock)."""
        steps, arrays = pipeline_to_bundle(self.pipeline, prefix="pipeline")
        arrays |= {"ids": self._ids, "alive": self._alive, "digests": self._digests, **self._state_arrays()}
        if self._floats is not None:
            arrays["floats"] = self._floats
        manifest = {
            "format": FORMAT, "offshelf_version": __version__, "kind": self.kind, "dim": self.dim,
            "index_dim": self.d, "pca": self.pca, "whiten": self.whiten, "params": dict(self._params),
            "identity": self.identity, "pipeline": steps, "ntotal": int(np.count_nonzero(self._alive)),
            "store_seq": self.store_seq,
        }
        return manifest, arrays

    @staticmethod
    def load(directory: str | Path) -> VectorIndex:
        """Load what `save` wrote (no pickle: FAISS's own format, .npz without objects, JSON)."""
        source = Path(directory)
        for _ in range(3):
            manifest = read_manifest(source)
            try:
                return _KINDS[manifest["kind"]]._from_files(source, manifest)
            except FileNotFoundError:
                continue  # a concurrent save replaced the files this manifest named: read the new one
            except (KeyError, TypeError, ValueError, RuntimeError, zipfile.BadZipFile) as exc:
                # a damaged or hand-edited manifest or data file (FAISS reports corrupt data as RuntimeError)
                raise OffshelfError(f"damaged index at {source}: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}; rebuild it with "
                                    "`offshelf index build`") from None
        raise OffshelfError(f"index at {source} keeps changing while being read; try again")

    @classmethod
    def _from_files(cls, source: Path, manifest: dict[str, Any]) -> VectorIndex:
        with ExitStack() as files:
            handles = {}
            for key in DATA_FILES:  # open both first: a concurrent save may delete them once replaced
                entry = manifest["files"][key]
                if Path(entry["name"]).name != entry["name"]:
                    raise OffshelfError(f"index manifest {source / MANIFEST} names a file outside its folder")
                handles[key] = files.enter_context(open(source / entry["name"], "rb"))
            for key in DATA_FILES:
                entry, checked = manifest["files"][key], _Sink().hash_handle(handles[key])
                expected = entry.get("sha256")  # absent in indexes saved before checksums were recorded
                if checked.size != entry["bytes"] or (expected and checked.sha256 != expected):
                    raise OffshelfError(f"index file {source / entry['name']} is truncated or corrupt")
            arrays = arrays_from_file(handles["arrays"])
            faiss_index = cls._read_faiss(faiss.PyCallbackIOReader(handles["faiss"].read))
        index = cls(manifest["dim"], pca=manifest["pca"], whiten=manifest["whiten"],
                    identity=manifest["identity"], **manifest["params"])
        index._check_search_params(index._params)
        index.d = manifest["index_dim"]
        index.pipeline = pipeline_from_bundle(manifest["pipeline"], arrays, prefix="pipeline")
        index._projection = _projection(index.pipeline)
        index._faiss = faiss_index
        index._ids, index._alive, index._digests = arrays["ids"], arrays["alive"].copy(), arrays["digests"]
        index._floats = arrays.get("floats")
        if index._floats is not None:
            index._floats_buffer = index._floats
        index._load_state(arrays)
        index._refresh_selector()
        seq = manifest.get("store_seq")
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
            raise OffshelfError(f"index manifest {source / MANIFEST}: store_seq must be an integer, got {seq!r}")
        index.store_seq = seq
        return index


def read_manifest(source: Path) -> dict[str, Any]:
    """The manifest of a saved index; OffshelfError if there is none or it is not one this version reads."""
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError:
        raise OffshelfError(f"no index at {source} (missing {MANIFEST})") from None
    except ValueError as exc:
        raise OffshelfError(f"unreadable index manifest {source / MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict):
        raise OffshelfError(f"index manifest {source / MANIFEST} is not a JSON object")
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("kind"), str) or manifest["kind"] not in _KINDS:
        raise OffshelfError(f"{source} holds an index this version cannot read "
                            f"(format {manifest.get('format')}, kind {manifest.get('kind')!r})")
    return manifest


def build_index(vectors: np.ndarray | StoreVectors, ids: np.ndarray, kind: str = "flat", *, pca: int | None = None,
                whiten: bool = False, identity: dict[str, Any] | None = None, **params: Any) -> VectorIndex:
    """Train an index of `kind` on `vectors` and add them under `ids` (see each kind for `params`).

    `vectors` is a matrix or a `StoreVectors` (see `offshelf.store.streaming`): training reads a sample, and
    the vectors are added `ADD_CHUNK` rows at a time into room reserved up front, so the build holds the index
    plus one chunk, never a second copy of the vectors."""
    index = train_index(vectors, kind, pca=pca, whiten=whiten, identity=identity, **params)
    index.reserve(len(vectors))
    add_rows(index, vectors, as_ids(ids, len(vectors)))
    return index


def add_rows(index: VectorIndex, vectors: np.ndarray | StoreVectors, ids: np.ndarray,
             rows: np.ndarray | None = None) -> None:
    """Add `vectors[rows]` under `ids[rows]` (every row if `rows` is None), `ADD_CHUNK` rows at a time."""
    total = len(vectors) if rows is None else len(rows)
    for start in range(0, total, ADD_CHUNK):
        # a slice of a matrix is a view, so adding every row makes no copy of the chunk
        chunk = slice(start, start + ADD_CHUNK) if rows is None else rows[start : start + ADD_CHUNK]
        index.add(vectors[chunk], ids[chunk])


def train_index(vectors: np.ndarray | StoreVectors, kind: str = "flat", *, pca: int | None = None,
                whiten: bool = False, identity: dict[str, Any] | None = None, **params: Any) -> VectorIndex:
    """An index of `kind` trained on (a sample of) `vectors`, still empty: `build_index` without the adding."""
    if kind not in _KINDS:
        raise OffshelfError(f"unknown index kind {kind!r}; choose from {', '.join(_KINDS)}")
    if not isinstance(vectors, StoreVectors):
        vectors = as_matrix(vectors)
    if not len(vectors):
        raise OffshelfError("cannot build an index from 0 vectors")
    return _KINDS[kind](vectors.shape[1], pca=pca, whiten=whiten, identity=identity, **params).train(vectors)
