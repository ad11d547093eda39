"""ckdlab/examples: the plug-in backbone trains with every balancing method; the plug-in method is wired in."""
from __future__ import annotations

import pytest

from conftest import make_tiny_dataset

from ckdlab.config import TrainConfig
from ckdlab.examples import channel_bpr  # noqa: F401  (registers "channel-bpr")
from ckdlab.train import fit

EXAMPLE = "ckdlab.examples.lightgcn_features:LightGCNFeatures"


def tiny_config(method: str, **fields) -> TrainConfig:
    return TrainConfig(backbone=EXAMPLE, method=method, max_epochs=2, batch_size=64, device="cpu", progress=False,
                       backbone_params={"embedding_dim": 16}, **fields)


@pytest.mark.parametrize("method, params", [("none", {}), ("ckd", {"teacher": {"max_epochs": 1}}), ("gb", {}),
                                            ("ogm", {})])
def test_the_example_backbone_trains_with_every_method(method, params, tmp_path):
    result = fit(make_tiny_dataset(), tiny_config(method, method_params=params), cache_dir=tmp_path)
    assert result.config["backbone"] == "LightGCN-F" and result.epochs_run == 2
    assert set(result.test_by_modality) == {"image", "text"}


def test_the_example_method_adds_each_channels_bpr_loss(tmp_path):
    data = make_tiny_dataset()
    plain = fit(data, tiny_config("none"), cache_dir=tmp_path)
    off = fit(data, tiny_config("channel-bpr", method_params={"alpha": 0.0}), cache_dir=tmp_path)
    on = fit(data, tiny_config("channel-bpr", method_params={"alpha": 1.0}), cache_dir=tmp_path)
    assert off.test == plain.test  # alpha 0: exactly plain training
    assert on.test != plain.test
    assert {"bpr_image", "bpr_text"} <= set(on.history[0])
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        channel_bpr.ChannelBPR(alpha=-1)
