"""GRCN (Wei et al., "Graph-Refined Convolutional Network for Multimedia
Recommendation with Implicit Feedback", ACM MM 2020)."""
from __future__ import annotations

import torch
from torch import nn

from ..graph import joint_graph, user_item_graph
from ..modality import ModalityInputs
from ._layers import embedding_l2, l2_normalize
from .base import Backbone
from .registry import register

WEIGHT_MODES = ("max", "mean")
EDGE_NORMS = ("sum", "none")


@register("GRCN")
class GRCN(Backbone):
    """Graph-Refined Convolutional Network: content-refined edge weights for an ID GCN.

    For every modality m (the paper's graph refining layer):

    1. **Routing.** Item content ``c_i^m = normalize(tanh(W_m e_i^m + b_m))``;
       user preference ``p_u^m`` (trained) starts at ``normalize(p_u^m)`` and is
       routed toward the content of the user's items for ``routing_rounds``
       rounds::

           a_ui = softmax_{i in N(u)} <p_u^m, c_i^m>
           p_u^m <- normalize(p_u^m + sum_{i in N(u)} a_ui c_i^m)

    2. **Edge scoring.** On each directed edge ``r <- s`` of the training graph
       (both directions), ``s^m_{rs} = cos(h_r^m, h_s^m) * k_s^m`` where ``h^m``
       is the routed preference (users) or content (items) and ``k_s^m`` a
       learned per-node, per-modality confidence of the sender.

    The modalities are combined by ``max`` (default; "mean" possible) and
    pruned at zero, ``w_rs = relu(max_m s^m_{rs})``, then row-normalised by
    their sum per receiver: ``w_rs / sum_{s'} w_rs'`` (``edge_norm="sum"``, the
    default; ``"none"`` keeps the raw pruned weights). Sum normalisation is used
    instead of a softmax because a softmax would give a pruned edge (weight 0)
    the positive weight ``exp(0)`` and undo the pruning; a node whose edges are
    all pruned receives nothing and keeps its own embedding.

    3. **ID propagation.** ``x^0 = ID embedding``, ``x^{l+1} = A_w x^l`` for
       ``n_layers`` layers (no transform, no non-linearity, as the released
       code's ID GCN); ID part = ``x^0 + x^1 + ... + x^L``.

    Final representations: ``user = [ID part ; p_u^m for each m]`` and
    ``item = [ID part ; c_i^m for each m]``, scored by inner product.

    Parameters
    ----------
    dataset : Dataset
        Read for sizes, modality dimensions and the training graph (features are not kept).
    embedding_dim : int
        Size of the ID embeddings (CKD paper: 64).
    content_dim : int, optional
        Size of each modality's user preference and projected content; defaults to ``embedding_dim``.
    n_layers : int
        Layers of the ID propagation (2).
    routing_rounds : int
        Routing iterations (3, the released default).
    weight_mode : {"max", "mean"}
        How per-modality edge scores are combined (the released code's "confid"
        mode, i.e. confidence-weighted max, is the default).
    edge_norm : {"sum", "none"}
        Row normalisation of the refined edge weights.
    edge_dropout : float
        Fraction of directed edges dropped from the ID propagation at each
        training forward (the released code drops edges with ``dropout_adj``;
        0 by default; no dropout in eval mode).

    Notes
    -----
    Deviations from the released code, chosen for clarity and stability:

    * attention and edge scores use the plain (cosine) inner product of the
      normalised vectors, without the released code's sigmoid degree gate and
      leaky-ReLU on the sender;
    * the modality part of the representation is the routed preference /
      projected content itself (the released code adds one more attention
      aggregation of it);
    * the confidences are initialised to 1 rather than Xavier-normal, so no
      modality is pruned at random before training;
    * user preferences and ID embeddings are trained ``nn.Parameter`` s.

    Ablation (CKD eq. 8, 10): when ``m`` is ablated, ``inputs[m]`` already is
    the item mean, and ``p_u^m`` is replaced by its mean over users *before*
    routing. The routed preference then is the same for every user (with at
    least one training item) and the m-edge scores no longer depend on any
    user's or item's m-content (only on the confidences ``k^m``).

    Implementation: the routing attention and the edge scores are per-edge
    inner products (SDDMMs) and every aggregation a CSR product with per-edge
    weights (:class:`ckdlab.graph.EdgeList`); no ``(edges x D)`` tensor is built.

    Regularisation: half the squared norm of the batch's rows of the ID
    embeddings and of the user preferences (the released code's
    ``reg_embedding_loss``), not of the final representations.
    """

    def __init__(self, dataset, embedding_dim: int = 64, content_dim: int | None = None, n_layers: int = 2,
                 routing_rounds: int = 3, weight_mode: str = "max", edge_norm: str = "sum",
                 edge_dropout: float = 0.0):
        super().__init__()
        if weight_mode not in WEIGHT_MODES:
            raise ValueError(f"unknown weight_mode {weight_mode!r}; expected one of {WEIGHT_MODES}")
        if edge_norm not in EDGE_NORMS:
            raise ValueError(f"unknown edge_norm {edge_norm!r}; expected one of {EDGE_NORMS}")
        if not 0.0 <= edge_dropout < 1.0:
            raise ValueError("edge_dropout must be in [0, 1)")
        self.n_users, self.n_items = int(dataset.n_users), int(dataset.n_items)
        self.n_nodes = self.n_users + self.n_items
        self.modalities = tuple(dataset.features)
        self.embedding_dim = embedding_dim
        self.content_dim = content_dim or embedding_dim
        self.n_layers = n_layers
        self.routing_rounds = routing_rounds
        self.weight_mode = weight_mode
        self.edge_norm = edge_norm
        self.edge_dropout = edge_dropout

        self.id_embedding = nn.Parameter(torch.empty(self.n_nodes, embedding_dim))
        nn.init.xavier_normal_(self.id_embedding)
        self.preference = nn.ParameterDict(
            {m: nn.Parameter(torch.empty(self.n_users, self.content_dim)) for m in self.modalities})
        for p in self.preference.values():
            nn.init.xavier_normal_(p)
        self.projection = nn.ModuleDict(
            {m: nn.Linear(int(f.shape[1]), self.content_dim) for m, f in dataset.features.items()})
        for lin in self.projection.values():
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.confidence = nn.ParameterDict({m: nn.Parameter(torch.ones(self.n_nodes)) for m in self.modalities})

        #: every training edge in both directions over users + items (ID propagation, edge scores)
        self.graph = joint_graph(dataset.train, self.n_users, self.n_items)
        #: user <- item edges (routing), items numbered from 0
        self.user_item = user_item_graph(dataset.train, self.n_users, self.n_items)
        # for each edge of ``graph``, the position of the same (user, item) pair in ``user_item``:
        # the cosine is symmetric, so it is computed once per pair and read in both directions
        g, ui = self.graph, self.user_item
        ui_key = ui.dst * self.n_items + ui.src
        user_side = g.dst < self.n_users
        user = torch.where(user_side, g.dst, g.src)
        item = torch.where(user_side, g.src, g.dst) - self.n_users
        self.register_buffer("pair_of_edge", torch.searchsorted(ui_key, user * self.n_items + item),
                             persistent=False)

    # ------------------------------------------------------------------ pieces
    def _routed(self, inputs: ModalityInputs, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        content = self._content(inputs, m)
        return self._route(self.mean_user_preference(self.preference[m], inputs, m), content), content

    def _content(self, inputs: ModalityInputs, m: str) -> torch.Tensor:
        return l2_normalize(torch.tanh(self.projection[m](inputs[m])))

    def _route(self, preference: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        p = l2_normalize(preference)
        g = self.user_item
        for _ in range(self.routing_rounds):
            att = g.softmax(g.dot(p, content))  # SDDMM: <p_u, c_i> on the user <- item edges
            p = l2_normalize(p + g.spmm(att, content))
        return p

    def _edge_weights(self, prefs: list[torch.Tensor], contents: list[torch.Tensor]) -> torch.Tensor:
        g, ui, scores = self.graph, self.user_item, []
        for m, pref, content in zip(self.modalities, prefs, contents):
            cos = ui.dot(pref, content)  # unit vectors: cosine, one per (user, item)
            scores.append(cos.index_select(0, self.pair_of_edge) * self.confidence[m].index_select(0, g.src))
        stacked = torch.stack(scores, dim=0)  # (M, E): reduce over the leading axis (fast for small M)
        w = stacked.max(dim=0).values if self.weight_mode == "max" else stacked.mean(dim=0)
        w = torch.relu(w)
        if self.training and self.edge_dropout > 0:
            keep = torch.rand(w.shape, device=w.device) >= self.edge_dropout
            w = w * keep
        if self.edge_norm == "sum":
            w = w / g.row_sum(w).clamp_min(1e-12).index_select(0, g.dst)
        return w

    # ----------------------------------------------------------------- forward
    def forward(self, inputs: ModalityInputs) -> tuple[torch.Tensor, torch.Tensor]:
        prefs, contents = [], []
        for m in self.modalities:
            # one modality's content and routed preference depend on that modality alone: the passes of
            # a training step that leave m in (CKD's channels) share them (Backbone.step_scope)
            pref, content = self.memoised(("routed", m, inputs.is_ablated(m)), inputs[m],
                                          lambda m=m: self._routed(inputs, m))
            prefs.append(pref)
            contents.append(content)
        w = self._edge_weights(prefs, contents)
        x = self.id_embedding
        out = x
        for _ in range(self.n_layers):
            x = self.graph.spmm(w, x)
            out = out + x
        out_users, out_items = out.split([self.n_users, self.n_items])  # one gradient copy, not two zero-filled slices
        users = torch.cat([out_users, *prefs], dim=1)
        items = torch.cat([out_items, *contents], dim=1)
        return users, items

    def regularization(self, user_reps, item_reps, users, pos, neg) -> torch.Tensor:
        user_ids, item_ids = self.id_embedding.split([self.n_users, self.n_items])
        return embedding_l2(users, pos, neg, [user_ids, *self.preference.values()], [item_ids])

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return [self.preference[modality], *self.projection[modality].parameters(), self.confidence[modality]]
