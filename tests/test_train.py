"""The training loop: determinism, early stopping, the result shape, uni-modal runs."""
import json

import numpy as np
import pytest
import torch

from ckdlab.config import TrainConfig
from ckdlab.data import load
from ckdlab.evaluate import evaluate
from ckdlab.modality import ModalityInputs
from ckdlab.result import Result
from ckdlab.train import fit


@pytest.fixture(scope="module")
def small_synthetic():
    return load("synthetic", n_users=300, n_items=250)


def quick(**kw) -> TrainConfig:
    base = dict(backbone="VBPR", max_epochs=4, batch_size=512, lr=5e-3, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_same_seed_same_numbers(small_synthetic):
    a = fit(small_synthetic, quick(seed=3))
    b = fit(small_synthetic, quick(seed=3))
    c = fit(small_synthetic, quick(seed=4))
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.test == b.test and a.test_by_modality == b.test_by_modality
    assert [h["loss"] for h in a.history] != [h["loss"] for h in c.history]


def test_result_shape_and_json_round_trip(small_synthetic, tmp_path):
    result = fit(small_synthetic, quick())
    path = tmp_path / "r.json"
    result.to_json(path)
    data = json.loads(path.read_text())
    for key in ("config", "dataset", "best_epoch", "epochs_run", "valid", "test", "test_by_modality", "history",
                "timing"):
        assert key in data
    for k in (10, 20, 50):
        for metric in ("recall", "ndcg", "precision"):
            assert f"{metric}@{k}" in data["test"]
    assert set(data["test_by_modality"]) == set(small_synthetic.modalities)
    entry = data["history"][0]
    assert {"epoch", "loss", "valid", "valid_by_modality", "seconds"} <= set(entry)
    assert {"train_seconds_per_epoch", "eval_seconds"} <= set(data["timing"])
    assert Result.from_json(path).test == result.test


def test_training_beats_untrained_model(small_synthetic):
    result, model, inputs = fit(small_synthetic, quick(max_epochs=8), return_model=True)
    torch.manual_seed(0)
    from ckdlab.backbones import build_backbone
    untrained = evaluate(build_backbone("VBPR", small_synthetic), inputs, small_synthetic, "valid")
    assert result.valid["recall@20"] > 3 * untrained["recall@20"]


def test_early_stopping_restores_the_best_epoch(small_synthetic):
    # a huge learning rate makes validation degrade quickly after the first epochs
    result = fit(small_synthetic, quick(max_epochs=30, lr=0.5, patience=2))
    best = max(h["valid"]["recall@20"] for h in result.history)
    assert result.epochs_run < 30
    assert result.epochs_run - result.best_epoch == 2
    assert result.valid["recall@20"] == pytest.approx(best, abs=1e-6)


def test_unimodal_run_ablates_other_modalities(small_synthetic):
    result, model, inputs = fit(small_synthetic, quick(ablate=("image",)), return_model=True)
    assert inputs.ablated == frozenset({"image"})
    assert result.config["ablate"] == ["image"] or result.config["ablate"] == ("image",)


def test_pop_needs_no_training(small_synthetic):
    result = fit(small_synthetic, quick(backbone="Pop"))
    assert result.epochs_run == 0 and result.history == []
    assert result.test["recall@20"] > 0


def test_config_settings_are_parsed_and_checked():
    cfg = TrainConfig().with_settings(["lr=0.005", "backbone.embedding_dim=32", "method.lambda_kd=0.1",
                                       "ablate=[\"image\"]"])
    assert cfg.lr == 0.005 and cfg.backbone_params == {"embedding_dim": 32}
    assert cfg.method_params == {"lambda_kd": 0.1} and cfg.ablate == ("image",)
    with pytest.raises(ValueError, match="unknown setting"):
        TrainConfig().with_settings(["learning_rate=1"])
    with pytest.raises(ValueError, match="select_metric"):
        TrainConfig(select_metric="recall@7")


def test_unknown_backbone_parameter_is_a_clear_error(small_synthetic):
    with pytest.raises(TypeError, match="VBPR"):
        fit(small_synthetic, quick(backbone_params={"bogus": 1}))
