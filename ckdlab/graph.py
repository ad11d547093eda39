"""User-item graph construction shared by the graph backbones.

Graphs are built once per dataset (backbones build them in their constructor)
as ``torch.sparse`` COO tensors; nothing here materialises a dense
users x items or items x items matrix.
"""
from __future__ import annotations

import numpy as np
import torch


def bipartite_edges(train: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Both directions of every training edge over the joint node set.

    Node ids: users are ``0..n_users-1``, items are ``n_users + item``.
    Returns ``(src, dst)`` int64 arrays of length ``2 * len(train)``.
    """
    u = train[:, 0].astype(np.int64)
    i = train[:, 1].astype(np.int64) + n_users
    return np.concatenate([u, i]), np.concatenate([i, u])


def _sparse(src: np.ndarray, dst: np.ndarray, values: np.ndarray, n: int) -> torch.Tensor:
    index = torch.as_tensor(np.stack([dst, src]), dtype=torch.long)  # row = receiver, col = sender
    return torch.sparse_coo_tensor(index, torch.as_tensor(values, dtype=torch.float32), (n, n),
                                   check_invariants=False).coalesce()


def normalized_adjacency(train: np.ndarray, n_users: int, n_items: int, kind: str = "sym") -> torch.Tensor:
    """Joint (users + items) adjacency of the training graph, normalised.

    Parameters
    ----------
    kind : {"sym", "mean"}
        ``"sym"``: D^-1/2 A D^-1/2 (LightGCN); ``"mean"``: D^-1 A, rows average the
        neighbours (MMGCN's mean aggregation). Isolated nodes get an all-zero row.
    """
    n = n_users + n_items
    src, dst = bipartite_edges(train, n_users)
    deg = np.bincount(dst, minlength=n).astype(np.float64)
    with np.errstate(divide="ignore"):
        if kind == "sym":
            inv = np.where(deg > 0, deg ** -0.5, 0.0)
            values = inv[dst] * inv[src]
        elif kind == "mean":
            inv = np.where(deg > 0, 1.0 / deg, 0.0)
            values = inv[dst]
        else:
            raise ValueError(f"unknown normalisation {kind!r}; expected 'sym' or 'mean'")
    return _sparse(src, dst, values.astype(np.float32), n)


def propagate(adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One propagation step ``adj @ x`` (adj on the same device as x)."""
    return torch.sparse.mm(adj, x)
