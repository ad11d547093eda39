"""Uni-modal teachers (paper eq. 8-9): trained once, cached on disk, frozen.

The teacher of modality m is the same backbone trained with plain BPR on
inputs where every other modality is mean-ablated, selected (early stopping)
by the validation Recall@20 of that ablated model. Only its final user and item
representations are kept: a teacher never runs a forward pass during student
training.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..result import atomic_write_bytes

#: Bump when teacher training changes in a way that alters stored representations.
TEACHER_FORMAT = 1


@dataclass
class Teacher:
    """A frozen uni-modal teacher: its representations and its own metrics."""

    modality: str
    user_reps: torch.Tensor
    item_reps: torch.Tensor
    valid: dict
    test: dict
    best_epoch: int
    cached: bool

    def margin(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """dt_uij = t_ui - t_uj for a batch of triples (no gradient)."""
        u = self.user_reps[users]
        return (u * (self.item_reps[pos] - self.item_reps[neg])).sum(-1)

    def summary(self) -> dict:
        return {"valid": self.valid, "test": self.test, "best_epoch": self.best_epoch, "cached": self.cached}


def teacher_config(student_config, modality: str, dataset, overrides: dict | None = None):
    """The student's training configuration, as plain BPR with every modality but ``modality`` ablated."""
    others = tuple(m for m in dataset.modalities if m != modality)
    cfg = student_config.replace(method="none", method_params={}, ablate=others, eval_by_modality=False)
    return cfg.replace(**(overrides or {}))


def teacher_key(config, dataset, modality: str) -> str:
    payload = {"data": dataset.fingerprint, "modality": modality, "config": config.identity(),
               "format": TEACHER_FORMAT}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def load_or_train_teacher(student_config, dataset, modality: str, cache_dir: Path, device: torch.device,
                          overrides: dict | None = None) -> Teacher:
    """The teacher of ``modality``: read from ``cache_dir/teachers`` or trained and stored there."""
    from ..evaluate import representations
    from ..train import fit

    config = teacher_config(student_config, modality, dataset, overrides).replace(device=str(device))
    path = Path(cache_dir) / "teachers" / f"{config.backbone.lower()}-{modality}-{teacher_key(config, dataset, modality)}.pt"
    if path.exists():
        stored = torch.load(path, map_location=device, weights_only=False)
        return Teacher(modality, stored["user_reps"], stored["item_reps"], stored["valid"], stored["test"],
                       stored["best_epoch"], cached=True)
    result, model, inputs = fit(dataset, config, cache_dir=cache_dir, return_model=True)
    user_reps, item_reps = representations(model, inputs)
    stored = {"user_reps": user_reps.detach().cpu(), "item_reps": item_reps.detach().cpu(), "valid": result.valid,
              "test": result.test, "best_epoch": result.best_epoch, "config": config.to_dict()}
    buffer = io.BytesIO()
    torch.save(stored, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Teacher(modality, user_reps.detach(), item_reps.detach(), result.valid, result.test,
                   result.best_epoch, cached=False)
