"""What a dedup run compared, kept in the store folder so that the next run compares only what is new.

`STORE/dedup/state.npz` (one file, written atomically, no pickle): the ids and file digests compared, the
pairs found among them (ids and scores) and the threshold and calibration they were found with. An item is
compared again when it is new, its file changed (another sha256), or the threshold or calibration changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offshelf.errors import OffshelfError
from offshelf.io import atomic_write_bytes
from offshelf.io.bundles import arrays_from_bytes, arrays_to_bytes

DEDUP_DIR = "dedup"
STATE_FILE = "state.npz"
CALIBRATION_FILE = "calibration.npz"


@dataclass
class RunState:
    """Compared items (id, sha256) and the pairs among them, for one threshold and calibration token."""

    threshold: float
    token: str
    ids: np.ndarray  # int64
    sha256: np.ndarray  # str
    pair_a: np.ndarray  # int64 ids
    pair_b: np.ndarray
    scores: np.ndarray  # float32

    def save(self, path: Path) -> None:
        meta = np.array(json.dumps({"threshold": self.threshold, "token": self.token}))
        atomic_write_bytes(path, arrays_to_bytes({"meta": meta, "ids": self.ids, "sha256": self.sha256.astype(str),
                                                  "pair_a": self.pair_a, "pair_b": self.pair_b,
                                                  "scores": self.scores}))

    @classmethod
    def load(cls, path: Path) -> RunState | None:
        """The saved state, or None if there is none."""
        if not path.is_file():
            return None
        try:
            arrays = arrays_from_bytes(path.read_bytes())
            meta = json.loads(str(arrays["meta"]))
            state = cls(float(meta["threshold"]), str(meta["token"]), arrays["ids"], arrays["sha256"],
                        arrays["pair_a"], arrays["pair_b"], arrays["scores"])
            items, pairs = (state.ids, state.sha256), (state.pair_a, state.pair_b, state.scores)
            if any(a.ndim != 1 for a in (*items, *pairs)) or len({len(a) for a in items}) != 1 \
                    or len({len(a) for a in pairs}) != 1 or not all(a.dtype.kind == "i" for a in (state.ids, *pairs[:2])) \
                    or state.scores.dtype.kind != "f" or state.sha256.dtype.kind != "U":
                raise ValueError("its arrays do not fit together")
            return state
        except (ValueError, KeyError, TypeError) as exc:
            raise OffshelfError(f"unreadable dedup state {path}: {exc}; delete it to compare everything again") from None

    def unchanged(self, ids: np.ndarray, sha256: list[str]) -> np.ndarray:
        """Which of the current items (`ids`, `sha256`) were compared with the same bytes."""
        known = dict(zip(self.ids.tolist(), self.sha256.tolist()))
        return np.array([known.get(i) == s for i, s in zip(ids.tolist(), sha256)], bool)

    def pairs_among(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The saved pairs whose two items are both in `ids`."""
        keep = np.isin(self.pair_a, ids) & np.isin(self.pair_b, ids)
        return self.pair_a[keep], self.pair_b[keep], self.scores[keep]
