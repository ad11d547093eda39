"""DeepStyle (Liu, Wu & Wang, SIGIR 2017), for any set of modalities."""
from __future__ import annotations

import torch
from torch import nn

from ..gather import rows
from ..modality import ModalityInputs
from .base import Backbone
from .registry import register


@register("DeepStyle")
class DeepStyle(Backbone):
    """Style-aware BPR: score = x_u . (sum_m E_m e_i^m - l_c(i) + x_i).

    DeepStyle subtracts a category vector l_c(i) from the item's content
    embedding so that what remains is the item's *style*. When the dataset has
    ``item_category`` (an ``item_category.npy`` next to the features), l_c is a
    learned vector per category; otherwise a learned per-item style offset is
    used. ``style_source`` records which one ran ("category" or "item").

    DeepStyle has no user-side modality preference (the user vector is shared by
    all parts), so ablation acts through the item features only: an ablated
    modality contributes the same E_m e_bar^m to every item.

    Parameters
    ----------
    embedding_dim : int
        Size of user, item, category and projected content vectors (paper: 64).
    """

    def __init__(self, dataset, embedding_dim: int = 64):
        super().__init__()
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self.modalities = tuple(dataset.features)
        self.user_id = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, embedding_dim)))
        self.item_id = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_items, embedding_dim)))
        self.projection = nn.ModuleDict(
            {m: nn.Linear(f.shape[1], embedding_dim, bias=False) for m, f in dataset.features.items()})
        if dataset.item_category is not None:
            self.style_source = "category"
            category = torch.as_tensor(dataset.item_category, dtype=torch.long)
            n_styles = int(category.max()) + 1
        else:
            self.style_source = "item"
            category = torch.arange(self.n_items)
            n_styles = self.n_items
        self.register_buffer("category", category)
        self.category_vector = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_styles, embedding_dim)))

    def forward(self, inputs: ModalityInputs) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.item_id - self.category_vector[self.category]
        for m in self.modalities:
            if inputs.is_ablated(m):
                # identical rows: project the mean once (same numbers as projecting every row)
                item = item + self._project(m, inputs.mean(m))
            else:
                item = item + self._project(m, inputs[m])
        return self.user_id, item

    def batch_rows(self, inputs: ModalityInputs, users: torch.Tensor,
                   items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``'s rows ``users`` and ``items``, projecting only the batch items' features."""
        item = self.gathered(self.item_id, items) - self.gathered(self.category_vector, rows(self.category, items))
        for m in self.modalities:
            if inputs.is_ablated(m):
                item = item + self._project(m, inputs.mean(m))
            else:
                feat = inputs[m]
                item = item + self.memoised(("rows", m, id(feat)), items,
                                            lambda: self.projection[m](rows(feat, items)), by_value=True)
        return self.gathered(self.user_id, users), item

    def _project(self, m: str, feat: torch.Tensor) -> torch.Tensor:
        """E_m e^m, computed once per training step for the same features (see ``Backbone.step_scope``)."""
        return self.memoised(("project", m, id(feat)), feat, lambda: self.projection[m](feat))

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.projection[modality].parameters())
