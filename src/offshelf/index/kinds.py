"""The four kinds of index. Parameters use FAISS's names; None means "chosen from the data" at training.

=========  ==========================================  ==================================  ============
kind       build parameters                            search parameters (`set_params`)     tune knob
=========  ==========================================  ==================================  ============
flat       —                                           —                                    —
hnsw       M=32, efConstruction=200                    efSearch=64                          efSearch
ivfpq      nlist=4*sqrt(n) (<= n/39), m=d/4 (8 bits)   nprobe=nlist/8, rerank=0             nprobe
binary     nbits=min(d, 256), n_iter=50, hnsw=auto, M  rerank=0, efSearch=64                rerank
=========  ==========================================  ==================================  ============

`rerank` > 0 at build time keeps the working-space float vectors so that the best `rerank` candidates can be
re-scored exactly; it can then be changed (down to 0 = off) with `set_params`.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from offshelf.errors import OffshelfError
from offshelf.index.base import VectorIndex
from offshelf.index.itq import ITQ

PQ_BITS = 8
BINARY_HNSW_MIN = 200_000  # from this many vectors on, binary codes are searched through an HNSW graph
RERANK_START = 10


def _doublings(start: int, stop: int) -> list[int]:
    """start, 2*start, 4*start, ... below stop, then stop."""
    values = []
    while start < stop:
        values.append(start)
        start *= 2
    return [*values, stop]


def _largest_divisor(d: int, limit: int) -> int:
    return max(m for m in range(1, max(1, limit) + 1) if d % m == 0)


def _reserve_flat(index: Any, total: int) -> None:
    """Give a FAISS flat index's code vector the capacity for `total` rows (resizing up then back down keeps
    the capacity), so adding in chunks does not reallocate by doubling."""
    size = index.codes.size()
    index.codes.resize(max(size, total * index.code_size))
    index.codes.resize(size)


class FlatIndex(VectorIndex):
    """Exact search: inner product of L2-normalized vectors (cosine), FAISS IndexFlatIP."""

    kind = "flat"
    learns = False

    def _new_faiss(self, x: np.ndarray) -> Any:
        return faiss.IndexFlatIP(x.shape[1])

    def _reserve_codes(self, total: int) -> None:
        _reserve_flat(self._faiss, total)

    def _search_codes(self, x: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        return self._faiss.search(x, depth, params=faiss.SearchParameters(sel=self._selector))


class HNSWIndex(VectorIndex):
    """Graph search (FAISS IndexHNSWFlat, inner product). FAISS cannot delete from HNSW: removal is a tombstone."""

    kind = "hnsw"
    knob = "efSearch"
    build_defaults = {"M": 32, "efConstruction": 200}
    search_defaults = {"efSearch": 64}
    learns = False

    def _reserve_codes(self, total: int) -> None:
        _reserve_flat(faiss.downcast_index(self._faiss.storage), total)

    def _new_faiss(self, x: np.ndarray) -> Any:
        index = faiss.IndexHNSWFlat(x.shape[1], self._params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self._params["efConstruction"]
        return index

    def _search_codes(self, x: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParametersHNSW(efSearch=self._params["efSearch"], sel=self._selector)
        return self._faiss.search(x, depth, params=params)

    def _knob_values(self) -> list[int]:
        return _doublings(16, 2048)

    def _larger_params(self) -> dict[str, Any] | None:
        M, ef = self._params["M"], self._params["efConstruction"]
        return {"M": 2 * M, "efConstruction": 2 * ef} if M < 64 else None


class IVFPQIndex(VectorIndex):
    """Inverted lists over `nlist` k-means cells, residuals product-quantized to `m` bytes (FAISS IndexIVFPQ)."""

    kind = "ivfpq"
    knob = "nprobe"
    reranks = True
    build_defaults = {"nlist": None, "m": None}
    search_defaults = {"nprobe": None, "rerank": 0}

    def _resolve(self, params: dict[str, Any], n: int) -> dict[str, Any]:
        if n < 2**PQ_BITS:
            raise OffshelfError(f"ivfpq needs at least {2**PQ_BITS} vectors to train its quantizers, got {n}; "
                                "use flat or hnsw")
        nlist = int(params["nlist"] or np.clip(4 * np.sqrt(n), 1, min(n // 39, 65536)))
        # d/4 bytes (320 at d=1280) trains for minutes and scans slower than brute force; 64 bytes plus
        # re-ranking reaches recall@10 0.95 (unchanged for d <= 256)
        m = int(params["m"] or _largest_divisor(self.d, min(self.d // 4, 64)))
        if not 1 <= nlist <= n or self.d % m:
            raise OffshelfError(f"ivfpq needs 1 <= nlist <= n ({n}) and m dividing the dimension {self.d}; "
                                f"got nlist={nlist}, m={m}")
        return {**params, "nlist": nlist, "m": m, "nprobe": int(params["nprobe"] or max(1, nlist // 8))}

    def _new_faiss(self, x: np.ndarray) -> Any:
        d = x.shape[1]
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, self._params["nlist"], self._params["m"], PQ_BITS,
                                 faiss.METRIC_INNER_PRODUCT)
        # FAISS warns below 39 training points per centroid; recall is measured instead (build_store_index)
        index.cp.min_points_per_centroid = index.pq.cp.min_points_per_centroid = 1
        index.train(x)
        return index

    def _search_codes(self, x: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParametersIVF(nprobe=self._params["nprobe"], sel=self._selector)
        return self._faiss.search(x, depth, params=params)

    def _knob_values(self) -> list[int]:
        return _doublings(1, self._params["nlist"])

    def _larger_params(self) -> dict[str, Any] | None:
        m = 2 * self._params["m"]
        return {"m": m} if m <= self.d and self.d % m == 0 else None


class BinaryIndex(VectorIndex):
    """ITQ sign codes (`nbits` bits) searched by Hamming distance: FAISS IndexBinaryFlat, or IndexBinaryHNSW
    (`hnsw`, automatic from 200k vectors; removal is then a tombstone as for hnsw)."""

    kind = "binary"
    knob = "rerank"
    reranks = True
    build_defaults = {"nbits": None, "n_iter": 50, "hnsw": None, "M": 32}
    search_defaults = {"rerank": 0, "efSearch": 64}
    _write_faiss = staticmethod(faiss.write_index_binary)
    _read_faiss = staticmethod(faiss.read_index_binary)

    def _resolve(self, params: dict[str, Any], n: int) -> dict[str, Any]:
        nbits = int(params["nbits"] or min(self.d, 256) // 8 * 8)
        if nbits % 8 or not 8 <= nbits <= min(self.d, n):
            raise OffshelfError(f"binary nbits must be a multiple of 8 between 8 and min(n, d) = {min(self.d, n)}, "
                                f"got {nbits}")
        hnsw = n >= BINARY_HNSW_MIN if params["hnsw"] is None else bool(params["hnsw"])
        return {**params, "nbits": nbits, "hnsw": hnsw}

    def _new_faiss(self, x: np.ndarray) -> Any:
        self._itq = ITQ(self._params["nbits"], self._params["n_iter"]).fit(x)
        nbits = self._params["nbits"]
        return faiss.IndexBinaryHNSW(nbits, self._params["M"]) if self._params["hnsw"] else faiss.IndexBinaryFlat(nbits)

    def _encode(self, x: np.ndarray) -> np.ndarray:
        return self._itq.encode(x)

    def _search_codes(self, x: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        if self._params["hnsw"]:
            params = faiss.SearchParametersHNSW(efSearch=max(self._params["efSearch"], depth), sel=self._selector)
        else:
            params = faiss.SearchParameters(sel=self._selector)
        hamming, pos = self._faiss.search(self._encode(x), depth, params=params)
        return 1 - 2 * hamming.astype(np.float32) / self._params["nbits"], pos

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {f"itq.{name}": value for name, value in self._itq.to_arrays().items()}

    def _load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self._itq = ITQ.from_arrays({key[4:]: value for key, value in arrays.items() if key.startswith("itq.")})

    def _knob_values(self) -> list[int]:
        if self._floats is None:
            return []
        n = len(self._ids)
        ladder = [v * 10**e for e in range(1, 9) for v in (1, 2, 5)]
        return [v for v in ladder if v < n] + [n]

    def _larger_params(self) -> dict[str, Any] | None:
        return {"rerank": RERANK_START} if self._floats is None else None
