"""BPRSampler and uniform_triples: correctness, coverage and determinism."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from ckdlab.data import BPRSampler, uniform_triples


def dense_matrix(n_users: int = 25, n_items: int = 12, density: float = 0.75, seed: int = 0) -> sp.csr_matrix:
    """A dense random interaction matrix with one user missing a single item."""
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < density
    dense[:, 0] = True          # every user has at least one positive
    dense[0, :] = True
    dense[0, 5] = False         # user 0 has exactly one possible negative
    dense[1, :] = False
    dense[1, 2] = True          # user 1 has one positive only
    return sp.csr_matrix(dense.astype(np.float32))


def pairs_of(matrix: sp.csr_matrix) -> np.ndarray:
    coo = matrix.tocoo()
    pairs = np.stack([coo.row, coo.col], axis=1).astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def collect(batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    users, pos, neg = zip(*batches)
    return np.concatenate(users), np.concatenate(pos), np.concatenate(neg)


def test_negatives_are_never_training_positives():
    matrix = dense_matrix()
    dense = matrix.toarray() > 0
    sampler = BPRSampler(matrix, seed=1)
    for _ in range(200):
        users, pos, neg = collect(sampler.epoch(batch_size=16))
        assert dense[users, pos].all()
        assert not dense[users, neg].any()
        assert ((neg >= 0) & (neg < matrix.shape[1])).all()
    # The user with a single free item always gets that item.
    assert (sampler.sample_negatives(np.zeros(500, dtype=np.int64)) == 5).all()


def test_negatives_are_uniform_over_free_items():
    n_items = 12
    positives = [0, 3, 4, 9, 11]
    matrix = sp.csr_matrix((np.ones(len(positives)), (np.zeros(len(positives), int), positives)), shape=(1, n_items))
    sampler = BPRSampler(matrix, seed=0)
    neg = sampler.sample_negatives(np.zeros(70_000, dtype=np.int64))
    counts = np.bincount(neg, minlength=n_items)
    free = np.setdiff1d(np.arange(n_items), positives)
    assert counts[positives].sum() == 0
    expected = len(neg) / len(free)
    assert np.all(np.abs(counts[free] - expected) < 0.05 * expected), counts


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_interaction_appears_exactly_once_per_epoch(shuffle):
    matrix = dense_matrix(n_users=40, n_items=30, density=0.3, seed=3)
    sampler = BPRSampler(matrix, seed=0)
    batches = list(sampler.epoch(batch_size=7, shuffle=shuffle))
    assert len(batches) == sampler.n_batches(7)
    assert all(len(b[0]) == 7 for b in batches[:-1]) and 1 <= len(batches[-1][0]) <= 7
    users, pos, neg = collect(batches)
    assert users.dtype == pos.dtype == neg.dtype == np.int64
    seen = np.stack([users, pos], axis=1)
    seen = seen[np.lexsort((seen[:, 1], seen[:, 0]))]
    np.testing.assert_array_equal(seen, pairs_of(matrix))


def test_same_seed_same_batches_and_different_seed_differs():
    matrix = dense_matrix(n_users=50, n_items=40, density=0.2, seed=5)

    def run(seed):
        sampler = BPRSampler(matrix, seed=seed)
        return [np.concatenate(b) for _ in range(3) for b in sampler.epoch(batch_size=32)]

    a, b, c = run(7), run(7), run(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_duplicate_entries_and_explicit_zeros_are_handled():
    rows, cols = np.array([0, 0, 0, 1]), np.array([1, 1, 2, 3])
    data = np.array([1.0, 1.0, 0.0, 1.0])  # (0, 1) twice; (0, 2) an explicit zero
    matrix = sp.csr_matrix((data, (rows, cols)), shape=(2, 4))
    sampler = BPRSampler(matrix, seed=0)
    assert sampler.n_interactions == 2
    neg = sampler.sample_negatives(np.zeros(2000, dtype=np.int64))
    assert set(np.unique(neg)) == {0, 2, 3}  # item 2 is a valid negative: its entry is zero


def test_user_with_every_item_is_rejected():
    matrix = sp.csr_matrix(np.array([[1, 0, 1], [1, 1, 1]], dtype=np.float32))
    with pytest.raises(ValueError, match="user 1 has interacted with all 3 items"):
        BPRSampler(matrix)


def test_sample_negatives_rejects_unknown_users():
    sampler = BPRSampler(dense_matrix(), seed=0)
    with pytest.raises(IndexError):
        sampler.sample_negatives(np.array([0, 99]))


def test_uniform_triples_range_dtype_and_determinism():
    users, j, k = uniform_triples(10, 7, 50_000, np.random.default_rng(0))
    for arr, n in ((users, 10), (j, 7), (k, 7)):
        assert arr.dtype == np.int64 and arr.shape == (50_000,)
        counts = np.bincount(arr, minlength=n)
        assert len(counts) == n and counts.min() > 0.9 * 50_000 / n  # every id drawn, about evenly
    assert not np.array_equal(j, k)
    again = uniform_triples(10, 7, 50_000, 0)  # an int seed works too
    assert all(np.array_equal(x, y) for x, y in zip((users, j, k), again))
    other = uniform_triples(10, 7, 50_000, 1)
    assert not np.array_equal(users, other[0])
