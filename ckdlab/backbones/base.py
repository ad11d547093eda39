"""The single interface every recommender implements, and the name registry."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from ..modality import ModalityInputs

_REGISTRY: dict[str, type["Backbone"]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a backbone constructible by (case-insensitive) name."""

    def deco(cls: type) -> type:
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"backbone name {name!r} registered twice")
        _REGISTRY[key] = cls
        cls.name = name
        return cls

    return deco


def available() -> list[str]:
    return sorted(cls.name for cls in _REGISTRY.values())


def get_backbone_class(name: str) -> type["Backbone"]:
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; available: {', '.join(available())}") from None


def build_backbone(name: str, dataset, **params) -> "Backbone":
    """Construct backbone ``name`` for ``dataset`` with hyperparameters ``params``."""
    cls = get_backbone_class(name)
    try:
        return cls(dataset, **params)
    except TypeError as exc:
        raise TypeError(f"bad parameters for backbone {cls.name}: {exc}") from None


class Backbone(nn.Module):
    """Maps ``ModalityInputs`` to final user and item representations.

    The score of (u, i) is the inner product of the two representations, so full
    ranking is one matrix product. Subclasses implement :meth:`forward` and, when
    they have modality-specific parameters, :meth:`modality_parameters`.

    Subclasses receive the :class:`~ckdlab.data.Dataset` in the constructor to read
    sizes, modality dimensions and the training graph; they must not keep the
    features: features always arrive through ``ModalityInputs``.
    """

    name = "base"
    #: False for models with nothing to train (Pop); the trainer then only evaluates.
    trainable = True
    #: Sub-results shared by the forward passes of one training step (see :meth:`step_scope`).
    _step_memo: dict | None = None

    def forward(self, inputs: ModalityInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(user_reps (n_users, D), item_reps (n_items, D))``."""
        raise NotImplementedError

    @staticmethod
    def score_pairs(user_reps: torch.Tensor, item_reps: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (user_reps[users] * item_reps[items]).sum(dim=-1)

    @staticmethod
    def score_margins(user_reps: torch.Tensor, item_reps: torch.Tensor, users: torch.Tensor, pos: torch.Tensor,
                      neg: torch.Tensor) -> torch.Tensor:
        """s_ui - s_uj per triple, as u . (i - j): one gather per side (each gather's backward
        writes a full-size gradient, so fewer gathers is the cheaper step)."""
        items = item_reps[torch.cat([pos, neg])]
        return (user_reps[users] * (items[:len(pos)] - items[len(pos):])).sum(dim=-1)

    def regularization(self, user_reps: torch.Tensor, item_reps: torch.Tensor, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """L2 penalty for a batch, averaged over the batch.

        Default (the MMRec convention): half the squared norm of the final
        representations of the batch's users, positives and negatives.
        """
        sq = user_reps[users].pow(2).sum() + item_reps[pos].pow(2).sum() + item_reps[neg].pow(2).sum()
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

    def memoised(self, key, source: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()``, or its value from earlier in this step for the same ``key`` and ``source`` tensor."""
        memo = self._step_memo
        if memo is None:
            return compute()
        hit = memo.get(key)
        grad = torch.is_grad_enabled()
        # a value computed without autograd must not stand in for one that needs it
        if hit is not None and hit[0] is source and (hit[2] or not grad):
            return hit[1]
        value = compute()
        memo[key] = (source, value, grad)
        return value
