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

from ..graph import bipartite_edges, normalized_adjacency
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
    """

    def __init__(self, modalities: tuple[str, ...], dim: int):
        super().__init__()
        self.modalities = tuple(modalities)
        self.gates = nn.ModuleDict({
            _gate_key(m, m2): nn.Linear(dim, dim) for m in self.modalities for m2 in self.modalities if m2 != m
        })

    def gate_parameters(self, receiver: str) -> list[nn.Parameter]:
        """Gates owned by branch ``receiver`` (those that modulate what it receives)."""
        return [p for m2 in self.modalities if m2 != receiver for p in self.gates[_gate_key(receiver, m2)].parameters()]

    def forward(self, h: dict[str, torch.Tensor], src: torch.Tensor, dst: torch.Tensor) -> dict[str, torch.Tensor]:
        n_nodes = next(iter(h.values())).shape[0]
        out = {}
        for m in self.modalities:
            recv = h[m].index_select(0, dst)  # (E, D) receiver state of every edge
            cands = []
            for m2 in self.modalities:
                c = h[m2] if m2 == m else torch.sigmoid(self.gates[_gate_key(m, m2)](h[m2])) * h[m2]
                cands.append(c.index_select(0, src))
            if len(cands) == 1:
                msg = cands[0]
            else:
                cand = torch.stack(cands, dim=1)  # (E, M, D)
                beta = torch.softmax(torch.einsum("emd,ed->em", cand, recv), dim=1)
                msg = torch.einsum("em,emd->ed", beta, cand)
            alpha = edge_softmax((recv * msg).sum(dim=-1), dst, n_nodes)
            agg = torch.zeros_like(h[m]).index_add_(0, dst, alpha.unsqueeze(-1) * msg)
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
        self.embedding_size, self.n_layers, self.negative_slope = int(embedding_size), int(n_layers), float(negative_slope)
        n, d = self.n_users + self.n_items, self.embedding_size

        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(n, d)))
        self.preference = nn.ParameterDict({
            m: nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, d))) for m in self.modalities
        })
        self.projection = nn.ModuleDict({m: nn.Linear(int(f.shape[1]), d) for m, f in dataset.features.items()})
        self.layers = nn.ModuleList([EdgeModulationLayer(self.modalities, d) for _ in range(self.n_layers)])

        train = np.asarray(dataset.train, dtype=np.int64)
        src, dst = bipartite_edges(train, self.n_users)
        self.register_buffer("src", torch.as_tensor(src), persistent=False)
        self.register_buffer("dst", torch.as_tensor(dst), persistent=False)
        self.register_buffer("adj", normalized_adjacency(train, self.n_users, self.n_items, "sym"), persistent=False)

    # -- parts ---------------------------------------------------------------
    def id_part(self) -> torch.Tensor:
        """``(n_users + n_items, D)`` LightGCN mean over layers of the ID embeddings."""
        x = self.id_embedding
        acc = x
        for _ in range(self.n_layers):
            x = torch.sparse.mm(self.adj, x)
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
            h = layer(h, self.src, self.dst)
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
