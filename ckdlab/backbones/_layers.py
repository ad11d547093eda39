"""Small pieces shared by the graph late-fusion backbones (MMGCN, GRCN).

Edge-list message passing with learned edge weights, a per-receiver softmax
over edges, and the batch L2 penalty on embedding rows. Everything works on
edge lists (length ``|E|``) and ``torch.sparse`` products: nothing here builds
a dense users x items or items x items matrix.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def sorted_edges(train: np.ndarray, n_users: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions of every training edge over the joint node set, sorted.

    Node ids: users ``0..n_users-1``, items ``n_users + item``. The edges are
    sorted by ``(dst, src)`` and unique, so a COO matrix with rows = ``dst`` is
    already coalesced (see :class:`EdgeSet`).

    Returns
    -------
    dst, src : torch.LongTensor
        Receiver and sender of each directed edge, length ``2 * len(unique(train))``.
    """
    n = n_users + n_items
    u = train[:, 0].astype(np.int64)
    i = train[:, 1].astype(np.int64) + n_users
    dst = np.concatenate([u, i])
    src = np.concatenate([i, u])
    key = np.unique(dst * n + src)  # sorts and drops duplicate pairs
    return torch.as_tensor(key // n), torch.as_tensor(key % n)


def _coo(dst: torch.Tensor, src: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """COO matrix (rows = receivers) from already sorted, unique ``(dst, src)``."""
    index = torch.stack([dst, src])
    try:
        return torch.sparse_coo_tensor(index, values, shape, is_coalesced=True, check_invariants=False)
    except TypeError:  # torch without the is_coalesced / check_invariants keywords
        return torch.sparse_coo_tensor(index, values, shape).coalesce()


class _WeightedAggregate(torch.autograd.Function):
    """``A_w @ x`` with a hand-written backward.

    ``torch.sparse.mm``'s own backward with respect to the sparse values is
    very slow on CPU (seconds for 10^5 edges); here the value gradient is the
    per-edge inner product ``<grad_out[dst], x[src]>`` and the input gradient a
    product with the transpose, whose sorted edge order is precomputed.
    """

    @staticmethod
    def forward(ctx, weight, x, dst, src, order, n_dst):
        ctx.save_for_backward(weight, x, dst, src, order)
        return torch.sparse.mm(_coo(dst, src, weight, (n_dst, x.shape[0])), x)

    @staticmethod
    def backward(ctx, grad_out):
        weight, x, dst, src, order = ctx.saved_tensors
        grad_w = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_w = (grad_out[dst] * x[src]).sum(dim=1)
        if ctx.needs_input_grad[1]:
            adj_t = _coo(src[order], dst[order], weight[order], (x.shape[0], grad_out.shape[0]))
            grad_x = torch.sparse.mm(adj_t, grad_out)
        return grad_w, grad_x, None, None, None, None


class EdgeSet(nn.Module):
    """A fixed directed edge list ``dst <- src`` for weighted message passing.

    Parameters
    ----------
    dst, src : torch.LongTensor
        Receivers in ``[0, n_dst)`` and senders in ``[0, n_src)``, sorted by
        ``(dst, src)`` and unique (as :func:`sorted_edges` returns them).
    n_dst, n_src : int
        Number of receiver and sender nodes.

    The edge lists are non-persistent buffers: they follow ``.to(device)`` and
    are rebuilt from the dataset rather than saved in a ``state_dict``.
    """

    def __init__(self, dst: torch.Tensor, src: torch.Tensor, n_dst: int, n_src: int):
        super().__init__()
        key = dst * n_src + src
        if len(key) > 1 and not bool((key[1:] > key[:-1]).all()):
            raise ValueError("edges must be sorted by (dst, src) and unique")
        self.n_dst, self.n_src = int(n_dst), int(n_src)
        self.register_buffer("dst", dst.long(), persistent=False)
        self.register_buffer("src", src.long(), persistent=False)
        # order of the edges sorted by (src, dst): the transpose's coalesced order
        self.register_buffer("order", torch.argsort(src * n_dst + dst), persistent=False)

    def __len__(self) -> int:
        return int(self.dst.shape[0])

    def aggregate(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out[r] = sum over edges (r <- s) of weight_e * x[s]``; gradients reach ``weight`` and ``x``."""
        if x.shape[0] != self.n_src:
            raise ValueError(f"x has {x.shape[0]} rows, the edge set has {self.n_src} senders")
        return _WeightedAggregate.apply(weight, x, self.dst, self.src, self.order, self.n_dst)

    def softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax of edge ``logits`` over the edges into each receiver."""
        return segment_softmax(logits, self.dst, self.n_dst)

    def row_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of edge ``values`` per receiver (length ``n_dst``)."""
        return segment_sum(values, self.dst, self.n_dst)


def segment_softmax(logits: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of edge ``logits`` among the edges sharing the same ``index`` (receiver)."""
    amax = torch.full((n,), float("-inf"), device=logits.device, dtype=logits.dtype)
    amax = amax.scatter_reduce(0, index, logits.detach(), reduce="amax", include_self=True)
    ex = torch.exp(logits - amax[index])
    denom = torch.zeros(n, device=logits.device, dtype=logits.dtype).index_add(0, index, ex)
    return ex / denom[index]


def segment_sum(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Sum of edge ``values`` per receiver ``index`` (length ``n``)."""
    return torch.zeros(n, device=values.device, dtype=values.dtype).index_add(0, index, values)


def embedding_l2(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                 user_tables: list[torch.Tensor], item_tables: list[torch.Tensor]) -> torch.Tensor:
    """Half the squared norm of the batch's rows of the given embedding tables, per triple.

    ``user_tables`` are indexed by ``users``; ``item_tables`` by ``pos`` and ``neg``.
    Used as the L2 regulariser of the input embeddings (ID embeddings and user
    preferences), the convention of the released MMGCN / GRCN code, instead of
    the norm of the final (propagated) representations.
    """
    sq = users.new_zeros((), dtype=torch.float32)
    for t in user_tables:
        sq = sq + t[users].pow(2).sum()
    for t in item_tables:
        sq = sq + t[pos].pow(2).sum() + t[neg].pow(2).sum()
    return sq / (2 * max(len(users), 1))
