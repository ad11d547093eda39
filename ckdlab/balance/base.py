"""The seam between the training loop and a balancing method.

A balancing method never edits a backbone: per step it receives the backbone,
the inputs and the batch, and returns the loss to minimise (plus numbers to
log). Methods that modulate gradients (OGM-GE) do it in ``after_backward``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import scipy.sparse as sp
import torch

from ..losses import bpr_loss
from ..modality import ModalityInputs

_METHODS: dict[str, type["BalanceMethod"]] = {}


def register_method(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        _METHODS[name.lower()] = cls
        cls.name = name
        return cls
    return deco


def available_methods() -> list[str]:
    return sorted(_METHODS)


def build_method(name: str, **params) -> "BalanceMethod":
    try:
        cls = _METHODS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(available_methods())}") from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise TypeError(f"bad parameters for method {name!r}: {exc}") from None


@dataclass
class Batch:
    """One step's BPR triples (u, i, j) as long tensors on the training device."""

    users: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor


@dataclass
class TrainContext:
    """What a method may need at set-up: data, configuration, device and cache."""

    dataset: object
    config: object
    device: torch.device
    cache_dir: Path
    inputs: ModalityInputs


def backbone_step(model, inputs: ModalityInputs, batch: Batch, reg_weight: float):
    """The backbone's own objective on a batch: BPR + L2 + its auxiliary loss.

    Returns ``(loss, user_reps, item_reps, margin)`` so a method can reuse the
    forward pass; ``margin`` is s_ui - s_uj per triple.
    """
    user_reps, item_reps = model(inputs)
    pos = model.score_pairs(user_reps, item_reps, batch.users, batch.pos)
    neg = model.score_pairs(user_reps, item_reps, batch.users, batch.neg)
    loss = bpr_loss(pos, neg)
    loss = loss + reg_weight * model.regularization(user_reps, item_reps, batch.users, batch.pos, batch.neg)
    loss = loss + model.auxiliary_loss(user_reps, item_reps, batch.users, batch.pos, batch.neg)
    return loss, user_reps, item_reps, pos - neg


class BalanceMethod:
    """Plain training; subclasses add balancing. Hooks are called by ``ckdlab.train``."""

    name = "none"

    def setup(self, ctx: TrainContext, model) -> None:
        """Called once before training (CKD trains or loads its teachers here)."""
        self.ctx = ctx

    def training_matrix(self, dataset) -> sp.csr_matrix:
        """Interactions the BPR sampler draws from (GB holds some out)."""
        return dataset.train_matrix

    def batch_loss(self, model, inputs: ModalityInputs, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss, *_ = backbone_step(model, inputs, batch, self.ctx.config.reg_weight)
        return loss, {}

    def after_backward(self, model) -> None:
        """Called between ``loss.backward()`` and ``optimizer.step()``."""

    def epoch_end(self, epoch: int, model) -> dict:
        """Per-epoch values to add to this epoch's history entry (e.g. rho, lambda)."""
        return {}

    def extras(self) -> dict:
        """Method outputs stored in the result (e.g. CKD's trace and teachers)."""
        return {}

    def state_dict(self) -> dict:
        """What changes during training and is needed to resume exactly (checkpoints).

        Anything ``setup`` rebuilds deterministically (teachers, fixed triples) is
        left out. Plain training keeps no such state; methods with counters, RNGs,
        traces or weights override this and :meth:`load_state_dict`. The returned
        objects may be live references: the trainer serialises them at once.
        """
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output, after ``setup``."""
        if state:
            raise ValueError(f"method {self.name!r} keeps no training state, but the checkpoint holds "
                             f"{sorted(state)}")


@register_method("none")
class PlainBPR(BalanceMethod):
    """No balancing: the backbone trained with its own BPR objective."""
