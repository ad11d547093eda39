"""The divergence guard: a NaN/Inf loss or parameter stops the run, names the step and keeps the last good checkpoint."""
import math
import os
import signal

import pytest

import ckdlab.train as train_module
from ckdlab.balance.ckd import CKD
from ckdlab.checkpoint import checkpoint_path, load_checkpoint
from ckdlab.cli import main
from ckdlab.config import TrainConfig
from ckdlab.faults import TrainingDiverged
from ckdlab.train import fit

from conftest import make_tiny_dataset

STEPS_PER_EPOCH = 6  # tiny dataset: 30 users x 6 training items, batch 32


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_dataset()


def config(method="none", **kw) -> TrainConfig:
    params = {"teacher": {"max_epochs": 2}} if method == "ckd" else {}
    base = dict(backbone="VBPR", method=method, method_params=params, max_epochs=5, batch_size=32, lr=5e-3,
                patience=100, progress=False, device="cpu", checkpoint_every=1)
    base.update(kw)
    return TrainConfig(**base)


def test_absurd_learning_rate_diverges_with_location_and_terms(tiny, tmp_path):
    # Adam with lr=1e20 overflows the weights on the first step: the second step's loss is NaN.
    with pytest.raises(TrainingDiverged) as info:
        fit(tiny, config(lr=1e20), cache_dir=tmp_path)
    exc = info.value
    assert (exc.epoch, exc.step) == (1, 1)
    assert math.isnan(exc.terms["loss"])
    assert "VBPR/none diverged at epoch 1, step 1: loss=nan; last good checkpoint: none" in str(exc)
    assert exc.checkpoint is None
    assert not list(tmp_path.glob("checkpoints/*"))


def test_nan_loss_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    calls = []
    original = CKD.batch_loss

    def poisoned(self, model, inputs, batch):
        loss, logs = original(self, model, inputs, batch)
        calls.append(1)
        if len(calls) == 2 * STEPS_PER_EPOCH + 3:  # epoch 3, step 2 (0-based)
            loss = loss * float("nan")
        return loss, logs

    monkeypatch.setattr(CKD, "batch_loss", poisoned)
    cfg = config("ckd")
    with pytest.raises(TrainingDiverged) as info:
        fit(tiny, cfg, cache_dir=tmp_path)
    exc = info.value
    assert (exc.epoch, exc.step) == (3, 2)
    assert math.isnan(exc.terms["loss"]) and math.isfinite(exc.terms["kd_loss"])
    assert "VBPR/ckd diverged at epoch 3, step 2: loss=nan (kd_loss=" in str(exc)
    path = checkpoint_path(cfg, tiny, tmp_path)
    assert exc.checkpoint == str(path) and f"last good checkpoint: {path}" in str(exc)
    saved = load_checkpoint(path)  # still there, verifies, and holds the state after epoch 2
    assert (saved["loop"]["epoch"], saved["loop"]["progress"]["steps"]) == (3, 0)
    assert all(t.isfinite().all() for t in saved["model"].values())

    monkeypatch.undo()  # with the cause gone, the same command resumes from it and completes
    assert fit(tiny, cfg, cache_dir=tmp_path).epochs_run == 5


def test_nan_parameter_is_caught_at_the_epoch_end(tiny, tmp_path, monkeypatch):
    original = train_module._Trainer._after_step

    def poison_last_step_of_epoch_2(self, progress):
        if (self.state.epoch, progress.steps) == (2, STEPS_PER_EPOCH):
            self.model.item_bias.data[0] = float("inf")  # not used by the loss any more this epoch
        return original(self, progress)

    monkeypatch.setattr(train_module._Trainer, "_after_step", poison_last_step_of_epoch_2)
    with pytest.raises(TrainingDiverged) as info:
        fit(tiny, config(), cache_dir=tmp_path)
    exc = info.value
    assert (exc.epoch, exc.step) == (2, STEPS_PER_EPOCH - 1)
    assert math.isfinite(exc.terms["loss"])
    assert "non-finite parameter(s) item_bias after loss=" in str(exc)


def test_interruption_never_checkpoints_a_diverged_state(tiny, tmp_path, monkeypatch):
    cfg = config()
    path = checkpoint_path(cfg, tiny, tmp_path)
    good = {}
    original = train_module._Trainer._after_step

    def poison_then_interrupt(self, progress):
        if (self.state.epoch, progress.steps) == (2, 3):
            good["bytes"] = path.read_bytes()  # written after epoch 1
            self.model.user_id.data[0, 0] = float("nan")
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, progress)

    monkeypatch.setattr(train_module._Trainer, "_after_step", poison_then_interrupt)
    with pytest.raises(TrainingDiverged) as info:
        fit(tiny, cfg, cache_dir=tmp_path)
    assert (info.value.epoch, info.value.step) == (2, 2)
    assert "non-finite parameter(s) user_id" in str(info.value)
    assert path.read_bytes() == good["bytes"]


def test_cli_exits_3_with_the_message(tmp_path, capsys):
    code = main(["train", "--data", "synthetic", "--epochs", "2", "--set", "lr=1e20", "--set", "batch_size=4096",
                 "--device", "cpu", "--cache-dir", str(tmp_path), "--quiet"])
    assert code == 3
    err = capsys.readouterr().err
    assert err.startswith("error: VBPR/none diverged at epoch 1, step 1: loss=nan"), err
    # no result (the experiment runner may record the failure itself)
    assert not [p for p in tmp_path.glob("results/*") if "fail" not in p.name]
