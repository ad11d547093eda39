"""MMGCN (Wei et al., "MMGCN: Multi-modal Graph Convolution Network for
Personalized Recommendation of Micro-video", ACM MM 2019)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import SparseMatrix, joint_graph
from ..modality import ModalityInputs
from ._layers import embedding_l2, l2_normalize
from .base import Backbone
from .registry import register

FUSIONS = ("mean", "concat")


class _Branch(nn.Module):
    """One modality's graph branch of MMGCN (Wei et al. 2019).

    Node input: ``normalize([p_u^m ; W_p e_i^m + b_p])`` (users then items). Per
    layer (the paper's aggregation layer followed by its combination layer, in
    the released code's "add" form)::

        h   = lrelu(A_mean (x W_conv))              # mean over graph neighbours
        x'  = lrelu(W_g h + lrelu(W_l x) + id)      # combined with the ID embedding
    """

    def __init__(self, n_users: int, feat_dim: int, preference_dim: int, embedding_dim: int,
                 n_layers: int, negative_slope: float):
        super().__init__()
        self.negative_slope = negative_slope
        self.preference = nn.Parameter(torch.empty(n_users, preference_dim))
        self.projection = nn.Linear(feat_dim, preference_dim)
        dims = [preference_dim] + [embedding_dim] * (n_layers - 1)
        self.conv = nn.ModuleList(nn.Linear(d, d, bias=False) for d in dims)
        self.linear = nn.ModuleList(nn.Linear(d, embedding_dim) for d in dims)
        self.gate = nn.ModuleList(nn.Linear(d, embedding_dim) for d in dims)
        nn.init.xavier_normal_(self.preference)
        for lin in [self.projection, *self.conv, *self.linear, *self.gate]:
            nn.init.xavier_normal_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, preference: torch.Tensor, features: torch.Tensor, adj: SparseMatrix,
                id_embedding: torch.Tensor) -> torch.Tensor:
        lrelu = lambda t: F.leaky_relu(t, self.negative_slope)  # noqa: E731
        x = l2_normalize(torch.cat([preference, self.projection(features)], dim=0))
        for conv, linear, gate in zip(self.conv, self.linear, self.gate):
            h = lrelu(adj(conv(x)))
            x = lrelu(gate(h) + lrelu(linear(x)) + id_embedding)
        return x


@register("MMGCN")
class MMGCN(Backbone):
    """Multi-modal Graph Convolution Network: one GCN branch per modality.

    Each modality m has its own graph branch over the user-item training graph
    whose node inputs are the user preference ``p_u^m`` (users) and the
    projected item feature ``W_p e_i^m + b_p`` (items). Every layer averages
    the transformed neighbours and combines the result with the node's own
    transformed input and its ID embedding (shared across modalities); the
    representations of the branches are averaged (the released code) or
    concatenated. Scores are inner products.

    Parameters
    ----------
    dataset : Dataset
        Read for sizes, modality dimensions and the training graph (features are not kept).
    embedding_dim : int
        Size of the ID embeddings and of each branch's output (CKD paper: 64).
    preference_dim : int, optional
        Size of the user preferences and projected item features (the branch
        input). Defaults to ``embedding_dim``, the CKD paper's ``p_u^m in R^d``;
        the released code and MMRec use 256.
    n_layers : int
        Graph layers per branch (2).
    fusion : {"mean", "concat"}
        How the branch outputs are fused: their mean (default, MMGCN's
        ``representation = (v_rep + a_rep + t_rep) / 3``) or their concatenation
        (final size ``embedding_dim * n_modalities``).
    negative_slope : float
        Leaky-ReLU slope (0.01, PyTorch's default used by the released code).

    Notes
    -----
    Deviations from the released code (and MMRec's port):

    * the user preferences ``p_u^m`` and the ID embeddings are trained
      ``nn.Parameter`` s; the released code creates them as plain tensors
      (``torch.rand(..., requires_grad=True).to(device)`` or never registered),
      so the optimiser never updates them;
    * the neighbourhood aggregation is the mean over neighbours without self
      loops (``D^-1 A``, a constant :class:`~ckdlab.graph.SparseMatrix`); the
      node's own input enters through ``W_l x`` in the combination layer;
    * the number of layers is a parameter (the released code hard-codes 3).

    Ablation (CKD eq. 8, 10): when ``m`` is ablated, ``inputs[m]`` already is
    the item mean and ``p_u^m`` is replaced by its mean over users.

    Regularisation: half the squared norm of the batch's rows of the ID
    embeddings and of every user preference (the released code's
    ``reg_embedding_loss``), not of the final representations.
    """

    #: Chosen on validation Recall@20 of TikTok and Baby from the paper's grid below 1e-3
    #: (1e-4, 5e-4; L2 1e-2): the package's 1e-3 left MMGCN below popularity on Baby, peaking at
    #: epoch 1. 1e-4 is also the released code's rate. README, "Defaults for a dataset without tuned
    #: settings"; ``benchmarks/defaults_choice.py --backbones MMGCN --candidates ...``.
    default_lr = 1e-4

    def __init__(self, dataset, embedding_dim: int = 64, preference_dim: int | None = None, n_layers: int = 2,
                 fusion: str = "mean", negative_slope: float = 0.01):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")
        if n_layers < 1:
            raise ValueError("n_layers must be >= 1")
        self.n_users, self.n_items = int(dataset.n_users), int(dataset.n_items)
        self.modalities = tuple(dataset.features)
        self.embedding_dim = embedding_dim
        self.preference_dim = preference_dim or embedding_dim
        self.n_layers = n_layers
        self.fusion = fusion
        self.id_embedding = nn.Parameter(torch.empty(self.n_users + self.n_items, embedding_dim))
        nn.init.xavier_normal_(self.id_embedding)
        self.branches = nn.ModuleDict({
            m: _Branch(self.n_users, int(f.shape[1]), self.preference_dim, embedding_dim, n_layers, negative_slope)
            for m, f in dataset.features.items()})
        #: ``D^-1 A`` of the joint user-item graph (constant operator, transpose cached)
        edges = joint_graph(dataset.train, self.n_users, self.n_items)
        self.adj = edges.operator(edges.normalization("mean"))

    def forward(self, inputs: ModalityInputs) -> tuple[torch.Tensor, torch.Tensor]:
        reps = []
        for m in self.modalities:
            branch = self.branches[m]
            if inputs.is_ablated(m):
                pref = self.mean_user_preference(branch.preference, inputs, m)
                reps.append(branch(pref, inputs[m], self.adj, self.id_embedding))
            else:  # the same in every pass of a training step that leaves m in (CKD's channels)
                reps.append(self.memoised(("branch", m), inputs[m],
                                          lambda b=branch, m=m: b(b.preference, inputs[m], self.adj, self.id_embedding)))
        rep = torch.stack(reps).mean(dim=0) if self.fusion == "mean" else torch.cat(reps, dim=1)
        return rep.split([self.n_users, self.n_items])  # one gradient copy, not two zero-filled slices

    def regularization(self, user_reps, item_reps, users, pos, neg) -> torch.Tensor:
        user_ids, item_ids = self.id_embedding.split([self.n_users, self.n_items])
        prefs = [b.preference for b in self.branches.values()]
        return embedding_l2(users, pos, neg, [user_ids, *prefs], [item_ids])

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.branches[modality].parameters())
