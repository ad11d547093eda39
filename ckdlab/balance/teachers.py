"""Uni-modal teachers (paper eq. 8-9): trained once, cached on disk, frozen.

The teacher of modality m is the same backbone trained with plain BPR on
inputs where every other modality is mean-ablated, selected (early stopping)
by the validation Recall@20 of that ablated model. Only its final user and item
representations are kept: a teacher never runs a forward pass during student
training.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import store
from ..provenance import numbers_identity
from ..evaluate import representations
from ..gather import frozen_margins

#: Bump when teacher training changes in a way that alters stored representations.
#: 2: entries carry an integrity header (:func:`ckdlab.store.write_blob`).
TEACHER_FORMAT = 2
TEACHER_SCHEMA = "ckdlab.teacher"


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
    #: What training it cost (``epochs_run`` and the run's ``Result.timing``); None for a teacher
    #: stored before teachers kept it.
    cost: dict | None = None

    def margin(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """dt_uij = t_ui - t_uj for a batch of triples (no gradient; the same numbers as
        :meth:`~ckdlab.backbones.base.Backbone.score_margins`, gathered in cache-sized chunks)."""
        return frozen_margins(self.user_reps, self.item_reps, users, pos, neg)

    def summary(self) -> dict:
        out = {"valid": self.valid, "test": self.test, "best_epoch": self.best_epoch, "cached": self.cached}
        if self.cost is not None:
            out["cost"] = self.cost
        return out


def teacher_config(student_config, modality: str, dataset, overrides: dict | None = None):
    """The student's training configuration, as plain BPR with every modality but ``modality`` ablated."""
    others = tuple(m for m in dataset.modalities if m != modality)
    cfg = student_config.replace(method="none", method_params={}, ablate=others, eval_by_modality=False)
    return cfg.replace(**(overrides or {}))


def teacher_key(config, dataset, modality: str) -> str:
    """Like a result key: configuration, data, format and :func:`~ckdlab.provenance.numbers_identity`."""
    return store.entry_key(data=dataset.fingerprint, modality=modality, config=config.identity(),
                           format=TEACHER_FORMAT, **numbers_identity(config.device))


def teacher_path(config, dataset, modality: str, cache_dir: Path) -> Path:
    """Cache entry of the teacher trained with ``config`` (from :func:`teacher_config`)."""
    key = teacher_key(config, dataset, modality)
    return Path(cache_dir) / "teachers" / f"{config.backbone.lower()}-{modality}-{key}.pt"


def _read_teacher(path: Path, modality: str, device: torch.device, *, quarantine_bad: bool) -> Teacher | None:
    """The cached teacher at ``path``, or None when absent or bad (verified before ``torch.load`` sees it)."""
    blob = store.load_entry(store.read_blob, path, quarantine_bad=quarantine_bad, schema=TEACHER_SCHEMA,
                            format=TEACHER_FORMAT)
    if blob is None:
        return None
    try:
        stored = torch.load(io.BytesIO(blob), map_location=device, weights_only=False)
        return Teacher(modality, stored["user_reps"], stored["item_reps"], stored["valid"], stored["test"],
                       stored["best_epoch"], cached=True, cost=stored.get("cost"))
    except Exception as exc:  # a checksum-valid file torch cannot read (e.g. written by another torch)
        if quarantine_bad:
            store.quarantine(path, f"torch.load failed: {type(exc).__name__}: {exc}")
        return None


def load_or_train_teacher(student_config, dataset, modality: str, cache_dir: Path, device: torch.device,
                          overrides: dict | None = None, *, train_run) -> Teacher:
    """The teacher of ``modality``: read from ``cache_dir/teachers`` or trained and stored there.

    Trained under the entry's lock (:func:`ckdlab.store.locked`), so students
    running in parallel that share a teacher train it once; a bad entry is
    reported (``CacheWarning``), moved aside and retrained. ``train_run(dataset,
    config) -> (Result, model, inputs)`` trains it (``TrainContext.train_run``).
    """
    config = teacher_config(student_config, modality, dataset, overrides).replace(device=str(device))
    path = teacher_path(config, dataset, modality, cache_dir)
    teacher = _read_teacher(path, modality, device, quarantine_bad=False)  # fast path, no lock
    if teacher is not None:
        return teacher
    with store.locked(path):
        teacher = _read_teacher(path, modality, device, quarantine_bad=True)  # written while we waited?
        if teacher is not None:
            return teacher
        result, model, inputs = train_run(dataset, config)
        user_reps, item_reps = representations(model, inputs)
        # kept so that a student's record says what its teachers cost (the teachers have no records)
        cost = {"epochs_run": result.epochs_run, **result.timing}
        stored = {"user_reps": user_reps.detach().cpu(), "item_reps": item_reps.detach().cpu(),
                  "valid": result.valid, "test": result.test, "best_epoch": result.best_epoch,
                  "config": config.to_dict(), "cost": cost}
        buffer = io.BytesIO()
        torch.save(stored, buffer)
        meta = {**numbers_identity(config.device), "run": f"{config.backbone} {modality} teacher seed {config.seed}",
                "dataset": dataset.name}
        store.write_blob(path, buffer.getvalue(), schema=TEACHER_SCHEMA, format=TEACHER_FORMAT, meta=meta)
    return Teacher(modality, user_reps.detach(), item_reps.detach(), result.valid, result.test,
                   result.best_epoch, cached=False, cost=cost)
