"""Small pieces shared by the graph backbones (MMGCN, GRCN, EgoGCN, MGCN).

The edge machinery (edge lists, weighted sparse products, edge softmax) lives
in :mod:`ckdlab.graph`.
"""
from __future__ import annotations

import torch

from ..gather import chunks_of, rows, squared_norm


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


def add_all(terms) -> torch.Tensor:
    """``t_1 + t_2 + ...`` from the left, for one or more tensors.

    Python's ``sum`` starts from ``0`` and so copies the first term with ``0 + t_1``: a full
    pass over a node-sized tensor per call, for nothing (the floats are the same except that
    ``0 + (-0.0)`` is ``+0.0``).
    """
    terms = iter(terms)
    total = next(terms, None)
    if total is None:
        raise ValueError("add_all needs at least one term")
    for term in terms:
        total = total + term
    return total


class _L2Normalize(torch.autograd.Function):
    """``x / max(||x||, eps)`` per row; backward ``(g - y <g, y>) / max(||x||, eps)``.

    Both passes run a chunk of rows at a time (:func:`ckdlab.gather.row_chunks`): the rows
    are read from memory once and the norm, the division and the backward's five
    operations find them in cache (a graph backbone normalises every node's state, e.g.
    16,018 x 64 on TikTok, several times per step). A per-row norm and exact operations:
    on CPU the floats are those of one pass over the whole tensor.
    """

    @staticmethod
    def forward(ctx, x, eps):
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        denom = x.new_empty((x.shape[0], 1))
        unclamped = torch.empty((x.shape[0], 1), dtype=torch.bool, device=x.device)
        for part in chunks_of(x):
            norm = torch.linalg.vector_norm(x[part], dim=1, keepdim=True)
            torch.clamp_min(norm, eps, out=denom[part])
            torch.ge(norm, eps, out=unclamped[part])
            torch.div(x[part], denom[part], out=y[part])
        ctx.save_for_backward(y, denom, unclamped)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        y, denom, unclamped = ctx.saved_tensors
        out = torch.empty_like(y)
        for part in chunks_of(y):
            g, y_part = grad[part], y[part]
            radial = (g * y_part).sum(dim=1, keepdim=True) * unclamped[part]
            torch.div(g - y_part * radial, denom[part], out=out[part])
        return out, None


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(x, dim=1)`` (same value and gradient) with a fused backward.

    Autograd through ``F.normalize`` makes about eight passes over ``x`` in the
    backward; this makes one, a chunk of rows at a time. Rows are of a 2-D ``x``.
    """
    if x.dim() != 2:
        raise ValueError(f"l2_normalize expects a 2-D tensor, got shape {tuple(x.shape)}")
    return _L2Normalize.apply(x, eps)


class _SigmoidGate(torch.autograd.Function):
    """``sigmoid(z) * h`` with autograd's backward of the two ops: ``dh = g * s`` and
    ``dz = sigmoid_backward(g * h, s)`` for ``s = sigmoid(z)``.

    The sigmoid is one call over the whole tensor, as before: chunked, its vector kernel's
    scalar tail would fall elsewhere and round differently (:func:`ckdlab.gather.row_chunks`).
    The product and the backward (exact operations) run a chunk of rows at a time.
    """

    @staticmethod
    def forward(ctx, z, h):
        gate = torch.sigmoid(z)
        out = torch.empty_like(gate)
        for part in chunks_of(gate):
            torch.mul(gate[part], h[part], out=out[part])
        ctx.save_for_backward(gate, h)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        gate, h = ctx.saved_tensors
        want_z, want_h = ctx.needs_input_grad
        grad_z = torch.empty_like(gate) if want_z else None
        grad_h = torch.empty_like(gate) if want_h else None
        for part in chunks_of(gate):
            g = grad[part]
            if want_h:
                torch.mul(g, gate[part], out=grad_h[part])
            if want_z:
                torch.ops.aten.sigmoid_backward.grad_input(g * h[part], gate[part], grad_input=grad_z[part])
        return grad_z, grad_h


def sigmoid_gate(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``torch.sigmoid(z) * h`` for 2-D tensors of one shape: the same value and gradient to
    the last bit, the product and the backward's three operations in one chunked pass each
    (EgoGCN gates every node's message, 16,018 x 64 on TikTok, per layer and modality pair)."""
    if z.dim() != 2 or z.shape != h.shape or z.dtype != h.dtype:
        raise ValueError(f"sigmoid_gate expects two 2-D tensors of one shape and dtype, got {tuple(z.shape)} "
                         f"{z.dtype} and {tuple(h.shape)} {h.dtype}")
    return _SigmoidGate.apply(z, h)
