"""The seam between the training loop and a balancing method.

A balancing method never edits a backbone: per step it receives the backbone,
the inputs and the batch, and returns the loss to minimise (plus numbers to
log). Methods that modulate gradients (OGM-GE) do it in ``after_backward``.
A method that must keep interactions away from training (Gradient Blending's
held-out slice) says so in ``training_data``, before the backbone is built.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from ..backbones.base import Backbone
from ..data.dataset import Dataset
from ..gather import rows, squared_norm, triple_margins
from ..losses import bpr_margin_loss
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
    """What a method may need at set-up: data, configuration, device, cache and a way to train.

    ``train_run(dataset, config) -> (Result, model, inputs)`` trains a helper model
    (CKD's teachers) with the same trainer as the run itself; the trainer hands it
    over (:func:`ckdlab.train.training_runner`), so ``balance/`` never imports the
    training loop that imports it.
    """

    dataset: object
    config: object
    device: torch.device
    cache_dir: Path
    inputs: ModalityInputs
    train_run: Callable | None = None


def backbone_step(model, inputs: ModalityInputs, batch: Batch, reg_weight: float):
    """The backbone's own objective on a batch: BPR + L2 + its auxiliary loss.

    Returns ``(loss, user_reps, item_reps, margin)`` so a method can reuse the
    forward pass; ``margin`` is s_ui - s_uj per triple. ``user_reps`` and
    ``item_reps`` are None when the backbone computed only the batch's rows
    (:meth:`~ckdlab.backbones.base.Backbone.batch_rows`).
    """
    n = len(batch.pos)
    items = torch.cat([batch.pos, batch.neg])
    default_l2 = type(model).regularization is Backbone.regularization
    has_auxiliary = type(model).auxiliary_loss is not Backbone.auxiliary_loss
    if default_l2 and not has_auxiliary and model.computes_batch_rows:  # only the batch's rows, no full forward
        user_reps = item_reps = None
        u, item_rows = model.batch_rows(inputs, batch.users, items)
    else:
        # one gather per side, reused by the scores and the default L2: every gather's backward
        # zero-fills and scatters into a gradient of the full table, the bulk of a cheap model's step
        user_reps, item_reps = model(inputs)
        u, item_rows = rows(user_reps, batch.users), rows(item_reps, items)
    margin = triple_margins(u, item_rows)
    loss = bpr_margin_loss(margin)
    if default_l2:  # norms of the gathered rows
        reg = (squared_norm(u) + squared_norm(item_rows)) / (2 * max(n, 1))
    else:
        reg = model.regularization(user_reps, item_reps, batch.users, batch.pos, batch.neg)
    loss = loss + reg_weight * reg
    if has_auxiliary:
        loss = loss + model.auxiliary_loss(user_reps, item_reps, batch.users, batch.pos, batch.neg)
    return loss, user_reps, item_reps, margin


class TrainingView(Dataset):
    """A dataset whose ``train`` split lacks some interactions: what a model trains on.

    Built by :func:`training_view`. The valid and test splits are empty (evaluation
    reads the original dataset, whose train matrix masks *all* training items), and
    ``fingerprint`` raises: caches and checkpoints are keyed on the original dataset.
    """

    @property
    def fingerprint(self) -> str:
        # RuntimeError, not AttributeError: a getattr(..., default) must not pass silently
        raise RuntimeError(f"dataset {self.name!r} is a training view; key caches on the original dataset")


def training_view(dataset, train: np.ndarray, note: str) -> TrainingView:
    """``dataset`` with training pairs ``train`` (a subset of ``dataset.train``) and no valid/test."""
    empty = np.empty((0, 2), dtype=np.int64)
    return TrainingView(
        name=dataset.name, n_users=dataset.n_users, n_items=dataset.n_items,
        train=np.asarray(train, dtype=np.int64), valid=empty, test=empty, features=dataset.features,
        source=dataset.source, item_category=dataset.item_category,
        notes={**dataset.notes, "training_view": note})


class BalanceMethod:
    """Plain training; subclasses add balancing. Hooks are called by ``ckdlab.train``."""

    name = "none"

    def training_data(self, dataset, config) -> Dataset:
        """The dataset the model trains on; called before the backbone exists.

        The trainer builds the backbone (and so its propagation graphs) and the BPR
        sampler from the returned dataset's ``train``; evaluation, cache keys and
        checkpoints keep ``dataset``. Must depend on ``dataset`` and ``config`` only
        (it runs again, identically, on resume). Default: ``dataset`` unchanged;
        Gradient Blending returns a :class:`TrainingView` without its held-out slice.
        """
        return dataset

    def setup(self, ctx: TrainContext, model) -> None:
        """Called once before training (CKD trains or loads its teachers here).

        ``ctx.dataset`` is the original dataset, not :meth:`training_data`'s view.
        """
        self.ctx = ctx

    def training_matrix(self, dataset) -> sp.csr_matrix:
        """Interactions a BPR sampler draws from, for callers that build one themselves (bench).

        The trainer uses ``training_data(...).train_matrix``; the two agree.
        """
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
