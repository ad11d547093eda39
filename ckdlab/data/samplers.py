"""Vectorised training-triple samplers.

``BPRSampler`` yields the BPR triples ``(u, i, j)`` of the training set (paper
eq. 2 and the specific distillation of sec. 3.1.4): every training interaction
once per epoch, each with a negative drawn uniformly from the user's
non-interacted items. ``uniform_triples`` draws the ``(u, j, k)`` triples of the
generic distillation (sec. 3.1.4): a user and two items, all uniform.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.sparse as sp


def _as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


class BPRSampler:
    """Epochs of ``(users, pos, neg)`` batches over a binary training matrix.

    Negatives are exact uniform draws from each user's non-interacted items, with
    no rejection loop: for user ``u`` with sorted positives ``p_0 < p_1 < ...``,
    draw ``r`` uniform in ``[0, n_items - deg(u))`` and map it to the ``r``-th
    item that is not a positive, ``r + #{k : p_k - k <= r}``. The count is one
    ``np.searchsorted`` over a global sorted key array, so a whole batch of users
    is handled at once.

    Parameters
    ----------
    train_matrix : scipy.sparse matrix
        ``(n_users, n_items)`` training interactions; any non-zero is a positive.
    seed : int or np.random.Generator, optional
        Seed of the sampler's own generator; the same seed gives the same batches.

    Raises
    ------
    ValueError
        When a user has interacted with every item (no negative exists).
    """

    def __init__(self, train_matrix: sp.spmatrix, seed: int | np.random.Generator | None = 0):
        csr = sp.csr_matrix(train_matrix, copy=True)
        csr.sum_duplicates()  # also sorts the column indices within each row
        csr.eliminate_zeros()
        self.n_users, self.n_items = csr.shape
        self.indptr = csr.indptr.astype(np.int64)
        self.items = csr.indices.astype(np.int64)
        self.degree = np.diff(self.indptr)
        full = np.flatnonzero(self.degree >= self.n_items)
        if len(full):
            raise ValueError(f"user {int(full[0])} has interacted with all {self.n_items} items, so no negative "
                             f"item can be sampled for it ({len(full)} such user(s)); drop them from training")
        self.users = np.repeat(np.arange(self.n_users, dtype=np.int64), self.degree)
        # Key of positive k of user u: u * (n_items + 1) + (p_k - k). Sorted, since
        # p_k - k is non-decreasing within a row and lies in [0, n_items - deg(u)].
        rank_in_row = np.arange(len(self.items)) - self.indptr[self.users]
        self._gap_keys = self.users * (self.n_items + 1) + (self.items - rank_in_row)
        self.rng = _as_generator(seed)

    @property
    def n_interactions(self) -> int:
        return int(len(self.items))

    def n_batches(self, batch_size: int) -> int:
        """Number of batches one epoch yields."""
        return -(-self.n_interactions // batch_size)

    def sample_negatives(self, users: np.ndarray) -> np.ndarray:
        """One uniform non-interacted item per entry of ``users`` (int64)."""
        users = np.asarray(users, dtype=np.int64)
        if users.size and (users.min() < 0 or users.max() >= self.n_users):
            raise IndexError(f"user ids must lie in [0, {self.n_users})")
        free = self.n_items - self.degree[users]
        r = (self.rng.random(users.shape) * free).astype(np.int64)
        r = np.minimum(r, free - 1)  # guard the (measure-zero) float edge r == free
        # How many of the user's positives sit at or before the r-th free slot.
        below = np.searchsorted(self._gap_keys, users * (self.n_items + 1) + r, side="right") - self.indptr[users]
        return r + below

    def epoch(self, batch_size: int, shuffle: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Batches covering every training interaction exactly once.

        Parameters
        ----------
        batch_size : int
            Interactions per batch (the last batch may be smaller).
        shuffle : bool
            Visit interactions in a random order (else in user-major order).

        Yields
        ------
        users, pos, neg : np.ndarray
            int64 arrays of equal length; ``neg`` is never a training item of its user.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = self.rng.permutation(self.n_interactions) if shuffle else np.arange(self.n_interactions)
        for start in range(0, self.n_interactions, batch_size):
            idx = order[start:start + batch_size]
            users = self.users[idx]
            yield users, self.items[idx], self.sample_negatives(users)


def uniform_triples(n_users: int, n_items: int, n: int,
                    rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` uniformly random ``(u, j, k)`` triples for generic distillation.

    ``j`` and ``k`` are independent uniform items, not tied to the user's
    interactions (paper sec. 3.1.4); ``j == k`` can occur and then carries no
    ranking, which the distillation loss handles like any other pair.

    Parameters
    ----------
    n_users, n_items : int
        Id ranges.
    n : int
        Number of triples.
    rng : np.random.Generator or int, optional
        Generator (advanced in place) or seed.

    Returns
    -------
    users, j, k : np.ndarray
        int64 arrays of length ``n``.
    """
    rng = _as_generator(rng)
    users = rng.integers(n_users, size=n, dtype=np.int64)
    j = rng.integers(n_items, size=n, dtype=np.int64)
    k = rng.integers(n_items, size=n, dtype=np.int64)
    return users, j, k
