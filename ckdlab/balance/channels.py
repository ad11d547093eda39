"""Uni-modal channels of a backbone, shared by Gradient Blending and OGM-GE.

The channel of modality ``m`` is the backbone fed ``inputs.only(m)``: every
other modality mean-ablated (paper eq. 8 and 10), so it scores with ``m`` alone.
Only modalities that the run did not already ablate (``TrainConfig.ablate``)
form channels: ``inputs.only(m)`` of an ablated ``m`` would bring its real
features back.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..gather import triple_margins
from ..modality import ModalityInputs

FULL = "full"


def active_modalities(inputs: ModalityInputs) -> tuple[str, ...]:
    """Modalities of ``inputs`` that are not ablated, in modality order."""
    return tuple(m for m in inputs.names if not inputs.is_ablated(m))


def check_modalities(model, inputs: ModalityInputs, method: str, *, disjoint: bool = False) -> tuple[str, ...]:
    """The modalities ``method`` balances, after checking the backbone supports it.

    Raises
    ------
    ValueError
        Fewer than two non-ablated modalities, a modality named ``"full"``, a
        modality without parameters (MF, Pop) or, when ``disjoint``, a parameter
        claimed by two modalities.
    """
    mods = active_modalities(inputs)
    if len(mods) < 2:
        raise ValueError(f"{method} balances at least two modalities; this run has {len(mods)} "
                         f"non-ablated modality(ies) {list(mods)} (inputs {inputs!r})")
    if FULL in mods:
        raise ValueError(f"{method}: a modality may not be named {FULL!r} (reserved for the full model)")
    owner: dict[int, str] = {}
    for m in mods:
        params = list(model.modality_parameters(m))
        if not params:
            raise ValueError(f"{method} needs modality-specific parameters, but backbone "
                             f"{getattr(model, 'name', type(model).__name__)} has none for modality {m!r} "
                             f"(backbones without modality branches, e.g. MF and Pop, cannot be balanced)")
        if disjoint:
            for p in params:
                if id(p) in owner and owner[id(p)] != m:
                    raise ValueError(f"{method}: a parameter of shape {tuple(p.shape)} belongs to both "
                                     f"{owner[id(p)]!r} and {m!r}; modality parameter sets must be disjoint")
                owner[id(p)] = m
    return mods


def margins(model, inputs: ModalityInputs, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """s_ui - s_uj per triple of the model fed ``inputs``, as u . (i - j) over the batch's rows
    (:meth:`~ckdlab.backbones.base.Backbone.batch_rows`: one forward pass, or only the rows)."""
    u, items = model.batch_rows(inputs, users, torch.cat([pos, neg]))
    return triple_margins(u, items)


def channel_margins(model, inputs: ModalityInputs, modalities, users, pos, neg) -> dict[str, torch.Tensor]:
    """Margins of each modality's channel ``inputs.only(m)`` (grad follows the caller's mode)."""
    return {m: margins(model, inputs.only(m), users, pos, neg) for m in modalities}


@torch.no_grad()
def bpr_on_triples(model, inputs: ModalityInputs, triples: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                   chunk: int = 65536) -> float:
    """Mean BPR loss -ln sigmoid(s_ui - s_uj) over fixed triples, in eval mode, no grad.

    The model's train/eval mode is restored afterwards.
    """
    users, pos, neg = triples
    was_training = model.training
    model.eval()
    try:
        user_reps, item_reps = model(inputs)
        total = torch.zeros((), dtype=torch.float64, device=users.device)
        for s in range(0, len(users), chunk):
            u, i, j = users[s:s + chunk], pos[s:s + chunk], neg[s:s + chunk]
            m = model.score_pairs(user_reps, item_reps, u, i) - model.score_pairs(user_reps, item_reps, u, j)
            total += (-F.logsigmoid(m)).double().sum()
        return float(total / max(len(users), 1))
    finally:
        model.train(was_training)


def to_device_triples(users: np.ndarray, pos: np.ndarray, neg: np.ndarray, device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.as_tensor(a, dtype=torch.long, device=device) for a in (users, pos, neg))
