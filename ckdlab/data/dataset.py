"""The in-memory dataset every other layer reads."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

SPLITS = ("train", "valid", "test")


@dataclass
class Dataset:
    """Interactions, splits and item features of one multimodal dataset.

    Parameters
    ----------
    name : str
        Short name shown in summaries and results ("tiktok", "synthetic", ...).
    n_users, n_items : int
        Number of users and items; ids are dense in ``[0, n_users)`` / ``[0, n_items)``.
    train, valid, test : np.ndarray
        ``(n, 2)`` int64 arrays of ``(user, item)`` pairs, duplicates already removed.
    features : dict[str, np.ndarray]
        One float32 ``(n_items, d_m)`` matrix per modality, keyed by modality name.
        Insertion order is the modality order used everywhere.
    source : str
        Where the data came from (a folder path or ``"synthetic(...)"``).
    item_category : np.ndarray or None
        Optional integer category per item (used by DeepStyle when present).
    notes : dict
        Facts the loader found worth reporting (duplicates removed, users excluded).
    normalization : dict or None
        ``{modality: "standardize" | "l2"}`` applied to the features by the loader
        (:func:`ckdlab.data.normalize.normalize_dataset`); None when the features
        are as read. Part of the fingerprint and the summary when set.
    as_read_fingerprint : str or None
        For normalised data, the fingerprint of the features as read (what the
        shipped tuned settings are keyed by); None when the features are as read.
    """

    name: str
    n_users: int
    n_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    features: dict[str, np.ndarray]
    source: str = ""
    item_category: np.ndarray | None = None
    notes: dict = field(default_factory=dict)
    normalization: dict | None = None
    as_read_fingerprint: str | None = None
    _matrices: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.features)

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def interaction_matrix(self, split: str) -> sp.csr_matrix:
        """Binary users x items CSR matrix of one split (built once, then cached)."""
        if split not in self._matrices:
            pairs = self.split(split)
            data = np.ones(len(pairs), dtype=np.float32)
            self._matrices[split] = sp.csr_matrix((data, (pairs[:, 0], pairs[:, 1])),
                                                  shape=(self.n_users, self.n_items))
        return self._matrices[split]

    @property
    def train_matrix(self) -> sp.csr_matrix:
        return self.interaction_matrix("train")

    def eval_users(self, split: str) -> np.ndarray:
        """Users with at least one interaction in ``split`` and at least one in train.

        Users without training interactions are excluded from evaluation (as MMRec
        does); ``summary()`` reports how many were excluded.
        """
        users = np.unique(self.split(split)[:, 0])
        has_train = np.diff(self.train_matrix.indptr) > 0
        return users[has_train[users]]

    def summary(self, include_test: bool = True) -> dict:
        """Plain-data description: sizes, density, modalities, exclusions.

        ``include_test=False`` leaves the test split out (its size, evaluation
        users and exclusions; density then counts train and valid): the summary
        of a run that never reads the test split.
        """
        splits = SPLITS if include_test else tuple(s for s in SPLITS if s != "test")
        evaluated = tuple(s for s in splits if s != "train")
        n_inter = {s: int(len(self.split(s))) for s in splits}
        excluded = {s: int(len(np.unique(self.split(s)[:, 0])) - len(self.eval_users(s))) for s in evaluated}
        total = sum(n_inter.values())
        return {
            "name": self.name,
            "source": self.source,
            "users": int(self.n_users),
            "items": int(self.n_items),
            "interactions": n_inter,
            "density": total / float(self.n_users * self.n_items),
            "modalities": {m: int(f.shape[1]) for m, f in self.features.items()},
            "eval_users": {s: int(len(self.eval_users(s))) for s in evaluated},
            "excluded_eval_users": excluded,
            "has_item_category": self.item_category is not None,
            **({"notes": dict(self.notes)} if self.notes else {}),
            **({"normalization": dict(self.normalization)} if self.normalization else {}),
        }

    @property
    def raw_fingerprint(self) -> str:
        """The fingerprint of this data with its features as read (before any normalisation)."""
        return self.as_read_fingerprint or self.fingerprint

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of ids, splits and features: the key for every cache."""
        h = hashlib.sha256()
        h.update(f"{self.n_users}:{self.n_items}".encode())
        for s in SPLITS:
            h.update(s.encode())
            h.update(np.ascontiguousarray(self.split(s), dtype=np.int64).tobytes())
        for m, f in self.features.items():
            h.update(m.encode())
            h.update(np.ascontiguousarray(f, dtype=np.float32).tobytes())
        if self.item_category is not None:
            h.update(np.ascontiguousarray(self.item_category, dtype=np.int64).tobytes())
        if self.normalization:  # only when set: fingerprints of unnormalised data stay as they were
            h.update(b"normalization")
            h.update(json.dumps(self.normalization, sort_keys=True).encode())
        return h.hexdigest()[:16]
