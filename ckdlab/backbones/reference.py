"""Reference recommenders without content: most-popular and BPR matrix factorisation."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..modality import ModalityInputs
from .base import Backbone
from .registry import register


@register("Pop")
class Pop(Backbone):
    """Rank every user's unseen items by their number of training interactions.

    Nothing to train: the trainer evaluates it once. Content is ignored, so its
    per-modality metrics equal its overall metrics.
    """

    trainable = False

    def __init__(self, dataset):
        super().__init__()
        counts = np.bincount(dataset.train[:, 1], minlength=dataset.n_items).astype(np.float32)
        self.register_buffer("popularity", torch.as_tensor(counts).unsqueeze(1))
        self.register_buffer("user_ones", torch.ones(dataset.n_users, 1))

    def forward(self, inputs: ModalityInputs) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_ones, self.popularity


@register("MF")
class MF(Backbone):
    """BPR matrix factorisation (Rendle et al., 2009) on user and item IDs only.

    Parameters
    ----------
    embedding_dim : int
        Size of the user and item embeddings (64, as for every backbone).
    """

    def __init__(self, dataset, embedding_dim: int = 64):
        super().__init__()
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self.user_id = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, embedding_dim)))
        self.item_id = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_items, embedding_dim)))

    def forward(self, inputs: ModalityInputs) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_id, self.item_id
