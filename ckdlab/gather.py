"""Row gathers, triple margins and squared norms for the training step and the evaluation.

``torch.index_select(table, 0, index)`` returns exactly ``table[index]`` for a
1-D ``index``, but on CPU it is several times faster forward and about twice as
fast backward (one thread, 8192 rows of a 6710 x 193 table: 0.6 ms against
2.0 ms forward). Advanced indexing goes through a generic strided kernel;
``index_select`` copies whole rows.
"""
from __future__ import annotations

import torch


def rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 1-D long ``index``, gathered with ``index_select``."""
    return torch.index_select(table, 0, index)


class _TripleMargins(torch.autograd.Function):
    """``(u * (i - j)).sum(-1)`` with ``i, j`` the two halves of ``item_rows``.

    Autograd through the two slices would zero-fill a gradient of the whole
    ``item_rows`` once per slice and copy into it; here the gradient is written
    once, ``+u g`` for the positives and ``-u g`` for the negatives.
    """

    @staticmethod
    def forward(ctx, u, item_rows):
        n = u.shape[0]
        diff = item_rows[:n] - item_rows[n:]
        ctx.save_for_backward(u, diff)
        return (u * diff).sum(dim=-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        u, diff = ctx.saved_tensors
        g = grad.unsqueeze(1)
        grad_u = diff * g if ctx.needs_input_grad[0] else None
        grad_items = None
        if ctx.needs_input_grad[1]:
            n = u.shape[0]
            grad_items = torch.empty((2 * n, u.shape[1]), dtype=u.dtype, device=u.device)
            torch.mul(u, g, out=grad_items[:n])
            torch.neg(grad_items[:n], out=grad_items[n:])
        return grad_u, grad_items


def triple_margins(u: torch.Tensor, item_rows: torch.Tensor) -> torch.Tensor:
    """s_ui - s_uj = u . (i - j) per triple: ``u`` (n, d), ``item_rows`` (2n, d), positives first."""
    if item_rows.shape[0] != 2 * u.shape[0]:
        raise ValueError(f"triple_margins: {u.shape[0]} users need {2 * u.shape[0]} item rows "
                         f"(positives, then negatives), got {item_rows.shape[0]}")
    return _TripleMargins.apply(u, item_rows)


class _SquaredNorm(torch.autograd.Function):
    """``x.pow(2).sum()`` with the same value and gradient, in fewer passes over ``x``.

    Autograd's backward of ``pow(2)`` builds ``2 * x`` and then multiplies by the
    incoming gradient (two full-size temporaries); here it is one product
    ``x * (2 g)``, equal to the last bit (doubling is exact in floating point).
    On the 4096 x 193 item rows of a TikTok VBPR step: about half the time of
    autograd's forward and backward.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x * x).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return x * (2 * grad)


def squared_norm(x: torch.Tensor) -> torch.Tensor:
    """The sum of squares of ``x``'s entries (the L2 penalty's term), as ``x.pow(2).sum()`` computes it."""
    return _SquaredNorm.apply(x)
