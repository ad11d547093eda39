"""Row gathers, triple margins and squared norms for the training step and the evaluation.

``torch.index_select(table, 0, index)`` returns exactly ``table[index]`` for a
1-D ``index``, but on CPU it is several times faster forward and about twice as
fast backward (one thread, 8192 rows of a 6710 x 193 table: 0.6 ms against
2.0 ms forward). Advanced indexing goes through a generic strided kernel;
``index_select`` copies whole rows.

On CPU, row-wise work of a step runs a chunk of rows at a time (:func:`row_chunks`): an
elementwise op on a 16,018 x 64 tensor takes 1.3-1.6 ms inside a training step and a
fraction of that on rows still in cache.
"""
from __future__ import annotations

import torch

#: Bytes of one row-wise tensor per chunk where a step's rows are worked on a chunk at a time
#: (:func:`row_chunks`): a chunk's few tensors stay in one core's cache. Measured on TikTok
#: GRCN's normalisations, one thread: 256 KB chunks beat 64 KB (Python's overhead per chunk)
#: and whole tensors (written to memory and read back).
CHUNK_BYTES = 1 << 18


def rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 1-D long ``index``, gathered with ``index_select``."""
    return torch.index_select(table, 0, index)


def rows_per_chunk(x: torch.Tensor) -> int:
    """Rows of the 2-D ``x`` in about :data:`CHUNK_BYTES` on CPU; all of them elsewhere.

    Off the CPU the whole tensor is one chunk: a GPU's reduction kernels choose their layout
    from the tensor's shape (a chunk would sum in another order), and every chunk would cost
    kernel launches.
    """
    if x.device.type != "cpu":
        return max(1, x.shape[0])
    return max(1, CHUNK_BYTES // max(1, x.shape[1] * x.element_size()))


def row_chunks(n: int, chunk: int) -> list[slice]:
    """Slices of ``chunk`` consecutive rows covering ``range(n)``; the last one may be shorter.

    For row-wise work done a chunk at a time while the rows are in cache. Exact operations
    (add, subtract, multiply, divide, clamp, compare) and reductions over each row of a
    contiguous tensor give the same floats on CPU, chunked or not. Transcendental ones
    (``exp``, ``sigmoid``, ``tanh``) do not: their vector kernels finish each call's tail
    with scalar code that rounds differently, and chunk boundaries move that tail.
    """
    return [slice(start, start + chunk) for start in range(0, n, chunk)]


def chunks_of(x: torch.Tensor) -> list[slice]:
    """:func:`row_chunks` of ``x``'s rows, :func:`rows_per_chunk` at a time."""
    return row_chunks(x.shape[0], rows_per_chunk(x))


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(dim=1)``, equal to the last bit, without a full-size temporary: the products
    of a chunk of rows are summed while they are in cache (contiguous rows only: a strided
    product is reduced in another order)."""
    if not (a.is_contiguous() and b.is_contiguous()):
        return (a * b).sum(dim=1)
    out = torch.empty(a.shape[0], dtype=torch.result_type(a, b), device=a.device)
    for part in chunks_of(a):
        torch.sum(torch.mul(a[part], b[part]), dim=1, out=out[part])
    return out


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
        return _row_dots(u, diff)

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


def frozen_margins(user_table: torch.Tensor, item_table: torch.Tensor, users: torch.Tensor, pos: torch.Tensor,
                   neg: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """``triple_margins(rows(user_table, users), rows(item_table, cat([pos, neg])))`` for tables
    that need no gradient (CKD's frozen teachers), equal to the last bit.

    Gathered a chunk of triples at a time, so the rows are still in cache when they are
    subtracted, multiplied and summed; the whole batch's rows at once (TikTok's VBPR teacher:
    8192 rows of 193 floats, 6 MB) are written to fresh memory and read back from it, which
    made the two teachers' margins close to half of a VBPR + CKD step. Each triple's margin is
    the same elementwise products summed over one row, whatever the chunk, so the chunking
    changes no number.
    """
    if user_table.requires_grad or item_table.requires_grad:
        raise ValueError("frozen_margins computes no gradient; use triple_margins for trained tables")
    if user_table.dtype != item_table.dtype:  # the in-place products would round to the item dtype
        raise ValueError(f"frozen_margins needs tables of one dtype, got {user_table.dtype} and {item_table.dtype}")
    out = torch.empty(len(users), dtype=item_table.dtype, device=item_table.device)
    with torch.no_grad():
        for part in row_chunks(len(users), rows_per_chunk(item_table) if chunk is None else chunk):
            diff = rows(item_table, pos[part])
            diff.sub_(rows(item_table, neg[part]))
            torch.sum(diff.mul_(rows(user_table, users[part])), dim=1, out=out[part])
    return out


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
