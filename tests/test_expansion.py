"""AQE and DBA against direct numpy computations."""

from __future__ import annotations

import numpy as np

from offshelf.search.expansion import average_query_expansion, database_side_augmentation


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_aqe_and_dba_match_numpy() -> None:
    rng = np.random.default_rng(0)
    db = rng.normal(size=(50, 16)).astype(np.float32)
    q = rng.normal(size=(4, 16)).astype(np.float32)
    sims = unit(q) @ unit(db).T
    top = np.argsort(-sims, axis=1)[:, :3]
    expected = unit(unit(q) + unit(db)[top].sum(axis=1))
    np.testing.assert_allclose(average_query_expansion(q, db, 3), expected, atol=1e-5)
    np.testing.assert_allclose(average_query_expansion(q, db, 0), unit(q), atol=1e-6)

    dsims = unit(db) @ unit(db).T
    dtop = np.argsort(-dsims, axis=1)[:, :4]
    assert (dtop[:, 0] == np.arange(50)).all()
    np.testing.assert_allclose(database_side_augmentation(db, 4), unit(unit(db)[dtop].sum(axis=1)), atol=1e-5)
    np.testing.assert_allclose(database_side_augmentation(db, 1), unit(db), atol=1e-6)


def test_aqe_pulls_a_noisy_copy_towards_its_cluster() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 32))
    db = np.repeat(centres, 10, axis=0) + 0.3 * rng.normal(size=(50, 32))
    query = centres[2] + 1.2 * rng.normal(size=32)
    before = float(unit(query[None])[0] @ unit(centres[2:3])[0])
    after = float(average_query_expansion(query[None].astype(np.float32), db.astype(np.float32), 5)[0]
                  @ unit(centres[2:3])[0])
    assert after > before
