"""The two real datasets under ../shared/data load with their documented sizes (skipped when absent)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from ckdlab.data import DataWarning, load
from conftest import shared_dataset_path

pytestmark = pytest.mark.realdata

EXPECTED = {
    "tiktok": dict(users=9308, items=6710, interactions={"train": 59541, "valid": 3051, "test": 6130},
                   modalities={"audio": 128, "image": 128}),
    "baby": dict(users=19445, items=7050, interactions={"train": 118551, "valid": 20559, "test": 21682},
                 modalities={"image": 256, "text": 256}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_dataset_sizes_and_summary(name):
    path = shared_dataset_path(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = load(path)
    summary = ds.summary()
    expected = EXPECTED[name]
    assert summary["name"] == name
    assert summary["users"] == expected["users"] and summary["items"] == expected["items"]
    assert summary["interactions"] == expected["interactions"]
    assert summary["modalities"] == expected["modalities"]
    assert ds.notes["duplicates_removed"] == 0
    assert summary["excluded_eval_users"] == ds.notes["excluded_eval_users"]
    for f in ds.features.values():
        assert f.dtype == np.float32 and f.flags["C_CONTIGUOUS"] and np.isfinite(f).all()
    assert ds.train[:, 1].max() < ds.n_items


def test_tiktok_reports_users_without_training():
    """TikTok has eval users with no training interaction and items with none: both are kept/counted."""
    path = shared_dataset_path("tiktok")
    with pytest.warns(DataWarning, match="no training interaction"):
        ds = load(path)
    excluded = ds.notes["excluded_eval_users"]
    assert excluded["valid"] > 0 and excluded["test"] > 0
    assert len(ds.eval_users("test")) == len(np.unique(ds.test[:, 0])) - excluded["test"]
    assert len(np.unique(ds.train[:, 1])) < ds.n_items  # cold items exist; n_items comes from the features
