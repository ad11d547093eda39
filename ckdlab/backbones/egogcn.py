"""EgoGCN: multimodal graph fusion by edge-wise modulation (early fusion).

Reference
---------
F. Chen, J. Wang, Y. Wei, H.-T. Zheng, J. Shao. "Breaking Isolation: Multimodal
Graph Fusion for Multimedia Recommendation by Edge-wise Modulation." ACM MM 2022.
Released code: github.com/feiyuchen7/EgoGCN (``Model_routing_*.py``, ``GATConv_pre.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import EdgeList, joint_graph
from ..modality import ModalityInputs
from ._layers import add_all, l2_normalize, sigmoid_gate
from .base import Backbone
from .registry import register


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
    products are SDDMMs on the graph's CSR pattern (:meth:`EdgeList.dot`) and the
    aggregation is ``sum_m' A(alpha * beta_m') c^{m,m'}``, sparse products with
    per-edge weights (:meth:`EdgeList.spmm`); both have hand-written backwards
    (:mod:`ckdlab.graph`).
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
            cands = [h[m2] if m2 == m else sigmoid_gate(self.gates[_gate_key(m, m2)](h[m2]), h[m2])
                     for m2 in self.modalities]
            logits = [edges.dot(h[m], c) for c in cands]  # <h^m_i, c^{m,m'}_j> per edge
            if len(cands) == 1:
                betas = [None]
                score = logits[0]
            else:
                lg = torch.stack(logits, dim=0)  # (M, E): softmax over the leading axis (fast for small M)
                beta = torch.softmax(lg, dim=0)
                betas = beta.unbind(dim=0)
                score = (beta * lg).sum(dim=0)  # = <h^m_i, mu^m_ij>
            alpha = edges.softmax(score)
            # sum_j alpha_ij mu_ij = sum_m' A(alpha * beta_m') @ c^{m,m'}
            agg = add_all(edges.spmm(alpha if b is None else alpha * b, c) for b, c in zip(betas, cands))
            out[m] = l2_normalize(h[m] + agg)
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
    embedding_dim : int
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

    def __init__(self, dataset, embedding_dim: int = 64, n_layers: int = 2, negative_slope: float = 0.01):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"EgoGCN needs n_layers >= 1, got {n_layers}")
        self.n_users, self.n_items = int(dataset.n_users), int(dataset.n_items)
        self.modalities = tuple(dataset.modalities)
        if not self.modalities:
            raise ValueError("EgoGCN needs at least one modality")
        self.embedding_dim, self.n_layers = int(embedding_dim), int(n_layers)
        self.negative_slope = float(negative_slope)
        n, d = self.n_users + self.n_items, self.embedding_dim

        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(n, d)))
        self.preference = nn.ParameterDict({
            m: nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, d))) for m in self.modalities
        })
        self.projection = nn.ModuleDict({m: nn.Linear(int(f.shape[1]), d) for m, f in dataset.features.items()})
        self.layers = nn.ModuleList([EdgeModulationLayer(self.modalities, d) for _ in range(self.n_layers)])

        #: the user-item training graph, both directions (the modality branches' attention)
        self.edges = joint_graph(dataset.train, self.n_users, self.n_items)
        #: its ``D^-1/2 A D^-1/2`` as a constant operator (the ID branch)
        self.adj = self.edges.operator(self.edges.normalization("sym"))

    # -- parts ---------------------------------------------------------------
    def id_part(self) -> torch.Tensor:
        """``(n_users + n_items, D)`` LightGCN mean over layers of the ID embeddings."""
        x = self.id_embedding
        acc = x
        for _ in range(self.n_layers):
            x = self.adj(x)
            acc = acc + x
        return acc / (self.n_layers + 1)

    def node_inputs(self, inputs: ModalityInputs) -> dict[str, torch.Tensor]:
        """Layer-0 node states per modality: ``[user preference ; projected item feature]``."""
        h = {}
        for m in self.modalities:
            pref = self.mean_user_preference(l2_normalize(self.preference[m]), inputs, m)
            feat = l2_normalize(F.leaky_relu(self.projection[m](inputs[m]), self.negative_slope))
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
        # the ID branch does not see the features: the passes of one training step share it
        id_part = self.memoised(("id_part",), self.id_embedding, self.id_part)
        reps = torch.cat([id_part] + [mod[m] for m in self.modalities], dim=1)
        # split, not two slices: the backward joins the two gradients in one copy instead of
        # zero-filling a gradient of all nodes per slice and adding the two
        return reps.split([self.n_users, self.n_items])

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
