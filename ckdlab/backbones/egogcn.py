"""EgoGCN: multimodal graph fusion by edge-wise modulation (early fusion).

Reference
---------
F. Chen, J. Wang, Y. Wei, H.-T. Zheng, J. Shao. "Breaking Isolation: Multimodal
Graph Fusion for Multimedia Recommendation by Edge-wise Modulation." ACM MM 2022.
Released code: github.com/feiyuchen7/EgoGCN (``Model_routing_*.py``, ``GATConv_pre.py``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..graph import bipartite_edges
from ..modality import ModalityInputs
from .base import Backbone, register


def edge_softmax(logits: torch.Tensor, index: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Softmax of per-edge ``logits`` over the edges that share the same ``index`` (receiver).

    Vectorised over the edge list (``scatter_reduce`` / ``index_add``); the
    per-group maximum is subtracted for stability (and detached, which leaves
    the value and the gradient of the softmax unchanged).
    """
    mx = torch.full((n_nodes,), float("-inf"), dtype=logits.dtype, device=logits.device)
    mx = mx.scatter_reduce(0, index, logits.detach(), reduce="amax", include_self=True)
    e = (logits - mx.index_select(0, index)).exp()
    denom = torch.zeros(n_nodes, dtype=logits.dtype, device=logits.device).index_add_(0, index, e)
    return e / denom.index_select(0, index)


class EdgeList(nn.Module):
    """Directed edges ``src -> dst`` over ``n_nodes`` nodes, with CSR indices for fast edge ops.

    Edges are sorted by ``(dst, src)`` so that per-edge values are directly the
    values of a CSR matrix ``A[dst, src]``; ``perm_t`` reorders them for ``A^T``.
    Everything is a (non-persistent) buffer and follows the module's device.
    """

    def __init__(self, src: np.ndarray, dst: np.ndarray, n_nodes: int):
        super().__init__()
        src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
        order = np.lexsort((src, dst))
        src, dst = src[order], dst[order]
        perm_t = np.lexsort((dst, src))
        self.n_nodes = int(n_nodes)
        as_t = torch.as_tensor
        self.register_buffer("src", as_t(src), persistent=False)
        self.register_buffer("dst", as_t(dst), persistent=False)
        self.register_buffer("crow", as_t(np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=n_nodes))])),
                             persistent=False)
        self.register_buffer("perm_t", as_t(perm_t), persistent=False)
        self.register_buffer("crow_t", as_t(np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n_nodes))])),
                             persistent=False)
        self.register_buffer("col_t", as_t(dst[perm_t]), persistent=False)
        self.register_buffer("zeros", torch.zeros(len(src)), persistent=False)

    @property
    def n_edges(self) -> int:
        return int(self.src.shape[0])

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """CSR ``A`` with ``A[dst_e, src_e] = values_e``."""
        n = self.n_nodes
        return torch.sparse_csr_tensor(self.crow, self.src, values, (n, n), check_invariants=False)

    def matrix_t(self, values: torch.Tensor) -> torch.Tensor:
        """CSR ``A^T`` of :meth:`matrix`."""
        n = self.n_nodes
        return torch.sparse_csr_tensor(self.crow_t, self.col_t, values.index_select(0, self.perm_t), (n, n),
                                       check_invariants=False)

    def sddmm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``out_e = <a[dst_e], b[src_e]>`` for every edge (no gradient; used inside the autograd ops).

        ``torch.sparse.sampled_addmm`` on the CSR pattern (several times faster on
        CPU than gathering two ``(n_edges, D)`` tensors); gather fallback where
        a build lacks it.
        """
        if a.dtype == self.zeros.dtype:
            try:
                pattern = self.matrix(self.zeros)
                return torch.sparse.sampled_addmm(pattern, a, b.T, beta=0.0).values()
            except (RuntimeError, NotImplementedError):
                pass
        return (a.index_select(0, self.dst) * b.index_select(0, self.src)).sum(dim=-1)

    def sym_norm(self) -> torch.Tensor:
        """Per-edge ``1 / sqrt(deg(dst) deg(src))`` (LightGCN normalisation), degree = incoming edges."""
        deg = (self.crow[1:] - self.crow[:-1]).to(torch.float32)
        inv = torch.where(deg > 0, deg.clamp_min(1).rsqrt(), torch.zeros_like(deg))
        return inv.index_select(0, self.dst) * inv.index_select(0, self.src)


class _EdgeDot(torch.autograd.Function):
    """``out_e = <a[dst_e], b[src_e]>`` (SDDMM); backward by two sparse products."""

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
        ga = e.matrix(grad) @ b if ctx.needs_input_grad[0] else None
        gb = e.matrix_t(grad) @ a if ctx.needs_input_grad[1] else None
        return ga, gb, None


class _EdgeSpmm(torch.autograd.Function):
    """``out_i = sum_{e: dst_e = i} w_e x[src_e]`` (SpMM with per-edge weights)."""

    @staticmethod
    def forward(ctx, w, x, edges):
        ctx.save_for_backward(w, x)
        ctx.edges = edges
        return edges.matrix(w) @ x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        w, x = ctx.saved_tensors
        e = ctx.edges
        grad = grad.contiguous()
        gw = e.sddmm(grad, x) if ctx.needs_input_grad[0] else None
        gx = e.matrix_t(w) @ grad if ctx.needs_input_grad[1] else None
        return gw, gx, None


def edge_dot(a: torch.Tensor, b: torch.Tensor, edges: EdgeList) -> torch.Tensor:
    """Per-edge inner product ``<a[dst_e], b[src_e]>``, shape ``(n_edges,)``."""
    return _EdgeDot.apply(a.contiguous(), b.contiguous(), edges)


def edge_spmm(weights: torch.Tensor, x: torch.Tensor, edges: EdgeList) -> torch.Tensor:
    """Weighted neighbour sum ``out_i = sum_{e: j -> i} w_e x_j``, shape ``(n_nodes, D)``."""
    return _EdgeSpmm.apply(weights.contiguous(), x.contiguous(), edges)


def _gate_key(receiver: str, sender: str) -> str:
    return f"{receiver}__from__{sender}"


class EdgeModulationLayer(nn.Module):
    """One edge-wise modulation fusion layer over all modality branches.

    For every directed edge ``j -> i`` of the user-item graph and every modality
    branch ``m`` (node states ``h^m``):

    1. candidate messages from the sender, one per modality ``m'``:
       ``c^{m,m}_j = h^m_j`` and, for ``m' != m``,
       ``c^{m,m'}_j = sigmoid(W_{m<-m'} h^{m'}_j + b_{m<-m'}) * h^{m'}_j``
       (the soft gating of the released ``GATConv_pre``);
    2. edge-wise inter-modal attention: the receiver's state in ``m`` attends
       over the sender's candidates, ``beta_{ij,m'} = softmax_{m'} <h^m_i, c^{m,m'}_j>``,
       and the modulated message is ``mu^m_{ij} = sum_{m'} beta_{ij,m'} c^{m,m'}_j``;
    3. intra-modal neighbour attention on the modulated message (the released
       ``reattn=True``): ``alpha_{ij} = softmax_{j in N(i)} <h^m_i, mu^m_{ij}>``;
    4. ``h^m_i <- normalize(h^m_i + sum_j alpha_{ij} mu^m_{ij})`` (residual and
       L2 normalisation as in the released routing layers).

    With one modality the layer reduces to the parameter-free attention
    propagation of the released ``GATConv_ori``.

    Nothing of size ``(n_edges, M, D)`` is materialised: since
    ``<h^m_i, mu^m_ij> = sum_m' beta_m' <h^m_i, c^{m,m'}_j>``, the per-edge inner
    products are SDDMMs on the graph's CSR pattern (:func:`edge_dot`) and the
    aggregation is ``sum_m' A(alpha * beta_m') c^{m,m'}``, sparse products with
    per-edge weights (:func:`edge_spmm`); both have hand-written backwards.
    """

    def __init__(self, modalities: tuple[str, ...], dim: int):
        super().__init__()
        self.modalities = tuple(modalities)
        self.gates = nn.ModuleDict({
            _gate_key(m, m2): nn.Linear(dim, dim) for m in self.modalities for m2 in self.modalities if m2 != m
        })

    def gate_parameters(self, receiver: str) -> list[nn.Parameter]:
        """Gates owned by branch ``receiver`` (those that modulate what it receives)."""
        return [p for m2 in self.modalities if m2 != receiver
                for p in self.gates[_gate_key(receiver, m2)].parameters()]

    def forward(self, h: dict[str, torch.Tensor], edges: EdgeList) -> dict[str, torch.Tensor]:
        out = {}
        for m in self.modalities:
            # candidate messages, computed per sender node (edge-independent)
            cands = [h[m2] if m2 == m else torch.sigmoid(self.gates[_gate_key(m, m2)](h[m2])) * h[m2]
                     for m2 in self.modalities]
            logits = [edge_dot(h[m], c, edges) for c in cands]  # <h^m_i, c^{m,m'}_j> per edge
            if len(cands) == 1:
                betas = [None]
                score = logits[0]
            else:
                lg = torch.stack(logits, dim=1)  # (E, M)
                beta = torch.softmax(lg, dim=1)
                betas = beta.unbind(dim=1)
                score = (beta * lg).sum(dim=1)  # = <h^m_i, mu^m_ij>
            alpha = edge_softmax(score, edges.dst, edges.n_nodes)
            # sum_j alpha_ij mu_ij = sum_m' A(alpha * beta_m') @ c^{m,m'}
            agg = sum(edge_spmm(alpha if b is None else alpha * b, c, edges) for b, c in zip(betas, cands))
            out[m] = F.normalize(h[m] + agg, dim=1)
        return out


@register("EgoGCN")
class EgoGCN(Backbone):
    """EgoGCN (Chen et al., MM 2022): modality graphs fused edge by edge (early fusion).

    Parts
    -----
    * **ID branch**: free user/item ID embeddings propagated on the symmetric
      normalised user-item graph (LightGCN-like, parameter-free layers); the part
      is the mean of layers ``0..n_layers``.
    * **Modality branches**, one per modality ``m``: node inputs are the user
      preference ``p^m_u`` (a trained ``(n_users, D)`` parameter, L2-normalised) and
      the projected item feature ``normalize(leaky_relu(W_m x^m_i + b_m))``. They
      go through ``n_layers`` :class:`EdgeModulationLayer`, each with its own
      gates, where every edge's message in one modality is modulated by the
      other modalities' messages on the same edge, so information crosses
      modalities inside the graph.
    * Final representation of users and items: ``[ID part ; part of m_1 ; ... ; part of m_M]``,
      dimension ``D * (1 + M)``; score = inner product.

    Ablation (CKD eq. 8/10): the ablated modality's items all receive the mean
    feature (``inputs[m]``) and its users the mean preference over users
    (:meth:`Backbone.mean_user_preference`); the model then depends on ``m``'s
    features only through their item mean.

    Parameters
    ----------
    dataset : ckdlab.data.Dataset
        Sizes, feature dimensions and the training graph (features are not kept).
    embedding_size : int
        ``D``, the size of the ID part and of each modality part (default 64).
    n_layers : int
        Edge-modulation layers of the modality branches and propagation layers
        of the ID branch (default 2).
    negative_slope : float
        Leaky-ReLU slope of the feature projection (default 0.01, PyTorch's).

    Notes
    -----
    Deviations from the released code, on purpose:

    * The released ``RealGCN`` computes its third layer from the first
      (``conv_embed_3(x_hat_1)``); here layer ``l`` takes layer ``l-1``, and every
      modality layer has its own gate parameters.
    * The released code keeps one fusion layer followed by ``num_routing``
      parameter-free attention layers and hard-codes three modalities
      (``x, y, z``); here all ``n_layers`` layers fuse, for any number of modalities.
    * Only the soft modulation (``alpha_threshold='=0'``, "EgoGCN-soft") is
      implemented, written as attention over the modality candidates of each
      edge rather than a fixed mean of the gated messages; the hard threshold
      variant is not.
    * The preference is normalised in the forward pass instead of being
      overwritten in place (``preference.data = F.normalize(...)``).
    * The ID part is the mean over layers (LightGCN) instead of their sum.
    * Regularisation is the :class:`Backbone` default (final representations),
      not the released mean squared ego embeddings.
    """

    def __init__(self, dataset, embedding_size: int = 64, n_layers: int = 2, negative_slope: float = 0.01):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"EgoGCN needs n_layers >= 1, got {n_layers}")
        self.n_users, self.n_items = int(dataset.n_users), int(dataset.n_items)
        self.modalities = tuple(dataset.modalities)
        if not self.modalities:
            raise ValueError("EgoGCN needs at least one modality")
        self.embedding_size, self.n_layers = int(embedding_size), int(n_layers)
        self.negative_slope = float(negative_slope)
        n, d = self.n_users + self.n_items, self.embedding_size

        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(n, d)))
        self.preference = nn.ParameterDict({
            m: nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, d))) for m in self.modalities
        })
        self.projection = nn.ModuleDict({m: nn.Linear(int(f.shape[1]), d) for m, f in dataset.features.items()})
        self.layers = nn.ModuleList([EdgeModulationLayer(self.modalities, d) for _ in range(self.n_layers)])

        src, dst = bipartite_edges(np.asarray(dataset.train, dtype=np.int64), self.n_users)
        self.edges = EdgeList(src, dst, n)
        self.register_buffer("adj_values", self.edges.sym_norm(), persistent=False)

    # -- parts ---------------------------------------------------------------
    def id_part(self) -> torch.Tensor:
        """``(n_users + n_items, D)`` LightGCN mean over layers of the ID embeddings."""
        x = self.id_embedding
        acc = x
        for _ in range(self.n_layers):
            x = edge_spmm(self.adj_values, x, self.edges)
            acc = acc + x
        return acc / (self.n_layers + 1)

    def node_inputs(self, inputs: ModalityInputs) -> dict[str, torch.Tensor]:
        """Layer-0 node states per modality: ``[user preference ; projected item feature]``."""
        h = {}
        for m in self.modalities:
            pref = self.mean_user_preference(F.normalize(self.preference[m], dim=1), inputs, m)
            feat = F.normalize(F.leaky_relu(self.projection[m](inputs[m]), self.negative_slope), dim=1)
            h[m] = torch.cat([pref, feat], dim=0)
        return h

    def modality_parts(self, inputs: ModalityInputs) -> dict[str, torch.Tensor]:
        """``(n_users + n_items, D)`` output of each modality branch."""
        h = self.node_inputs(inputs)
        for layer in self.layers:
            h = layer(h, self.edges)
        return h

    def forward(self, inputs: ModalityInputs) -> tuple[torch.Tensor, torch.Tensor]:
        missing = set(self.modalities) - set(inputs.names)
        if missing:
            raise KeyError(f"EgoGCN was built for modalities {self.modalities}; inputs lack {sorted(missing)}")
        mod = self.modality_parts(inputs)
        reps = torch.cat([self.id_part()] + [mod[m] for m in self.modalities], dim=1)
        return reps[: self.n_users], reps[self.n_users:]

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        """Parameters of ``modality``'s branch (an approximate split, as in CKD sec. 3).

        EgoGCN fuses modalities inside the graph, so no exact split exists
        (the CKD paper "roughly divides the parameters"). Here ``m`` owns its
        user preference ``p^m``, its feature projection ``W_m, b_m`` and, in every
        layer, the gates of its own branch (``W_{m<-m'}``, which modulate what
        branch ``m`` receives from the other modalities). The ID embeddings
        belong to no modality.
        """
        if modality not in self.modalities:
            raise KeyError(f"unknown modality {modality!r}; have {self.modalities}")
        params = [self.preference[modality], *self.projection[modality].parameters()]
        for layer in self.layers:
            params += layer.gate_parameters(modality)
        return params
