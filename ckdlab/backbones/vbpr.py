"""VBPR (He & McAuley, AAAI 2016) with one preference vector per modality."""
from __future__ import annotations

import torch
from torch import nn

from ..gather import rows
from ..modality import ModalityInputs
from .base import Backbone
from .registry import register


@register("VBPR")
class VBPR(Backbone):
    """Visual Bayesian Personalised Ranking, generalised to any set of modalities.

    user = [x_u ; p_u^m for each m ; 1]
    item = [x_i ; W_m e_i^m + b_m for each m ; beta_i + sum_m beta'_m . e_i^m]

    so that the inner product is x_u.x_i + sum_m p_u^m.(W_m e_i^m + b_m) + beta_i
    + sum_m beta'_m . e_i^m: He & McAuley's score with the item bias and the
    per-modality content bias (the constant 1 on the user side keeps it an inner
    product). When m is ablated, e_i^m is the item mean (from the inputs) and
    p_u^m is replaced by its mean over users (paper eq. 8 and 10).

    Parameters
    ----------
    dataset : Dataset
        Read for ``n_users``, ``n_items`` and the modality dimensions only.
    embedding_dim : int
        Size of the ID part and of each modality part (paper: 64).
    """

    def __init__(self, dataset, embedding_dim: int = 64):
        super().__init__()
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self.modalities = tuple(dataset.features)
        self.embedding_dim = embedding_dim
        self.user_id = nn.Parameter(torch.empty(self.n_users, embedding_dim))
        self.item_id = nn.Parameter(torch.empty(self.n_items, embedding_dim))
        self.item_bias = nn.Parameter(torch.zeros(self.n_items, 1))
        self.user_pref = nn.ParameterDict(
            {m: nn.Parameter(torch.empty(self.n_users, embedding_dim)) for m in self.modalities})
        self.projection = nn.ModuleDict(
            {m: nn.Linear(f.shape[1], embedding_dim) for m, f in dataset.features.items()})
        self.content_bias = nn.ModuleDict(
            {m: nn.Linear(f.shape[1], 1, bias=False) for m, f in dataset.features.items()})
        for p in [self.user_id, self.item_id, *self.user_pref.values()]:
            nn.init.xavier_normal_(p)
        for lin in self.content_bias.values():
            nn.init.zeros_(lin.weight)

    def forward(self, inputs: ModalityInputs) -> tuple[torch.Tensor, torch.Tensor]:
        users, items, bias = [self.user_id], [self.item_id], self.item_bias
        for m in self.modalities:
            users.append(self.mean_user_preference(self.user_pref[m], inputs, m))
            if inputs.is_ablated(m):
                # identical rows: project the mean once and broadcast (same numbers, far cheaper;
                # this keeps CKD's modality channels inexpensive)
                mean = inputs.mean(m)
                projected, content = self._project(m, mean)
                items.append(projected.expand(self.n_items, -1))
            else:
                projected, content = self._project(m, inputs[m])
                items.append(projected)
            bias = bias + content
        users.append(torch.ones(self.n_users, 1, device=self.user_id.device))
        items.append(bias)
        return torch.cat(users, dim=1), torch.cat(items, dim=1)

    def batch_rows(self, inputs: ModalityInputs, users: torch.Tensor,
                   items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``'s rows ``users`` and ``items``, computing only those: each modality projects
        just the batch items' features (a step needs a fraction of the catalogue)."""
        user_parts, item_parts = [self.gathered(self.user_id, users)], [self.gathered(self.item_id, items)]
        bias = self.gathered(self.item_bias, items)
        for m in self.modalities:
            pref = self.user_pref[m]
            if inputs.is_ablated(m):
                user_parts.append(pref.mean(dim=0, keepdim=True).expand(len(users), -1))
                projected, content = self._project(m, inputs.mean(m))
                item_parts.append(projected.expand(len(items), -1))
            else:
                user_parts.append(self.gathered(pref, users))
                feat = inputs[m]
                projected, content = self.memoised(("rows", m, id(feat)), items, by_value=True,
                                                   compute=lambda: self._fused_projection(m, rows(feat, items)))
                item_parts.append(projected)
            bias = bias + content
        user_parts.append(torch.ones(len(users), 1, device=self.user_id.device))
        item_parts.append(bias)
        return torch.cat(user_parts, dim=1), torch.cat(item_parts, dim=1)

    def _fused_projection(self, m: str, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_m e^m + b_m, beta'_m . e^m) as one matrix product: one pass over the features, not two."""
        lin, content = self.projection[m], self.content_bias[m]
        weight = torch.cat([lin.weight, content.weight])
        bias = torch.cat([lin.bias, lin.bias.new_zeros(1)])
        out = torch.addmm(bias, feat, weight.t())
        # split, not two slices: the backward joins the two gradients in one copy instead of
        # zero-filling a full-size gradient per slice
        projected, content_score = out.split([lin.out_features, 1], dim=1)
        return projected, content_score

    def _project(self, m: str, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_m e^m + b_m, beta'_m . e^m), computed once per step for the same features (see step_scope)."""
        return self.memoised(("project", m, id(feat)), feat, lambda: self._fused_projection(m, feat))

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return [self.user_pref[modality], *self.projection[modality].parameters(),
                *self.content_bias[modality].parameters()]
