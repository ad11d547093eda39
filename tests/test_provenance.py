"""Results tied to the code: provenance recorded, other numbers-code never reused or resumed, cache list/prune."""
import os
import signal

import pytest
import torch

import ckdlab.provenance as provenance
import ckdlab.train as train_module
from ckdlab.cache_entries import list_entries, prune
from ckdlab.checkpoint import checkpoint_path
from ckdlab.cli import main as cli_main
from ckdlab.config import TrainConfig
from ckdlab.experiments import result_key, result_path, run
from ckdlab.faults import TrainingInterrupted
from ckdlab.train import fit

from conftest import make_tiny_dataset


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_dataset()


def config(**kw) -> TrainConfig:
    base = dict(backbone="VBPR", max_epochs=2, batch_size=32, lr=5e-3, progress=False, device="cpu",
                checkpoint_every=0, eval_by_modality=False)
    base.update(kw)
    return TrainConfig(**base)


def test_result_records_its_provenance(tiny, tmp_path):
    result = run(config(), tiny, cache_dir=tmp_path)
    p = result.provenance
    assert p["numbers_version"] == provenance.NUMBERS_VERSION
    assert p["torch"] == torch.__version__.split("+")[0]
    assert p["device"] == "cpu" and p["threads"] == torch.get_num_threads()
    assert p["cpu_capability"] and p["machine"] and p["python"]
    assert "git_commit" in p  # None outside a checkout, else a sha
    # the cached copy keeps it
    again = run(config(), tiny, cache_dir=tmp_path)
    assert again.extras["cached"] and again.provenance == p
    assert "numbers v" in provenance.describe(p) and "thread" in provenance.describe(p)


def test_result_of_other_numbers_code_is_not_reused(tiny, tmp_path, monkeypatch):
    first = run(config(), tiny, cache_dir=tmp_path)
    old_path = result_path(config(), tiny, tmp_path)
    monkeypatch.setattr(provenance, "NUMBERS_VERSION", provenance.NUMBERS_VERSION + 1)
    assert result_path(config(), tiny, tmp_path) != old_path
    second = run(config(), tiny, cache_dir=tmp_path)
    assert not second.extras.get("cached"), "a result made by other numbers-code was reused"
    assert second.provenance["numbers_version"] == first.provenance["numbers_version"] + 1
    # the old entry is kept until asked, listed as stale, and pruned on request
    statuses = {e.path.name: e.status for e in list_entries(tmp_path)}
    assert statuses[old_path.name].startswith("stale: numbers v")
    assert sum(s == "current" for s in statuses.values()) == 1
    assert [e.path for e in prune(tmp_path, dry_run=True)] == [old_path] and old_path.exists()
    assert [e.path for e in prune(tmp_path)] == [old_path] and not old_path.exists()
    assert run(config(), tiny, cache_dir=tmp_path).extras["cached"]  # the current one survives


def test_thread_count_and_torch_version_are_in_the_key(tiny, monkeypatch):
    key = result_key(config(), tiny)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert result_key(config(), tiny) != key
    finally:
        torch.set_num_threads(threads)
    assert result_key(config(), tiny) == key
    monkeypatch.setattr(torch, "__version__", "9.9.9+cpu")
    assert result_key(config(), tiny) != key


def _interrupted_run(tiny, cfg, cache_dir, monkeypatch):
    """Stop ``cfg`` with SIGINT at epoch 2, step 1; returns the checkpoint it leaves behind."""
    original = train_module._Trainer._after_step

    def hook(self, progress):
        if (self.state.epoch, progress.steps) == (2, 1):
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, progress)

    with monkeypatch.context() as patch:
        patch.setattr(train_module._Trainer, "_after_step", hook)
        with pytest.raises(TrainingInterrupted):
            fit(tiny, cfg, cache_dir=cache_dir)
    path = checkpoint_path(cfg, tiny, cache_dir)
    assert path.exists()
    return path


def test_checkpoint_of_other_numbers_code_is_not_resumed(tiny, tmp_path, monkeypatch, capsys):
    cfg = config(max_epochs=3)
    old = _interrupted_run(tiny, cfg, tmp_path, monkeypatch)
    assert [e.status for e in list_entries(tmp_path) if e.kind == "checkpoints"] == ["current"]

    monkeypatch.setattr(provenance, "NUMBERS_VERSION", provenance.NUMBERS_VERSION + 1)
    assert checkpoint_path(cfg, tiny, tmp_path) != old
    fit(tiny, cfg, cache_dir=tmp_path)
    assert "resuming" not in capsys.readouterr().err, "a checkpoint of other numbers-code was resumed"
    assert old.exists()  # not read, not deleted: stale until pruned
    assert [e.status.split(":")[0] for e in list_entries(tmp_path) if e.kind == "checkpoints"] == ["stale"]


def test_checkpoint_copied_under_a_new_key_is_not_resumed(tiny, tmp_path, monkeypatch, capsys):
    """A checkpoint renamed by hand to the new key still carries the old identity inside: set aside."""
    cfg = config(max_epochs=3)
    old = _interrupted_run(tiny, cfg, tmp_path, monkeypatch)
    monkeypatch.setattr(provenance, "NUMBERS_VERSION", provenance.NUMBERS_VERSION + 1)
    new = checkpoint_path(cfg, tiny, tmp_path)
    old.rename(new)
    with pytest.warns(Warning, match="other numbers-code"):
        fit(tiny, cfg, cache_dir=tmp_path)
    assert "resuming" not in capsys.readouterr().err


def test_cache_cli_lists_and_prunes(tiny, tmp_path, monkeypatch, capsys):
    run(config(), tiny, cache_dir=tmp_path)
    monkeypatch.setattr(provenance, "NUMBERS_VERSION", provenance.NUMBERS_VERSION + 1)
    run(config(), tiny, cache_dir=tmp_path)
    (tmp_path / "results" / "broken.json.corrupt").write_text("{")
    assert cli_main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 entries: 1 current, 2 stale or corrupt" in out and "VBPR/none seed 0" in out
    assert cli_main(["cache", "prune", "--cache-dir", str(tmp_path), "--dry-run"]) == 0
    assert "would remove 2" in capsys.readouterr().out
    assert len(list_entries(tmp_path)) == 3
    assert cli_main(["cache", "prune", "--cache-dir", str(tmp_path)]) == 0
    assert [e.status for e in list_entries(tmp_path)] == ["current"]
