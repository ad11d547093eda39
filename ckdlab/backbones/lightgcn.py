"""LightGCN: a reference recommender on user and item IDs only, propagated on the interaction graph.

Reference
---------
X. He, K. Deng, X. Wang, Y. Li, Y. Zhang, M. Wang. "LightGCN: Simplifying and
Powering Graph Convolution Network for Recommendation." SIGIR 2020.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..graph import joint_graph
from ..modality import ModalityInputs
from ._layers import embedding_l2
from .base import Backbone
from .registry import register


@register("LightGCN")
class LightGCN(Backbone):
    """LightGCN (He et al., SIGIR 2020): ID embeddings averaged over graph-propagation layers.

    With ``E^(0)`` the user and item ID embeddings stacked over the joint
    (users + items) node set and ``A_hat = D^-1/2 A D^-1/2`` the symmetric
    normalised adjacency of the training interactions,
    ``E^(l+1) = A_hat E^(l)`` and the final representation is the mean over
    layers ``0..n_layers``: ``(E^(0) + ... + E^(n_layers)) / (n_layers + 1)``.
    Content is ignored, so its per-modality metrics equal its overall metrics.

    The L2 penalty is on the batch's layer-0 embeddings, as in the paper and in
    MMRec's implementation (not on the propagated representations).

    Parameters
    ----------
    dataset : ckdlab.data.Dataset
        Sizes and the training graph.
    embedding_dim : int
        Size of the ID embeddings (64, as for every backbone).
    n_layers : int
        Propagation layers (default 3; 0 is matrix factorisation).
    """

    def __init__(self, dataset, embedding_dim: int = 64, n_layers: int = 3):
        super().__init__()
        if int(n_layers) < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        self.n_users, self.n_items = int(dataset.n_users), int(dataset.n_items)
        self.n_layers = int(n_layers)
        self.user_id = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, embedding_dim)))
        self.item_id = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, embedding_dim)))
        joint = joint_graph(np.asarray(dataset.train, dtype=np.int64), self.n_users, self.n_items)
        #: ``D^-1/2 A D^-1/2`` of the joint user-item graph
        self.adj = joint.operator(joint.normalization("sym"))

    def propagate(self) -> torch.Tensor:
        """Mean over layers ``0..n_layers`` of the propagated ID embeddings, ``(n_users + n_items, D)``."""
        x = torch.cat([self.user_id, self.item_id], dim=0)
        acc = x
        for _ in range(self.n_layers):
            x = self.adj(x)
            acc = acc + x
        return acc / (self.n_layers + 1)

    def forward(self, inputs: ModalityInputs) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.propagate()
        return out.split([self.n_users, self.n_items])  # one gradient copy, not two zero-filled slices

    def regularization(self, user_reps, item_reps, users, pos, neg) -> torch.Tensor:
        return embedding_l2(users, pos, neg, [self.user_id], [self.item_id])
