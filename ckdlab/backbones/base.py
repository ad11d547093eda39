"""The single interface every recommender implements (the contract: docs/backbones.md)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from ..gather import rows, squared_norm, triple_margins
from ..modality import ModalityInputs


class Backbone(nn.Module):
    """Maps ``ModalityInputs`` to final user and item representations.

    The contract every backbone keeps (checked by :func:`ckdlab.testing.check_backbone`;
    the long form with a worked example is docs/backbones.md):

    * ``__init__(self, dataset, **hyperparameters)`` reads sizes, modality
      dimensions and the training graph from the :class:`~ckdlab.data.Dataset`;
      it must not keep the features: they always arrive through ``ModalityInputs``.
    * :meth:`forward` returns float ``(n_users, D)`` and ``(n_items, D)`` tensors
      on the inputs' device. The score of (u, i) is their inner product, so full
      ranking is one matrix product; do not override :meth:`score_pairs` or
      :meth:`score_margins` with anything else.
    * Ablation is data: read item features as ``inputs[m]`` (the item mean when
      ``m`` is ablated) and pass every user-side preference for ``m`` through
      :meth:`mean_user_preference`, so an ablated modality depends neither on its
      features nor on per-user preferences.
    * :meth:`modality_parameters` lists the parameters that belong to each
      modality, disjoint across modalities (Gradient Blending and OGM-GE need them).
    * Work shared by the passes of one step goes through :meth:`memoised`
      (valid inside :meth:`step_scope` only); nothing may be cached across steps.
    * Same seed, same parameters and outputs.
    """

    name = "base"
    #: False for models with nothing to train (Pop); the trainer then only evaluates.
    trainable = True
    #: Learning rate of a run that does not set one; None: the package's (``config.DEFAULT_LR``).
    #: Set it only from validation runs on more than one dataset, and say which.
    default_lr: float | None = None
    #: Sub-results shared by the forward passes of one training step (see :meth:`step_scope`).
    _step_memo: dict | None = None

    def forward(self, inputs: ModalityInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(user_reps (n_users, D), item_reps (n_items, D))``."""
        raise NotImplementedError

    def batch_rows(self, inputs: ModalityInputs, users: torch.Tensor,
                   items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows ``users`` of the user representations and ``items`` of the item representations.

        What a training step scores. The default runs :meth:`forward` and gathers;
        a backbone whose rows can be computed one by one (VBPR, DeepStyle: no
        propagation over a graph) overrides it to compute only the batch's rows, the
        same numbers for far less work. An override must equal the default
        (``ckdlab check-backbone`` checks it).
        """
        user_reps, item_reps = self(inputs)
        return rows(user_reps, users), rows(item_reps, items)

    @property
    def computes_batch_rows(self) -> bool:
        """Whether :meth:`batch_rows` is the backbone's own (no full forward in a training step)."""
        return type(self).batch_rows is not Backbone.batch_rows

    @staticmethod
    def score_pairs(user_reps: torch.Tensor, item_reps: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (rows(user_reps, users) * rows(item_reps, items)).sum(dim=-1)

    @staticmethod
    def score_margins(user_reps: torch.Tensor, item_reps: torch.Tensor, users: torch.Tensor, pos: torch.Tensor,
                      neg: torch.Tensor) -> torch.Tensor:
        """s_ui - s_uj per triple, as u . (i - j): one gather per side (each gather's backward
        writes a full-size gradient, so fewer gathers is the cheaper step)."""
        return triple_margins(rows(user_reps, users), rows(item_reps, torch.cat([pos, neg])))

    def regularization(self, user_reps: torch.Tensor, item_reps: torch.Tensor, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """L2 penalty for a batch, averaged over the batch.

        Default (the MMRec convention): half the squared norm of the final
        representations of the batch's users, positives and negatives.
        """
        sq = (squared_norm(rows(user_reps, users)) + squared_norm(rows(item_reps, pos))
              + squared_norm(rows(item_reps, neg)))
        return sq / (2 * max(len(users), 1))

    def auxiliary_loss(self, user_reps: torch.Tensor, item_reps: torch.Tensor, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """Extra training loss a backbone defines beyond BPR (MGCN's InfoNCE); zero by default.

        Called right after :meth:`forward` on the full inputs; a backbone may read
        state it cached during that forward.
        """
        return torch.zeros((), device=user_reps.device)

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        """Parameters that belong to ``modality`` (used by Gradient Blending and OGM-GE)."""
        return []

    def mean_user_preference(self, preference: torch.Tensor, inputs: ModalityInputs, modality: str) -> torch.Tensor:
        """``preference`` (n_users, d) unchanged, or its mean over users if ``modality`` is ablated."""
        if inputs.is_ablated(modality):
            return preference.mean(dim=0, keepdim=True).expand_as(preference)
        return preference

    # -- sharing work between the forward passes of one training step -------------------------
    @contextmanager
    def step_scope(self):
        """Share sub-results between the forward passes of one training step.

        Balancing methods run the model several times per step on inputs that differ
        only in which modalities are ablated (CKD: the full model and each uni-modal
        channel), so a modality's projection of the same feature tensor is the same
        tensor in every pass: inside a scope, :meth:`memoised` computes it once.
        Outside a scope nothing is memoised, so a parameter update can never leave a
        stale value behind. The trainer opens one scope per step.
        """
        outer = self._step_memo
        self._step_memo = {} if outer is None else outer
        try:
            yield
        finally:
            self._step_memo = outer

    def memoised(self, key, source: torch.Tensor, compute: Callable[[], torch.Tensor], *,
                 by_value: bool = False) -> torch.Tensor:
        """``compute()``, or its value from earlier in this step for the same ``key`` and ``source``.

        ``source`` matches when it is the same tensor, or with ``by_value`` a tensor of equal
        values (index tensors: the channel passes of a step gather the batch's rows again,
        from index tensors built anew).
        """
        memo = self._step_memo
        if memo is None:
            return compute()
        grad = torch.is_grad_enabled()
        entries = memo.setdefault(key, [])
        for earlier, value, with_grad in entries:
            same = (earlier.shape == source.shape and torch.equal(earlier, source)) if by_value else earlier is source
            # a value computed without autograd must not stand in for one that needs it
            if same and (with_grad or not grad):
                return value
        value = compute()
        entries.append((source, value, grad))
        return value

    def gathered(self, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``table[index]``, gathered once per step for equal ``index`` values (see :meth:`memoised`).

        Besides the gather itself this saves its backward, which zero-fills a gradient
        of the whole ``table``.
        """
        return self.memoised(("gather", id(table)), index, lambda: rows(table, index), by_value=True)
