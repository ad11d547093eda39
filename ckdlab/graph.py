"""User-item graphs and the sparse machinery every graph backbone uses.

One edge-list type and a handful of operations on it, shared by MMGCN, GRCN,
EgoGCN and MGCN:

* :func:`joint_graph` / :func:`user_item_graph` -- the training interactions as
  an :class:`EdgeList` (both directions over users + items, or the
  ``user <- item`` block);
* :class:`EdgeList` -- a fixed directed edge list ``dst <- src`` (sorted by
  ``(dst, src)``, so per-edge values *are* the values of a CSR matrix
  ``A[dst, src]``), with the CSR indices of ``A`` and ``A^T`` precomputed:

  - :meth:`EdgeList.spmm` -- weighted sparse product ``A_w @ x`` with
    gradients to the edge weights ``w`` and the node features ``x``;
  - :meth:`EdgeList.dot` -- per-edge inner products ``<a[dst_e], b[src_e]>``
    (SDDMM) with gradients to ``a`` and ``b`` (one product fewer in the
    backward for ``dot(x, x)`` on a symmetric graph);
  - :meth:`EdgeList.softmax` / :meth:`EdgeList.row_sum` -- per-receiver
    softmax and sums of edge values;
  - :meth:`EdgeList.normalization` -- ``D^-1/2 A D^-1/2`` or ``D^-1 A`` edge values.

* :class:`SparseMatrix` -- a constant sparse operator (a normalised graph) with
  its CSR and transposed CSR built once and cached; ``op(x) = A @ x`` with the
  backward ``A^T @ grad``.

Both products run on ``torch.sparse_csr_tensor``: on CPU a CSR product is
several times faster than ``torch.sparse.mm`` on a COO tensor and one to two
orders of magnitude faster than gathering ``(n_edges, D)`` messages and
``index_add``-ing them; the SDDMM is ``torch.sparse.sampled_addmm`` on the same
pattern (CPU and CUDA). Nothing here materialises a dense users x items or
items x items matrix, or an ``(n_edges, D)`` message tensor.

Index tensors are (non-persistent) buffers: they follow the owning module on
``.to(device)``, are rebuilt from the dataset rather than saved in a
``state_dict``, and deep-copy and pickle like dense tensors. Cached CSR tensors
are dropped whenever the module is moved or copied.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

# torch warns on every CSR construction that the format is "in beta"; ckdlab uses only its
# stable core (construction, sparse x dense products), so the warning says nothing to users.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)

# -- graphs from interactions -----------------------------------------------------


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
    """Joint (users + items) adjacency of the training graph, normalised, as a COO tensor.

    Parameters
    ----------
    kind : {"sym", "mean"}
        ``"sym"``: D^-1/2 A D^-1/2 (LightGCN); ``"mean"``: D^-1 A, rows average the
        neighbours (MMGCN's mean aggregation). Isolated nodes get an all-zero row.

    The backbones use the same matrix as ``SparseMatrix.from_edges(edges, edges.normalization(kind))``
    with ``edges = joint_graph(...)``; this COO form is the reference.
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


def joint_graph(train: np.ndarray, n_users: int, n_items: int) -> "EdgeList":
    """Every training interaction in both directions over users + items (items numbered ``n_users + i``).

    A square, symmetric :class:`EdgeList` of ``n_users + n_items`` nodes; a
    repeated interaction is one edge.
    """
    u = np.asarray(train[:, 0], dtype=np.int64)
    i = np.asarray(train[:, 1], dtype=np.int64) + n_users
    n = n_users + n_items
    return EdgeList(np.concatenate([u, i]), np.concatenate([i, u]), n, n, dedupe=True)


def user_item_graph(train: np.ndarray, n_users: int, n_items: int) -> "EdgeList":
    """The ``user <- item`` edges of the training interactions (``n_users x n_items``, items from 0)."""
    return EdgeList(np.asarray(train[:, 0], dtype=np.int64), np.asarray(train[:, 1], dtype=np.int64),
                    n_users, n_items, dedupe=True)


# -- cached CSR tensors --------------------------------------------------------------


class _CsrCache(nn.Module):
    """A module that caches CSR tensors built from its buffers.

    The cache is cleared when the module is moved or cast (``.to``, ``.cuda``,
    ``.double``: every one goes through ``_apply``) and is never copied or
    pickled (CSR tensors cannot be deep-copied).
    """

    def __init__(self):
        super().__init__()
        self._csr: dict = {}

    def _apply(self, *args, **kwargs):
        self._csr = {}
        return super()._apply(*args, **kwargs)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_csr"] = {}
        return state

    def _cached(self, key, build):
        t = self._csr.get(key)
        if t is None:
            t = self._csr[key] = build()
        return t


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _index_dtype(*sizes: int) -> torch.dtype:
    """int32 CSR indices where they fit (what MKL and cuSPARSE use: no conversion per product)."""
    return torch.int32 if max(sizes, default=0) < 2**31 - 1 else torch.int64


def _csr_mm(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a @ x`` for a CSR ``a`` and a dense ``x``.

    On CPU, ``a @ x`` zero-fills its result and copies it once more after the
    MKL product: two extra passes over an ``(n, D)`` matrix, as costly as the
    product itself on large graphs. ``addmm`` with ``beta=0`` into a fresh
    output writes it once (its content is ignored, NaN included).
    """
    if x.device.type == "cpu":
        out = torch.empty((a.shape[0], x.shape[1]), dtype=x.dtype)
        return torch.addmm(out, a, x, beta=0.0, out=out)
    return a @ x


# -- the edge list ---------------------------------------------------------------------------


def _long(x) -> torch.Tensor:
    t = x.detach().cpu() if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    return t.long().reshape(-1)


class EdgeList(_CsrCache):
    """A fixed directed edge list ``dst <- src`` with CSR indices of ``A`` and ``A^T``.

    Parameters
    ----------
    dst, src : array-like or torch.LongTensor
        Receiver (in ``[0, n_dst)``) and sender (in ``[0, n_src)``) of every edge,
        in any order. They are sorted by ``(dst, src)``: edge ``e`` of the list is
        entry ``e`` of the CSR values of ``A[dst, src]``.
    n_dst : int
        Number of receiver nodes (rows of ``A``).
    n_src : int, optional
        Number of sender nodes (columns of ``A``); defaults to ``n_dst``.
    dedupe : bool
        Keep one copy of a repeated ``(dst, src)`` pair; by default a repeated
        pair is an error.

    Attributes (buffers)
    --------------------
    dst, src : receiver and sender of each edge (sorted by ``(dst, src)``), int64.
    crow, col : CSR row pointer (``n_dst + 1``) and columns (``src``) of ``A``
        (int32 where the sizes allow).
    perm_t, crow_t, col_t : the edges in ``(src, dst)`` order and the CSR row
        pointer / columns of ``A^T``, so ``A^T``'s values are ``values[perm_t]``.
    """

    def __init__(self, dst, src, n_dst: int, n_src: int | None = None, dedupe: bool = False):
        super().__init__()
        n_dst = int(n_dst)
        n_src = n_dst if n_src is None else int(n_src)
        dst, src = _long(dst), _long(src)
        if dst.shape != src.shape:
            raise ValueError(f"dst and src differ in length: {len(dst)} vs {len(src)}")
        if len(dst) and (int(dst.min()) < 0 or int(dst.max()) >= n_dst or int(src.min()) < 0
                         or int(src.max()) >= n_src):
            raise ValueError(f"edge endpoints out of range for a {n_dst} x {n_src} graph")
        key = dst * n_src + src
        if dedupe:
            key = torch.unique(key)  # sorted
        else:
            key, _ = torch.sort(key)
            if len(key) > 1 and bool((key[1:] == key[:-1]).any()):
                raise ValueError("repeated (dst, src) edge; pass dedupe=True to keep one copy")
        dst, src = key // n_src, key % n_src
        perm_t = torch.argsort(src * n_dst + dst)
        self.n_dst, self.n_src = n_dst, n_src
        idx = _index_dtype(n_dst, n_src, len(dst))
        buf = lambda name, t: self.register_buffer(name, t, persistent=False)  # noqa: E731
        buf("dst", dst)
        buf("src", src)
        buf("perm_t", perm_t)
        buf("crow", torch.cat([dst.new_zeros(1), torch.bincount(dst, minlength=n_dst).cumsum(0)]).to(idx))
        buf("col", src.to(idx))
        buf("crow_t", torch.cat([src.new_zeros(1), torch.bincount(src, minlength=n_src).cumsum(0)]).to(idx))
        buf("col_t", dst[perm_t].to(idx))
        #: ``A`` and ``A^T`` have the same pattern (e.g. both directions of every interaction);
        #: then ``perm_t`` maps every edge to its reverse edge
        self.symmetric = (n_dst == n_src and torch.equal(self.crow, self.crow_t)
                          and torch.equal(self.col, self.col_t))

    # -- sizes -------------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return int(self.dst.shape[0])

    def __len__(self) -> int:
        return self.n_edges

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_dst, self.n_src

    def extra_repr(self) -> str:
        return f"{self.n_dst} x {self.n_src}, {self.n_edges} edges"

    # -- matrices ----------------------------------------------------------------
    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """CSR ``A`` with ``A[dst_e, src_e] = values_e``."""
        return _csr(self.crow, self.col, values, self.shape)

    def matrix_t(self, values: torch.Tensor) -> torch.Tensor:
        """CSR ``A^T`` of :meth:`matrix` (``values`` in edge order)."""
        return _csr(self.crow_t, self.col_t, values.index_select(0, self.perm_t), (self.n_src, self.n_dst))

    def _pattern(self, dtype: torch.dtype) -> torch.Tensor:
        return self._cached(("pattern", dtype), lambda: self.matrix(
            torch.zeros(self.n_edges, dtype=dtype, device=self.dst.device)))

    def sddmm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``out_e = <a[dst_e], b[src_e]>`` without autograd (see :meth:`dot`).

        ``torch.sparse.sampled_addmm`` on the CSR pattern; a gather fallback
        where the build lacks it for this device or dtype.
        """
        try:
            return torch.sparse.sampled_addmm(self._pattern(a.dtype), a, b.T, beta=0.0).values()
        except (RuntimeError, NotImplementedError):
            return (a.index_select(0, self.dst) * b.index_select(0, self.src)).sum(dim=-1)

    # -- differentiable operations ---------------------------------------------------
    def spmm(self, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out[r] = sum over edges (r <- s) of weights_e * x[s]``, shape ``(n_dst, D)``.

        Gradients reach ``weights`` (a per-edge SDDMM) and ``x`` (a product with ``A^T``).
        """
        if x.shape[0] != self.n_src:
            raise ValueError(f"x has {x.shape[0]} rows, the edge list has {self.n_src} senders")
        return _EdgeSpmm.apply(weights.contiguous(), x.contiguous(), self)

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-edge inner product ``<a[dst_e], b[src_e]>``, shape ``(n_edges,)`` (SDDMM).

        Gradients reach ``a`` and ``b`` (two sparse products).
        """
        if a.shape[0] != self.n_dst or b.shape[0] != self.n_src:
            raise ValueError(f"a, b have {a.shape[0]}, {b.shape[0]} rows; the edge list is {self.n_dst} x {self.n_src}")
        if a is b and self.symmetric:  # <x_i, x_j> on a symmetric graph: one product in the backward
            return _EdgeSelfDot.apply(a.contiguous(), self)
        return _EdgeDot.apply(a.contiguous(), b.contiguous(), self)

    def softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax of edge ``logits`` over the edges into each receiver.

        The per-receiver maximum is subtracted for stability (detached, which
        leaves the value and the gradient unchanged).
        """
        return _EdgeSoftmax.apply(logits, self)

    def row_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of edge ``values`` per receiver, length ``n_dst``."""
        return torch.zeros(self.n_dst, device=values.device, dtype=values.dtype).index_add(0, self.dst, values)

    # -- normalisation -----------------------------------------------------------------
    def normalization(self, kind: str = "sym") -> torch.Tensor:
        """Per-edge values of the normalised adjacency (float32).

        ``"sym"``: ``1 / sqrt(deg_dst(dst) deg_src(src))`` with ``deg_dst`` the edges
        into a receiver and ``deg_src`` the edges out of a sender (for a symmetric
        graph both are the node degree: LightGCN's ``D^-1/2 A D^-1/2``; for the
        user <- item block, MGCN's ``R``); ``"mean"``: ``1 / deg_dst(dst)``
        (rows average their neighbours). Computed in float64, as
        :func:`normalized_adjacency`.
        """
        deg_dst = (self.crow[1:] - self.crow[:-1]).to(torch.float64)
        if kind == "sym":
            deg_src = (self.crow_t[1:] - self.crow_t[:-1]).to(torch.float64)
            inv_dst = torch.where(deg_dst > 0, deg_dst.clamp_min(1) ** -0.5, torch.zeros_like(deg_dst))
            inv_src = torch.where(deg_src > 0, deg_src.clamp_min(1) ** -0.5, torch.zeros_like(deg_src))
            values = inv_dst[self.dst] * inv_src[self.src]
        elif kind == "mean":
            values = (1.0 / deg_dst.clamp_min(1))[self.dst]
        else:
            raise ValueError(f"unknown normalisation {kind!r}; expected 'sym' or 'mean'")
        return values.to(torch.float32)

    def operator(self, values: torch.Tensor) -> "SparseMatrix":
        """The constant :class:`SparseMatrix` with these edge values (no gradient to them)."""
        return SparseMatrix.from_edges(self, values)


def segment_softmax(logits: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of ``logits`` among the entries sharing the same ``index`` (receiver), in ``[0, n)``.

    The per-group maximum is subtracted for stability. Differentiable by
    autograd; :meth:`EdgeList.softmax` is the same with a hand-written backward.
    """
    amax = torch.full((n,), float("-inf"), dtype=logits.dtype, device=logits.device)
    amax = amax.scatter_reduce(0, index, logits.detach(), reduce="amax", include_self=True)
    ex = (logits - amax.index_select(0, index)).exp()
    denom = torch.zeros(n, dtype=logits.dtype, device=logits.device).index_add(0, index, ex)
    return ex / denom.index_select(0, index)


class _EdgeSoftmax(torch.autograd.Function):
    """Per-receiver softmax of edge logits; backward ``y * (g - sum_receiver(g * y))``."""

    @staticmethod
    def forward(ctx, logits, edges):
        y = segment_softmax(logits, edges.dst, edges.n_dst)
        ctx.save_for_backward(y)
        ctx.edges = edges
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        gy = grad * y
        return gy - y * ctx.edges.row_sum(gy).index_select(0, ctx.edges.dst), None


class _EdgeSelfDot(torch.autograd.Function):
    """``out_e = <x[dst_e], x[src_e]>`` on a symmetric pattern; backward ``A(g + g_reverse) @ x``."""

    @staticmethod
    def forward(ctx, x, edges):
        ctx.save_for_backward(x)
        ctx.edges = edges
        return edges.sddmm(x, x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        e = ctx.edges
        return _csr_mm(e.matrix(grad + grad.index_select(0, e.perm_t)), x), None


class _EdgeDot(torch.autograd.Function):
    """``out_e = <a[dst_e], b[src_e]>`` (SDDMM); backward ``A(g) @ b`` and ``A(g)^T @ a``."""

    @staticmethod
    def forward(ctx, a, b, edges):
        ctx.save_for_backward(a, b)
        ctx.edges = edges
        return edges.sddmm(a, b)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        e = ctx.edges
        grad = grad.contiguous()
        ga = _csr_mm(e.matrix(grad), b) if ctx.needs_input_grad[0] else None
        gb = _csr_mm(e.matrix_t(grad), a) if ctx.needs_input_grad[1] else None
        return ga, gb, None


class _EdgeSpmm(torch.autograd.Function):
    """``out_r = sum_{e: dst_e = r} w_e x[src_e]``; backward: SDDMM for ``w``, ``A_w^T @ g`` for ``x``."""

    @staticmethod
    def forward(ctx, w, x, edges):
        ctx.save_for_backward(w, x)
        ctx.edges = edges
        return _csr_mm(edges.matrix(w), x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        w, x = ctx.saved_tensors
        e = ctx.edges
        grad = grad.contiguous()
        gw = e.sddmm(grad, x) if ctx.needs_input_grad[0] else None
        gx = _csr_mm(e.matrix_t(w), grad) if ctx.needs_input_grad[1] else None
        return gw, gx, None


# -- the constant operator -----------------------------------------------------------------


class _FixedSpmm(torch.autograd.Function):
    """``A @ x`` for a constant sparse ``A``; the backward uses the cached ``A^T``."""

    @staticmethod
    def forward(ctx, x, op):
        ctx.op = op
        return _csr_mm(op.csr(), x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return _csr_mm(ctx.op.csr_t(), grad.contiguous()), None


class SparseMatrix(_CsrCache):
    """A constant sparse matrix (a normalised graph) used as a linear operator.

    Stores the CSR indices and values of the matrix and of its transpose as
    non-persistent buffers (so the operator follows the module on
    ``.to(device)``, deep-copies and pickles, and stays out of ``state_dict``);
    the CSR tensors themselves are built once per device and cached. ``op(x)``
    computes ``A @ x`` with autograd to ``x``; the backward is ``A^T @ grad``
    with the precomputed transpose.

    Parameters
    ----------
    matrix : torch.Tensor
        Sparse COO or CSR ``(n_rows, n_cols)`` matrix (e.g. from
        :func:`ckdlab.knn.knn_graph` or :func:`normalized_adjacency`).
        See also :meth:`from_edges`.
    """

    def __init__(self, matrix: torch.Tensor | None = None):
        super().__init__()
        if matrix is None:  # filled in by from_edges
            return
        coo = (matrix.to_sparse_coo() if matrix.layout != torch.sparse_coo else matrix).coalesce().cpu()
        coo = coo.to(torch.float32)
        self.shape = tuple(coo.shape)
        idx = _index_dtype(*self.shape, coo._nnz())
        for prefix, m in (("", coo), ("t_", coo.t().coalesce())):
            csr = m.to_sparse_csr()
            self.register_buffer(prefix + "crow", csr.crow_indices().to(idx), persistent=False)
            self.register_buffer(prefix + "col", csr.col_indices().to(idx), persistent=False)
            self.register_buffer(prefix + "val", csr.values(), persistent=False)

    @classmethod
    def from_edges(cls, edges: EdgeList, values: torch.Tensor) -> "SparseMatrix":
        """The matrix with ``A[dst_e, src_e] = values_e`` on the pattern of ``edges``."""
        values = values.detach().to(device=edges.dst.device)
        if values.shape != (edges.n_edges,):
            raise ValueError(f"expected {edges.n_edges} edge values, got shape {tuple(values.shape)}")
        op = cls()
        op.shape = edges.shape
        for name, t in (("crow", edges.crow), ("col", edges.col), ("val", values),
                        ("t_crow", edges.crow_t), ("t_col", edges.col_t), ("t_val", values[edges.perm_t])):
            op.register_buffer(name, t.clone(), persistent=False)
        return op

    def extra_repr(self) -> str:
        return f"{self.shape[0]} x {self.shape[1]}, {int(self.val.shape[0])} non-zeros"

    def csr(self) -> torch.Tensor:
        return self._cached("a", lambda: _csr(self.crow, self.col, self.val, self.shape))

    def csr_t(self) -> torch.Tensor:
        return self._cached("t", lambda: _csr(self.t_crow, self.t_col, self.t_val, self.shape[::-1]))

    def to_dense(self) -> torch.Tensor:
        return self.csr().to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.val.dtype:
            raise TypeError(f"SparseMatrix is {self.val.dtype}; got x of {x.dtype}")
        if x.shape[0] != self.shape[1]:
            raise ValueError(f"x has {x.shape[0]} rows, the matrix has {self.shape[1]} columns")
        return _FixedSpmm.apply(x.contiguous(), self)
