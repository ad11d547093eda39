"""LightGCN with feature projections: a backbone written from scratch against the ckdlab contract.

The worked example of docs/backbones.md. Every node starts from its ID embedding
concatenated with one part per modality m: for an item, its projected feature
``W_m e_i^m + b_m``; for a user, a learned preference ``p_u^m``. LightGCN's
parameter-free propagation (He et al., SIGIR 2020) averages
``x, A x, ..., A^L x`` over the symmetrically normalised user-item graph ``A``.
Propagation is linear and acts on each column alike, so the score
``user . item`` is the sum of an ID part and one part per modality.

Ablation (the contract): ``inputs[m]`` is already the item mean when ``m`` is
ablated, and ``mean_user_preference`` replaces ``p_u^m`` by its mean over users.
"""
from __future__ import annotations

import torch
from torch import nn

from ckdlab import register_backbone
from ckdlab.backbones import Backbone
from ckdlab.modality import ModalityInputs


def normalized_adjacency(train, n_users: int, n_items: int) -> torch.Tensor:
    """``D^-1/2 A D^-1/2`` of the user-item graph (users first, then items), sparse COO."""
    train = torch.as_tensor(train, dtype=torch.long)
    users, items = train[:, 0], train[:, 1] + n_users
    rows, cols = torch.cat([users, items]), torch.cat([items, users])
    degree = torch.bincount(rows, minlength=n_users + n_items).float().clamp_min(1)
    values = degree[rows].rsqrt() * degree[cols].rsqrt()
    n = n_users + n_items
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=True).coalesce()


@register_backbone("LightGCN-F")
class LightGCNFeatures(Backbone):
    """LightGCN over [ID ; one part per modality] node embeddings.

    Parameters
    ----------
    dataset : Dataset
        Read for sizes, modality dimensions and the training graph (features are not kept).
    embedding_dim : int
        Size of the ID part and of each modality part.
    n_layers : int
        Propagation layers L.
    """

    def __init__(self, dataset, embedding_dim: int = 64, n_layers: int = 2):
        super().__init__()
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self.modalities = tuple(dataset.features)
        self.n_layers = n_layers
        self.user_id = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, embedding_dim)))
        self.item_id = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_items, embedding_dim)))
        self.preference = nn.ParameterDict({
            m: nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, embedding_dim)))
            for m in self.modalities})
        self.projection = nn.ModuleDict({m: nn.Linear(f.shape[1], embedding_dim) for m, f in dataset.features.items()})
        # the graph is a constant: not a parameter, not in the state dict, moved by .to(device)
        self.register_buffer("adj", normalized_adjacency(dataset.train, self.n_users, self.n_items),
                             persistent=False)

    def forward(self, inputs: ModalityInputs) -> tuple[torch.Tensor, torch.Tensor]:
        users = [self.user_id] + [self.mean_user_preference(self.preference[m], inputs, m) for m in self.modalities]
        items = [self.item_id] + [self._project(inputs, m) for m in self.modalities]
        x = torch.cat([torch.cat(users, dim=1), torch.cat(items, dim=1)], dim=0)
        total = x
        for _ in range(self.n_layers):
            x = torch.sparse.mm(self.adj, x)
            total = total + x
        out = total / (self.n_layers + 1)
        return out[: self.n_users], out[self.n_users:]

    def _project(self, inputs: ModalityInputs, m: str) -> torch.Tensor:
        """``W_m e^m + b_m`` for every item; shared by the passes of one step (``step_scope``)."""
        if inputs.is_ablated(m):  # identical rows: project the mean once
            return self.memoised(("mean", m), inputs.mean(m),
                                 lambda: self.projection[m](inputs.mean(m))).expand(self.n_items, -1)
        feat = inputs[m]
        return self.memoised(("project", m), feat, lambda: self.projection[m](feat))

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return [self.preference[modality], *self.projection[modality].parameters()]
