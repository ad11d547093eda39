"""The synthetic dataset: determinism, splits, popularity skew and planted modality strengths."""
from __future__ import annotations

import numpy as np
import pytest

from ckdlab.data import Dataset, SyntheticConfig, generate_synthetic, load


@pytest.fixture(scope="module")
def default_dataset() -> Dataset:
    return generate_synthetic()


def content_recall_at_k(ds: Dataset, features: np.ndarray, k: int = 20, split: str = "test") -> float:
    """Recall@k of a content-only recommender.

    User profile = mean of the user's training-item features (rows L2-normalised);
    items ranked by cosine to the profile, training items masked.
    """
    f = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-12)
    train = ds.train_matrix
    profile = np.asarray(train @ f) / np.maximum(np.asarray(train.sum(axis=1)), 1)
    profile /= np.linalg.norm(profile, axis=1, keepdims=True) + 1e-12
    users = ds.eval_users(split)
    scores = profile[users] @ f.T
    scores[train[users].nonzero()] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    truth = ds.interaction_matrix(split)[users]
    hits = np.asarray(truth[np.arange(len(users))[:, None], top].sum(axis=1)).ravel()
    return float(np.mean(hits / np.asarray(truth.sum(axis=1)).ravel()))


def test_default_size_and_shapes(default_dataset):
    ds = default_dataset
    cfg = SyntheticConfig()
    assert (ds.n_users, ds.n_items) == (cfg.n_users, cfg.n_items) == (2000, 1500)
    assert ds.modalities == ("text", "image")
    assert {m: f.shape for m, f in ds.features.items()} == {"text": (1500, 64), "image": (1500, 96)}
    assert all(f.dtype == np.float32 and np.isfinite(f).all() for f in ds.features.values())
    for s in ("train", "valid", "test"):
        arr = ds.split(s)
        assert arr.dtype == np.int64 and arr.ndim == 2 and arr.shape[1] == 2
        assert arr[:, 0].max() < ds.n_users and arr[:, 1].max() < ds.n_items
    total = sum(len(ds.split(s)) for s in ("train", "valid", "test"))
    assert 25 <= total / ds.n_users <= 40
    assert ds.item_category is not None and ds.item_category.shape == (ds.n_items,)
    assert ds.summary()["users"] == 2000


def test_split_proportions_and_integrity(default_dataset):
    ds = default_dataset
    sizes = np.array([len(ds.train), len(ds.valid), len(ds.test)], dtype=float)
    np.testing.assert_allclose(sizes / sizes.sum(), [0.8, 0.1, 0.1], atol=0.02)
    # Every user has at least one training item; the three splits never share a pair.
    assert (np.bincount(ds.train[:, 0], minlength=ds.n_users) >= 1).all()
    keys = np.concatenate([p[:, 0] * ds.n_items + p[:, 1] for p in (ds.train, ds.valid, ds.test)])
    assert len(np.unique(keys)) == len(keys)
    assert len(ds.eval_users("test")) > 0.95 * ds.n_users


def test_small_users_keep_their_remainder_in_train():
    ds = generate_synthetic(n_users=300, n_items=100, mean_interactions=3, min_interactions=1, seed=4)
    per_user = {s: np.bincount(ds.split(s)[:, 0], minlength=ds.n_users) for s in ("train", "valid", "test")}
    n = per_user["train"] + per_user["valid"] + per_user["test"]
    assert (per_user["train"] >= 1).all()
    assert (per_user["train"][n <= 4] == n[n <= 4]).all()  # 10% of <= 4 items rounds to 0


def test_long_tail_popularity(default_dataset):
    counts = np.sort(np.bincount(default_dataset.train[:, 1], minlength=default_dataset.n_items))[::-1]
    top_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_share > 0.3  # the 10% most popular items hold far more than 10% of interactions


def test_same_seed_is_identical_and_other_seed_differs(default_dataset):
    again = generate_synthetic(seed=0)
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(again.split(s), default_dataset.split(s))
    for m in default_dataset.modalities:
        np.testing.assert_array_equal(again.features[m], default_dataset.features[m])
    np.testing.assert_array_equal(again.item_category, default_dataset.item_category)
    assert again.fingerprint == default_dataset.fingerprint

    other = generate_synthetic(seed=1)
    assert other.fingerprint != default_dataset.fingerprint
    assert not np.array_equal(other.features["text"], default_dataset.features["text"])
    assert len(other.train) != len(default_dataset.train) or not np.array_equal(other.train, default_dataset.train)


def test_overrides_config_and_load_name():
    cfg = SyntheticConfig(n_users=120, n_items=90, mean_interactions=10, modalities={"a": (5, 1.0), "b": (7, 0.2),
                                                                                     "c": (3, 0.5)})
    ds = generate_synthetic(cfg, seed=3)
    assert (ds.n_users, ds.n_items, ds.modalities) == (120, 90, ("a", "b", "c"))
    assert ds.notes["config"]["seed"] == 3
    loaded = load("synthetic", n_users=120, n_items=90, mean_interactions=10, seed=3,
                  modalities={"a": (5, 1.0), "b": (7, 0.2), "c": (3, 0.5)})
    assert loaded.fingerprint == ds.fingerprint
    # A feature-only change leaves the interactions untouched (separate random streams).
    stronger = generate_synthetic(cfg, seed=3, modalities={"a": (5, 2.0), "b": (7, 0.2), "c": (3, 0.5)})
    np.testing.assert_array_equal(stronger.train, ds.train)


@pytest.mark.parametrize("bad", [dict(n_items=1), dict(min_interactions=0), dict(mean_interactions=2000),
                                 dict(modalities={}), dict(modalities={"x": (0, 1.0)}), dict(complementarity=1.5),
                                 dict(valid_fraction=0.5, test_fraction=0.5)])
def test_invalid_config_is_rejected(bad):
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)


def test_planted_modality_strengths(default_dataset):
    """The documented claim: text (strong) > image (weak) > random, and together beat text alone."""
    ds = default_dataset
    rng = np.random.default_rng(0)
    recall = {m: content_recall_at_k(ds, f) for m, f in ds.features.items()}
    recall["random"] = np.mean([content_recall_at_k(ds, rng.standard_normal((ds.n_items, 64))) for _ in range(3)])
    both = np.concatenate([f / np.linalg.norm(f, axis=1, keepdims=True) for f in ds.features.values()], axis=1)
    recall["both"] = content_recall_at_k(ds, both)
    assert recall["text"] > 1.5 * recall["image"], recall
    assert recall["image"] > 2.5 * recall["random"], recall
    assert recall["both"] > 1.05 * recall["text"], recall


def test_the_check_detects_a_modality_without_signal():
    """Negative control: with strength 0 a modality is pure noise and scores like random features."""
    ds = generate_synthetic(modalities={"text": (64, 1.0), "image": (96, 0.0)})
    recall_image = content_recall_at_k(ds, ds.features["image"])
    recall_text = content_recall_at_k(ds, ds.features["text"])
    assert recall_image < 0.03 < recall_text
