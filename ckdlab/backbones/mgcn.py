"""MGCN: multi-view graph convolutional network (early fusion).

Reference
---------
P. Yu, Z. Tan, G. Lu, B.-K. Bao. "Multi-View Graph Convolutional Network for
Multimedia Recommendation." ACM MM 2023. Released code: github.com/demonph10/MGCN
(``src/models/mgcn.py``, built on MMRec).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..graph import SparseMatrix, joint_graph, user_item_graph
from ..knn import knn_graph
from ..modality import ModalityInputs
from ._layers import add_all
from .base import Backbone
from .registry import register


class _InfoNCE(torch.autograd.Function):
    """``sum_u c_u (log sum_v c_v exp(<a_u, b_v>) - <a_u, b_u>) / B`` with a hand-written backward.

    The InfoNCE of a batch with repeated rows, computed once per distinct row:
    ``c`` counts how often each distinct row occurs (``B = sum c``). One
    ``(U, U)`` logit block is built; its exponentials are kept for the backward
    (no second ``exp``), which is two matrix products.
    """

    @staticmethod
    def forward(ctx, a, b, counts):
        logits = a @ b.T
        mx = logits.amax(dim=1, keepdim=True)
        p = logits.sub_(mx).exp_()  # in place: exp(l_uv - max_u), each <= 1
        s = p @ counts  # sum_v c_v exp(l_uv - max_u)
        lse = s.log() + mx.squeeze(1)
        diag = (a * b).sum(dim=1)
        total = counts.sum()
        ctx.save_for_backward(a, b, counts, p, s, total)
        return (counts * (lse - diag)).sum() / total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        a, b, counts, p, s, total = ctx.saved_tensors
        # dL/dl_uv = (c_u / B) (c_v exp(l_uv - lse_u) - [u == v])
        cu = counts * (grad / total)
        g = p * (cu / s).unsqueeze(1)  # not in place: the graph may be backpropagated again
        cb, ca = counts.unsqueeze(1) * b, cu.unsqueeze(1)
        ga = g @ cb - ca * b if ctx.needs_input_grad[0] else None
        gb = counts.unsqueeze(1) * (g.T @ a) - ca * a if ctx.needs_input_grad[1] else None
        return ga, gb, None


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float,
             index: torch.Tensor | None = None) -> torch.Tensor:
    """MGCN's InfoNCE: row ``k`` of ``view1`` against all rows of ``view2`` (in-batch negatives).

    ``mean_k [ -log( exp(<v1_k, v2_k> / t) / sum_j exp(<v1_k, v2_j> / t) ) ]`` with
    ``v = normalize(view)``. With ``index``, the batch is rows ``index`` of both
    views (``view1[index]``, ``view2[index]``; repeats allowed and counted as in
    the gathered batch); the loss is then computed once per distinct row, which
    gives the same value for a fraction of the work when the batch repeats rows
    (BPR batches repeat users and positive items).
    """
    if index is None:
        rows = torch.arange(view1.shape[0], device=view1.device)
        counts = torch.ones(view1.shape[0], dtype=view1.dtype, device=view1.device)
    else:
        counts = torch.bincount(index, minlength=view1.shape[0])
        rows = counts.nonzero().squeeze(1)
        counts = counts.index_select(0, rows).to(view1.dtype)
    a = F.normalize(view1[rows], dim=1) / temperature
    b = F.normalize(view2[rows], dim=1)
    return _InfoNCE.apply(a, b, counts)


@register("MGCN")
class MGCN(Backbone):
    """MGCN (Yu et al., MM 2023): purified modality views on item-item graphs, fused by attention.

    Forward pass (``M`` modalities, ``D = embedding_dim``):

    1. **Behaviour-guided purifier**: ``e^m_i = x_i * sigmoid(W_m f^m_i + b_m)`` with
       ``f^m_i = T_m x^m_i + c_m`` the projected feature and ``x_i`` the item ID embedding.
    2. **User-item view** (ID part): LightGCN propagation of the user/item ID
       embeddings on the symmetric normalised user-item graph, ``n_ui_layers``
       layers, mean over layers ``0..n_ui_layers``.
    3. **Item-item view** per modality: ``n_mm_layers`` propagations of ``e^m`` on
       the modality's top-``knn_k`` cosine kNN graph (built once from the
       features, :func:`ckdlab.knn.knn_graph`, ``D^-1/2 A D^-1/2``); users' part
       is the aggregation of their items' parts, ``R e^m`` with ``R`` the user-item
       block of the normalised adjacency.
    4. **Behaviour-aware fuser**: ``common = sum_m a_m e^m`` with
       ``a = softmax_m(q^T tanh(W e^m + b))``; specific parts
       ``s^m = sigmoid(G_m z) * (e^m - common)`` gated by the ID part ``z``;
       ``side = (common + sum_m s^m) / (M + 1)`` (MGCN's ``/ 3`` for two modalities).
    5. Final representation ``z + side`` (dimension ``D``); score = inner product.

    :meth:`auxiliary_loss` returns ``cl_weight`` times MGCN's InfoNCE between the
    side view and the ID view for the batch's users and positive items.

    Ablation (CKD eq. 8/10): an ablated modality's features are identical across
    items, so its kNN graph would be the uniform graph; the item-item view is
    then exactly that graph's output, the mean over items of the purified
    features, broadcast to every item; and the users' part is replaced by its
    mean over users. The model then depends on ``m``'s features only through
    their item mean.

    Parameters
    ----------
    dataset : ckdlab.data.Dataset
        Sizes, features (read once to build the kNN graphs, not kept) and the
        training graph.
    embedding_dim : int
        ``D`` (default 64).
    n_ui_layers : int
        User-item propagation layers (default 2, MGCN's ``n_ui_layers``).
    n_mm_layers : int
        Item-item propagation layers (default 1, MGCN's ``n_layers``).
    knn_k : int
        Neighbours per item in the modality graphs (default 10).
    cl_weight : float
        Weight of the InfoNCE loss (default 0.01).
    cl_temperature : float
        InfoNCE temperature (default 0.2).
    knn_block_size : int, optional
        Rows per similarity block when building the kNN graphs.
    knn_device : str, optional
        Device for building the kNN graphs (default CPU; the graphs move with the
        module on ``.to(device)``).

    Notes
    -----
    Deviations from the released code, on purpose:

    * The raw features are not fine-tuned (released: ``nn.Embedding.from_pretrained(...,
      freeze=False)``): features are data and arrive through ``ModalityInputs``.
    * The common-part attention is a softmax over modalities, as in the paper
      (the released ``nn.Softmax(dim=0)`` normalises over all users and items).
    * Negative similarities among the kept top-``k`` are clipped to 0 so that the
      degree normalisation is defined (no effect on real features).
    * Any number of modalities (the released code has image and text).
    """

    def __init__(self, dataset, embedding_dim: int = 64, n_ui_layers: int = 2, n_mm_layers: int = 1,
                 knn_k: int = 10, cl_weight: float = 0.01, cl_temperature: float = 0.2,
                 knn_block_size: int | None = None, knn_device: str | None = None):
        super().__init__()
        if n_ui_layers < 0 or n_mm_layers < 0:
            raise ValueError(f"layer counts must be >= 0, got n_ui_layers={n_ui_layers}, n_mm_layers={n_mm_layers}")
        if cl_temperature <= 0:
            raise ValueError(f"cl_temperature must be > 0, got {cl_temperature}")
        self.n_users, self.n_items = int(dataset.n_users), int(dataset.n_items)
        self.modalities = tuple(dataset.modalities)
        if not self.modalities:
            raise ValueError("MGCN needs at least one modality")
        self.embedding_dim = int(embedding_dim)
        self.n_ui_layers, self.n_mm_layers = int(n_ui_layers), int(n_mm_layers)
        self.knn_k, self.cl_weight, self.cl_temperature = int(knn_k), float(cl_weight), float(cl_temperature)
        d = self.embedding_dim

        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_id_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.projection = nn.ModuleDict({m: nn.Linear(int(f.shape[1]), d) for m, f in dataset.features.items()})
        self.purifier = nn.ModuleDict({m: nn.Linear(d, d) for m in self.modalities})
        self.prefer_gate = nn.ModuleDict({m: nn.Linear(d, d) for m in self.modalities})
        self.query_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))

        train = np.asarray(dataset.train, dtype=np.int64)
        #: ``D^-1/2 A D^-1/2`` of the joint user-item graph (the user-item view)
        joint = joint_graph(train, self.n_users, self.n_items)
        self.adj = joint.operator(joint.normalization("sym"))
        #: its ``(n_users, n_items)`` block ``R`` (users aggregate their items' modality parts)
        block = user_item_graph(train, self.n_users, self.n_items)
        self.user_item = block.operator(block.normalization("sym"))
        self.item_graphs = nn.ModuleList([
            SparseMatrix(knn_graph(dataset.features[m], k=self.knn_k, normalization="sym",
                                   block_size=knn_block_size, device=knn_device or "cpu"))
            for m in self.modalities
        ])
        self._cache: OrderedDict[int, tuple] = OrderedDict()

    def __getstate__(self):
        # the cache holds non-leaf tensors of a past forward: never copy or pickle it
        state = dict(super().__getstate__())
        state["_cache"] = OrderedDict()
        return state

    def item_graph(self, modality: str) -> SparseMatrix:
        """The normalised kNN graph of ``modality`` (operator on ``(n_items, D)``)."""
        return self.item_graphs[self.modalities.index(modality)]

    # -- parts ---------------------------------------------------------------
    def id_view(self) -> torch.Tensor:
        """User-item view: ``(n_users + n_items, D)`` LightGCN mean over layers."""
        x = torch.cat([self.user_embedding, self.item_id_embedding], dim=0)
        acc = x
        for _ in range(self.n_ui_layers):
            x = self.adj(x)
            acc = acc + x
        return acc / (self.n_ui_layers + 1)

    def purified(self, inputs: ModalityInputs, modality: str) -> torch.Tensor:
        """Behaviour-guided purifier: ``x_i * sigmoid(W_m (T_m x^m_i + c_m) + b_m)``, ``(n_items, D)``."""
        f = self.projection[modality](inputs[modality])
        return self.item_id_embedding * torch.sigmoid(self.purifier[modality](f))

    def modality_view(self, inputs: ModalityInputs, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(user part (n_users, D), item part (n_items, D))`` of one modality's item-item view."""
        e = self.purified(inputs, modality)
        if inputs.is_ablated(modality):
            # identical features -> uniform item-item graph -> every item gets the mean
            e = e.mean(dim=0, keepdim=True).expand_as(e)
        else:
            g = self.item_graph(modality)
            for _ in range(self.n_mm_layers):
                e = g(e)
        u = self.mean_user_preference(self.user_item(e), inputs, modality)
        return u, e

    def views(self, inputs: ModalityInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(side, content)``: fused modality view and ID view, both ``(n_users + n_items, D)``."""
        missing = set(self.modalities) - set(inputs.names)
        if missing:
            raise KeyError(f"MGCN was built for modalities {self.modalities}; inputs lack {sorted(missing)}")
        # Inside a training step (Backbone.step_scope) the passes of CKD's channels share what does not
        # depend on the ablation: the ID view, the preference gates, each unablated modality's view.
        content = self.memoised(("id_view",), self.user_embedding, self.id_view)
        mods = [self.memoised(("view", m, inputs.is_ablated(m)), inputs[m],
                              lambda m=m: torch.cat(self.modality_view(inputs, m), dim=0))
                for m in self.modalities]
        att = torch.softmax(torch.cat([self.query_common(v) for v in mods], dim=1), dim=1)  # (N, M)
        common = add_all(att[:, k:k + 1] * v for k, v in enumerate(mods))
        side = common
        for m, v in zip(self.modalities, mods):
            gate = self.memoised(("gate", m), content, lambda m=m: torch.sigmoid(self.prefer_gate[m](content)))
            side = side + gate * (v - common)
        return side / (len(self.modalities) + 1), content

    def forward(self, inputs: ModalityInputs) -> tuple[torch.Tensor, torch.Tensor]:
        side, content = self.views(inputs)
        reps = content + side
        users, items = reps.split([self.n_users, self.n_items])  # one gradient copy, not two zero-filled slices
        # remember the views of the last few forward passes for auxiliary_loss
        self._cache[id(users)] = (users, side, content)
        while len(self._cache) > 4:
            self._cache.popitem(last=False)
        return users, items

    def auxiliary_loss(self, user_reps, item_reps, users, pos, neg) -> torch.Tensor:
        """``cl_weight`` x (InfoNCE(items of the batch) + InfoNCE(users of the batch)), MGCN eq. (side vs ID view).

        Uses the views of the :meth:`forward` call that returned ``user_reps``. Each
        InfoNCE is over the batch as sampled (repeated users / items included) and
        is computed once per distinct row (:func:`info_nce` with ``index``).
        """
        entry = self._cache.get(id(user_reps))
        if entry is None or entry[0] is not user_reps:
            raise RuntimeError("MGCN.auxiliary_loss needs the user_reps returned by a forward() of this model")
        if self.cl_weight == 0:
            return torch.zeros((), device=user_reps.device)
        _, side, content = entry
        n = self.n_users
        t = self.cl_temperature
        cl = info_nce(side, content, t, n + pos) + info_nce(side, content, t, users)
        return self.cl_weight * cl

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        """Parameters of ``modality`` (an approximate split, as in CKD sec. 3).

        MGCN fuses modalities before scoring, so no exact split exists (the CKD
        paper "roughly divides the parameters"). Here ``m`` owns its feature
        projection ``T_m``, its purifier gate ``W_m`` and its preference gate
        ``G_m``. The user/item ID embeddings and the shared common-attention
        query belong to no modality.
        """
        if modality not in self.modalities:
            raise KeyError(f"unknown modality {modality!r}; have {self.modalities}")
        return [*self.projection[modality].parameters(), *self.purifier[modality].parameters(),
                *self.prefer_gate[modality].parameters()]
