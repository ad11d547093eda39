"""Shared fixtures: a tiny hand-built dataset and the location of the real data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ckdlab.data.dataset import Dataset

# One intra-op thread: identical numbers run to run, and no oversubscription when
# pytest shares the machine with other work.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_tiny_dataset(n_users: int = 30, n_items: int = 40, per_user: int = 8, seed: int = 0,
                      dims: dict[str, int] | None = None) -> Dataset:
    """A small random dataset: every user has ``per_user`` distinct items split 6/1/1."""
    rng = np.random.default_rng(seed)
    dims = dims or {"image": 12, "text": 8}
    rows = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False)
        rows["train"] += [(u, i) for i in items[:-2]]
        rows["valid"].append((u, items[-2]))
        rows["test"].append((u, items[-1]))
    arr = {k: np.asarray(v, dtype=np.int64) for k, v in rows.items()}
    feats = {m: rng.normal(size=(n_items, d)).astype(np.float32) for m, d in dims.items()}
    return Dataset("tiny", n_users, n_items, arr["train"], arr["valid"], arr["test"], feats, source="tests")


def write_mmrec(dataset: Dataset, folder: Path) -> Path:
    """Write ``dataset`` as an MMRec folder: ``<folder name>.inter`` plus ``<modality>_feat.npy``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["userID\titemID\tx_label"]
    for label, split in enumerate(("train", "valid", "test")):
        lines += [f"{u}\t{i}\t{label}" for u, i in dataset.split(split)]
    (folder / f"{folder.name}.inter").write_text("\n".join(lines) + "\n")
    for m, feats in dataset.features.items():
        np.save(folder / f"{m}_feat.npy", np.asarray(feats, dtype=np.float32))
    return folder


@pytest.fixture(autouse=True)
def one_thread_and_no_thread_setting_left_behind(monkeypatch):
    """Every test starts at one thread and without ``CKDLAB_THREADS``; what a test sets (the CLI's thread
    policy sets torch's count for the process, ``experiments.setup`` the variable) ends with it."""
    import os

    from ckdlab.records import ONLY_ENV, RECORDS_ENV
    from ckdlab.threads import ENV

    monkeypatch.delenv(ENV, raising=False)
    for name in (RECORDS_ENV, ONLY_ENV):  # a developer's records folder stays out of the tests
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(1)
    yield
    os.environ.pop(ENV, None)
    torch.set_num_threads(1)


@pytest.fixture
def tiny_dataset() -> Dataset:
    return make_tiny_dataset()


def shared_dataset_path(name: str) -> Path:
    """Path of a real dataset under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name!r} not available: {path} is absent (a fresh clone has no ../shared)")
    return path
