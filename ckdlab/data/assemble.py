"""Turn validated raw interactions plus features into a :class:`Dataset`.

Both readers hand over the same thing, a :class:`RawInteractions`: integer,
non-negative ``(user, item, split)`` columns plus a way to say where row ``k``
came from. Everything here works on local arrays; a :class:`Dataset` is built
only once all checks passed, so a failed load leaves nothing half-loaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .dataset import SPLITS, Dataset
from .errors import DataError, warn_data
from .features import FEATURE_SUFFIX, read_features, read_item_category


@dataclass
class RawInteractions:
    """Interactions as read from disk, before range checks and de-duplication.

    Attributes
    ----------
    users, items : np.ndarray
        int64, already checked to be non-negative integers.
    split : np.ndarray
        int8 split code per row: 0 = train, 1 = valid, 2 = test.
    where : callable
        ``where(k)`` describes the origin of row ``k`` for error messages,
        e.g. ``"baby.inter line 57"`` or ``"5-core/train.json user '12'"``.
    item_label : str
        How the item column is called in that file (``"itemID"``, ``"item"``).
    """

    users: np.ndarray
    items: np.ndarray
    split: np.ndarray
    where: Callable[[int], str]
    item_label: str = "item"


def first_occurrences(users: np.ndarray, items: np.ndarray, split: np.ndarray, n_items: int) -> np.ndarray:
    """Boolean mask keeping one row per (user, item) pair.

    The kept row is the one in the earliest split (train < valid < test) and,
    within a split, the first in file order.
    """
    key = users * np.int64(n_items) + items
    # lexsort is stable: sorts by key, then split, then original position.
    order = np.lexsort((split, key))
    sorted_key = key[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    keep = np.zeros(len(order), dtype=bool)
    keep[order[first]] = True
    return keep


def _check_item_range(raw: RawInteractions, n_rows: int, feature_names: list[str]) -> None:
    bad = np.flatnonzero(raw.items >= n_rows)
    if len(bad):
        k = int(bad[0])
        raise DataError(
            f"{raw.where(k)}: {raw.item_label} {int(raw.items[k])} is out of range: the feature matrices "
            f"({', '.join(feature_names)}) have only {n_rows} rows, so item ids must be < {n_rows} "
            f"({len(bad)} interaction(s) affected)")


def _excluded_eval_users(train: np.ndarray, other: np.ndarray, n_users: int) -> int:
    """How many users of ``other`` have no training interaction."""
    has_train = np.zeros(n_users, dtype=bool)
    has_train[train[:, 0]] = True
    return int((~has_train[np.unique(other[:, 0])]).sum())


def build_dataset(name: str, folder: Path, raw: RawInteractions, interaction_file: str,
                  train_file: str | None = None) -> Dataset:
    """Validate ``raw`` against the folder's features and assemble the dataset.

    Parameters
    ----------
    name : str
        Dataset name.
    folder : Path
        Folder holding ``*_feat.npy`` and optionally ``item_category.npy``.
    raw : RawInteractions
        Interactions from one of the readers.
    interaction_file : str
        Name of the interaction file(s), used in messages about the whole file.
    train_file : str, optional
        Name of the file holding the train split, when it is a separate file.

    Returns
    -------
    Dataset
        With ``notes["duplicates_removed"]`` and ``notes["excluded_eval_users"]``.
    """
    features = read_features(folder)
    n_items = next(iter(features.values())).shape[0]
    _check_item_range(raw, n_items, [f"{m}{FEATURE_SUFFIX}" for m in features])
    item_category = read_item_category(folder, n_items)

    if not (raw.split == 0).any():
        raise DataError(f"{train_file or interaction_file}: the train split is empty; at least one training interaction is needed")
    n_users = int(raw.users.max()) + 1

    keep = first_occurrences(raw.users, raw.items, raw.split, n_items)
    n_duplicates = int(len(keep) - keep.sum())
    pairs = np.stack([raw.users, raw.items], axis=1)[keep]
    split = raw.split[keep]
    parts = {s: np.ascontiguousarray(pairs[split == code]) for code, s in enumerate(SPLITS)}

    excluded = {s: _excluded_eval_users(parts["train"], parts[s], n_users) for s in ("valid", "test")}
    if n_duplicates:
        warn_data(f"{interaction_file}: removed {n_duplicates} duplicate interaction(s) "
                  "(a pair repeated in a split, or found in a later split than its first)")
    if any(excluded.values()):
        warn_data(f"{interaction_file}: {excluded['valid']} validation and {excluded['test']} test user(s) "
                  "have no training interaction and are excluded from evaluation")
    notes = {"duplicates_removed": n_duplicates, "excluded_eval_users": excluded}
    return Dataset(name, n_users, n_items, parts["train"], parts["valid"], parts["test"], features,
                   source=str(folder), item_category=item_category, notes=notes)
