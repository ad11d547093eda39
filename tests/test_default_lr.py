"""A backbone's own default learning rate (``Backbone.default_lr``): where it applies and where not."""
from __future__ import annotations

import pytest

from ckdlab.backbones.mmgcn import MMGCN
from ckdlab.backbones.vbpr import VBPR
from ckdlab.config import DEFAULT_LR, TrainConfig
from ckdlab.experiments import make_config, product
from ckdlab.tuning import search_config

OWN = 5e-4  # a rate no built-in uses, so a wrong path cannot pass by coincidence


@pytest.fixture
def mmgcn_own_lr(monkeypatch):
    monkeypatch.setattr(MMGCN, "default_lr", OWN)
    monkeypatch.setattr(VBPR, "default_lr", None)


def test_an_unset_lr_is_the_backbones_default_and_is_stored_as_a_number(mmgcn_own_lr):
    assert TrainConfig(backbone="MMGCN").lr == OWN
    assert TrainConfig(backbone="mmgcn").lr == OWN  # names are case-insensitive
    assert TrainConfig(backbone="VBPR").lr == DEFAULT_LR
    assert TrainConfig(backbone="MMGCN").identity()["lr"] == OWN  # the key holds the rate that ran
    assert make_config("MMGCN", "ckd").lr == OWN


def test_an_explicit_lr_wins_and_travels(mmgcn_own_lr):
    explicit = TrainConfig(backbone="MMGCN", lr=5e-3)
    assert explicit.lr == 5e-3 and not explicit.uses_default_lr()
    assert explicit.replace(backbone="VBPR").lr == 5e-3
    assert explicit.with_settings(["backbone=VBPR"]).lr == 5e-3
    assert TrainConfig(backbone="VBPR").with_settings(["backbone=MMGCN", "lr=0.005"]).lr == 5e-3


def test_a_config_made_for_another_backbone_gets_that_backbones_default(mmgcn_own_lr):
    assert TrainConfig().replace(backbone="MMGCN").lr == OWN
    assert TrainConfig(backbone="MMGCN").replace(backbone="VBPR").lr == DEFAULT_LR
    assert TrainConfig().with_settings(["backbone=MMGCN"]).lr == OWN
    assert [c.lr for c in product(TrainConfig(), backbone=["VBPR", "MMGCN"])] == [DEFAULT_LR, OWN]
    assert [c.lr for c in product(TrainConfig(), backbone=["VBPR", "MMGCN"], lr=[1e-4])] == [1e-4, 1e-4]
    # a search's base: the default TrainConfig (VBPR's rate) must not leak into another backbone
    assert search_config("MMGCN", "none", epochs_budget=3).lr == OWN
    assert search_config("MMGCN", "none", epochs_budget=3, base=TrainConfig(lr=5e-3)).lr == 5e-3


def test_the_round_trip_through_a_stored_dict_keeps_the_rate(mmgcn_own_lr):
    stored = TrainConfig(backbone="MMGCN").to_dict()
    assert stored["lr"] == OWN
    assert TrainConfig.from_dict(stored) == TrainConfig(backbone="MMGCN")


def test_what_ships_mmgcn_alone_has_its_own_rate():
    """MMGCN's 1e-4 was chosen on validation (README); every other built-in runs the package's rate."""
    from ckdlab.backbones import available
    from ckdlab.backbones.specs import is_builtin, lookup

    built_in = [name for name in available() if is_builtin(lookup(name))]  # not the plug-ins other tests add
    assert {"VBPR", "MMGCN", "Pop", "LightGCN"} <= set(built_in)
    own = {name: TrainConfig(backbone=name).lr for name in built_in if TrainConfig(backbone=name).lr != DEFAULT_LR}
    assert own == {"MMGCN": 1e-4}


def test_a_given_rate_equal_to_another_backbones_default_is_kept(mmgcn_own_lr):
    """`--set lr=0.001` is the user's choice even though it is VBPR's default: MMGCN must not drop it."""
    assert TrainConfig().with_settings(["backbone=MMGCN", "lr=0.001"]).lr == DEFAULT_LR
    assert TrainConfig(lr=DEFAULT_LR).replace(backbone="MMGCN").lr == DEFAULT_LR
    fixed = TrainConfig().with_settings(["lr=0.001"])  # what `ckdlab tune --set lr=0.001` searches from
    assert search_config("MMGCN", "none", epochs_budget=3, base=fixed).lr == DEFAULT_LR
    assert [c.lr for c in product(fixed, backbone=["VBPR", "MMGCN"])] == [DEFAULT_LR, DEFAULT_LR]
