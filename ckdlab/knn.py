"""Item-item k-nearest-neighbour graphs from item features, built block-wise.

The graphs are returned as sparse COO tensors; backbones propagate with them
through :class:`ckdlab.graph.SparseMatrix`.

Used by MGCN (Yu et al., "Multi-View Graph Convolutional Network for Multimedia
Recommendation", ACM MM 2023), which follows LATTICE/FREEDOM: each item keeps
its ``k`` most cosine-similar items (itself included, since its own similarity
is maximal), the kept similarities are the edge weights, and the graph is
normalised ``D^-1/2 A D^-1/2`` with ``D`` the row sums of the kept weights.

The similarity matrix is never materialised for the whole catalogue: rows are
processed in blocks of ``block_size``, each block costing ``block_size x n_items``
floats, and only the ``k`` best entries of each row are kept.
"""
from __future__ import annotations

import numpy as np
import torch

#: Floats of one similarity block when ``block_size`` is not given (128 MiB in float32).
_BLOCK_FLOATS = 1 << 25


def _as_tensor(features, device) -> torch.Tensor:
    x = features if torch.is_tensor(features) else torch.as_tensor(np.asarray(features))
    return x.detach().to(device=device, dtype=torch.float32)


def topk_cosine(features, k: int = 10, block_size: int | None = None,
                device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest cosine similarities of every row with all rows.

    Parameters
    ----------
    features : array-like or torch.Tensor
        ``(n, d)`` item features. All-zero rows have similarity 0 with everything.
    k : int
        Neighbours per row (clipped to ``n``). The row itself is a candidate.
    block_size : int, optional
        Rows per block; default keeps a block at about ``2**25`` floats.
    device : str or torch.device, optional
        Where to compute (default: the tensor's device, CPU for numpy input).

    Returns
    -------
    values, indices : torch.Tensor
        ``(n, k)`` similarities (descending) and column indices, on ``device``.
    """
    if device is None:
        device = features.device if torch.is_tensor(features) else "cpu"
    x = _as_tensor(features, device)
    if x.dim() != 2:
        raise ValueError(f"features must be a (n, d) matrix, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("features have no rows")
    k = max(1, min(int(k), n))
    if block_size is None:
        block_size = max(1, _BLOCK_FLOATS // n)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    xn = torch.nn.functional.normalize(x, dim=1)
    values = torch.empty((n, k), dtype=torch.float32, device=device)
    indices = torch.empty((n, k), dtype=torch.long, device=device)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        sim = xn[start:stop] @ xn.T  # (block, n): the only similarity block alive at once
        v, i = torch.topk(sim, k, dim=1)
        values[start:stop] = v
        indices[start:stop] = i
    return values, indices


def knn_graph(features, k: int = 10, normalization: str = "sym", block_size: int | None = None,
              device: str | torch.device | None = None, clip_negative: bool = True) -> torch.Tensor:
    """Normalised top-``k`` cosine kNN graph of the items, as a sparse COO tensor.

    Parameters
    ----------
    features : array-like or torch.Tensor
        ``(n, d)`` item features.
    k : int
        Neighbours kept per item (MGCN: 10).
    normalization : {"sym", "rw", "none"}
        ``"sym"``: ``D^-1/2 A D^-1/2`` with ``D`` the row sums of the kept
        similarities (MGCN/LATTICE ``get_sparse_laplacian``); ``"rw"``: ``D^-1 A``;
        ``"none"``: raw similarities.
    block_size : int, optional
        Rows per similarity block (see :func:`topk_cosine`).
    device : str or torch.device, optional
        Where to compute; the result is returned on the same device.
    clip_negative : bool
        Set negative kept similarities to 0 (default). With real features the
        top-10 similarities are positive and this changes nothing; on small or
        random data a negative weight could make a row sum non-positive, whose
        ``D^-1/2`` is undefined. (MGCN does not clip.)

    Returns
    -------
    torch.Tensor
        Coalesced sparse ``(n, n)`` float32 tensor; row ``i`` holds item ``i``'s
        neighbours, so ``torch.sparse.mm(graph, x)`` aggregates neighbours into
        each item.
    """
    values, cols = topk_cosine(features, k=k, block_size=block_size, device=device)
    n, kk = values.shape
    rows = torch.arange(n, device=values.device).repeat_interleave(kk)
    cols = cols.reshape(-1)
    w = values.reshape(-1)
    if clip_negative:
        w = w.clamp_min(0.0)
    if normalization != "none":
        deg = torch.zeros(n, dtype=torch.float32, device=w.device).index_add_(0, rows, w)
        if normalization == "sym":
            inv = torch.where(deg > 0, deg.clamp_min(1e-30).rsqrt(), torch.zeros_like(deg))
            w = inv[rows] * w * inv[cols]
        elif normalization == "rw":
            inv = torch.where(deg > 0, 1.0 / deg.clamp_min(1e-30), torch.zeros_like(deg))
            w = inv[rows] * w
        else:
            raise ValueError(f"unknown normalization {normalization!r}; expected 'sym', 'rw' or 'none'")
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), w, (n, n), check_invariants=False).coalesce()
