"""Every multimodal backbone learns: a few epochs beat the untrained model on validation."""
import numpy as np
import pytest
import torch

from ckdlab.backbones import build_backbone
from ckdlab.config import TrainConfig
from ckdlab.data import load
from ckdlab.evaluate import evaluate
from ckdlab.modality import ModalityInputs
from ckdlab.train import fit

BACKBONES = ["VBPR", "DeepStyle", "MMGCN", "GRCN", "EgoGCN", "MGCN"]


@pytest.fixture(scope="module")
def small_synthetic():
    return load("synthetic", n_users=300, n_items=250)


@pytest.mark.parametrize("name", BACKBONES)
def test_training_beats_untrained_model(small_synthetic, name):
    ds = small_synthetic
    torch.manual_seed(0)
    before = evaluate(build_backbone(name, ds), ModalityInputs.from_dataset(ds), ds, "valid", (20,))["recall@20"]
    # reg_weight 1e-4: two epochs must show learning; a stronger L2 (the default 1e-2) learns slower
    config = TrainConfig(backbone=name, max_epochs=2, batch_size=1024, lr=5e-3, reg_weight=1e-4, seed=0,
                         device="cpu", ks=(20,), eval_by_modality=False, progress=False)
    result = fit(ds, config)
    assert result.valid["recall@20"] > before + 0.03
    assert all(np.isfinite(h["loss"]) for h in result.history)


@pytest.mark.parametrize("method", ["gb", "ogm", "ckd"])
@pytest.mark.parametrize("name", BACKBONES)
def test_every_balancing_method_trains_every_backbone(name, method, tmp_path):
    ds = load("synthetic", n_users=120, n_items=100)
    params = {"teacher": {"max_epochs": 1}} if method == "ckd" else {}
    config = TrainConfig(backbone=name, method=method, method_params=params, max_epochs=1, batch_size=512,
                         lr=5e-3, seed=0, device="cpu", ks=(20,), progress=False)
    result = fit(ds, config, cache_dir=tmp_path)
    assert result.epochs_run == 1 and np.isfinite(result.history[0]["loss"])
    assert 0.0 <= result.test["recall@20"] <= 1.0
    assert set(result.test_by_modality) == set(ds.modalities)
