"""Small pieces shared by the graph backbones (MMGCN, GRCN, EgoGCN).

The edge machinery (edge lists, weighted sparse products, edge softmax) lives
in :mod:`ckdlab.graph`.
"""
from __future__ import annotations

import torch

from ..gather import rows, squared_norm


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
        sq = sq + squared_norm(rows(t, users))
    for t in item_tables:
        sq = sq + squared_norm(rows(t, pos)) + squared_norm(rows(t, neg))
    return sq / (2 * max(len(users), 1))


class _L2Normalize(torch.autograd.Function):
    """``x / max(||x||, eps)`` per row; backward ``(g - y <g, y>) / max(||x||, eps)``."""

    @staticmethod
    def forward(ctx, x, eps):
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        denom = norm.clamp_min(eps)
        y = x / denom
        ctx.save_for_backward(y, denom, norm >= eps)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        y, denom, unclamped = ctx.saved_tensors
        radial = (grad * y).sum(dim=1, keepdim=True) * unclamped
        return (grad - y * radial) / denom, None


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(x, dim=1)`` (same value and gradient) with a fused backward.

    Autograd through ``F.normalize`` makes about eight passes over ``x`` in the
    backward; this makes four. Rows are of a 2-D ``x``.
    """
    if x.dim() != 2:
        raise ValueError(f"l2_normalize expects a 2-D tensor, got shape {tuple(x.shape)}")
    return _L2Normalize.apply(x, eps)
