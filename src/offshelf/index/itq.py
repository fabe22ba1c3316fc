"""Iterative quantization (Gong & Lazebnik, CVPR 2011): binary codes from a learned rotation of PCA.

Center the data, project it on its top `n_bits` principal directions (V = (X - mean) W), then alternate
B = sign(V R) and the orthogonal Procrustes solution R = argmin ||B - V R||_F (from the SVD of V^T B),
starting from a random rotation. Each step cannot increase the quantization loss ||B - V R||_F^2, so
`loss_` (one value per iteration, the first one that of the random rotation) is non-increasing.
"""

from __future__ import annotations

import numpy as np

from offshelf.errors import OffshelfError

ENCODE_CHUNK = 65_536  # rows projected at once


def random_rotation(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random n x n orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _quantize(V: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, float]:
    """B = sign(V R) in {-1, +1} and the mean quantization loss ||B - V R||^2 per row."""
    Z = V @ R
    B = np.where(Z >= 0, 1.0, -1.0)
    return B, float(np.sum((B - Z) ** 2)) / len(V)


class ITQ:
    """Learns `mean_`, `components_` (n_bits x d, PCA) and `rotation_` (n_bits x n_bits, orthogonal).

    Iterates at most `n_iter` times, stopping early once the quantization loss falls by less than `tol`
    (relative) in one iteration.
    """

    def __init__(self, n_bits: int, n_iter: int = 50, random_state: int = 0, tol: float = 1e-4) -> None:
        self.n_bits = n_bits
        self.n_iter = n_iter
        self.random_state = random_state
        self.tol = tol

    def fit(self, X: np.ndarray) -> ITQ:
        centered = np.array(X, dtype=np.float64)  # one float64 copy, centred in place
        if not 0 < self.n_bits <= min(centered.shape):
            raise OffshelfError(f"ITQ needs 0 < n_bits <= min(n, d) = {min(centered.shape)}, got {self.n_bits}")
        self.mean_ = centered.mean(axis=0)
        centered -= self.mean_
        eigenvalues, eigenvectors = np.linalg.eigh(centered.T @ centered)
        self.components_ = eigenvectors[:, np.argsort(eigenvalues)[::-1][: self.n_bits]].T
        V = centered @ self.components_.T
        R = random_rotation(self.n_bits, np.random.default_rng(self.random_state))
        B, loss = _quantize(V, R)
        self.loss_ = [loss]
        for _ in range(self.n_iter):
            u, _, vt = np.linalg.svd(V.T @ B)  # orthogonal Procrustes: argmin_R ||B - V R||_F
            R = u @ vt
            B, loss = _quantize(V, R)
            self.loss_.append(loss)
            if self.loss_[-2] - loss <= self.tol * self.loss_[-2]:
                break  # converged: further iterations would not change the codes measurably
        self.rotation_ = R
        self.projection_ = self.components_.T @ R  # d x n_bits, once: not per query
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The rotated projections (X - mean) W^T R; their signs are the bits."""
        return (np.asarray(X, dtype=np.float64) - self.mean_) @ self.projection_

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Packed codes, uint8 (n, n_bits / 8); bit set where the projection is >= 0.

        Encodes `ENCODE_CHUNK` rows at a time: the float64 projection of a million 1280-d rows would take 10 GB.
        """
        codes = np.empty((len(X), self.n_bits // 8), np.uint8)
        for lo in range(0, len(X), ENCODE_CHUNK):
            codes[lo : lo + ENCODE_CHUNK] = np.packbits(self.transform(X[lo : lo + ENCODE_CHUNK]) >= 0, axis=1)
        return codes

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean_": self.mean_, "components_": self.components_, "rotation_": self.rotation_}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ITQ:
        itq = cls(n_bits=len(arrays["rotation_"]))
        itq.mean_, itq.components_, itq.rotation_ = arrays["mean_"], arrays["components_"], arrays["rotation_"]
        itq.projection_ = itq.components_.T @ itq.rotation_
        return itq
