"""Checkpoints and resume: an interrupted run, resumed, ends with the numbers of an uninterrupted one.

In-process tests interrupt a run by sending SIGINT to this process from the
trainer's per-step hook, at a chosen (epoch, step); subprocess tests run the
``ckdlab train`` command on a tiny dataset folder and send it SIGTERM or SIGKILL.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ckdlab.train as train_module
from ckdlab.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from ckdlab.config import TrainConfig
from ckdlab.faults import CacheWarning, TrainingInterrupted
from ckdlab.train import fit

from conftest import make_tiny_dataset, write_mmrec

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 6  # tiny dataset: 30 users x 6 training items, batch 32

METHOD_PARAMS = {"none": {}, "ckd": {"teacher": {"max_epochs": 2}, "trace_every": 2},
                 "gb": {"super_epoch": 2}, "ogm": {}}


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_dataset()


def config(method="none", backbone="VBPR", **kw) -> TrainConfig:
    base = dict(backbone=backbone, method=method, method_params=METHOD_PARAMS[method], max_epochs=5,
                batch_size=32, lr=5e-3, patience=100, progress=False, device="cpu", checkpoint_every=0)
    base.update(kw)
    return TrainConfig(**base)


def numbers(result) -> dict:
    """Everything a result holds except timings (and whether CKD's teachers came from the cache)."""
    d = result.to_dict()
    d.pop("timing")
    d.pop("teachers", None)
    d["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in d["history"]]
    return d


def interrupt_at(monkeypatch, epoch: int, step: int, *, teacher: bool = False, before=None) -> None:
    """SIGINT to this process once the student (or a teacher) has done ``step`` steps of ``epoch``."""
    original = train_module._Trainer._after_step

    def hook(self, progress):
        if bool(self.config.ablate) == teacher and (self.state.epoch, progress.steps) == (epoch, step):
            if before is not None:
                before(self)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, progress)

    monkeypatch.setattr(train_module._Trainer, "_after_step", hook)


@pytest.mark.parametrize("backbone,method,backbone_params", [
    ("VBPR", "none", {}), ("VBPR", "ckd", {}), ("VBPR", "gb", {}), ("VBPR", "ogm", {}), ("MGCN", "none", {}),
    ("GRCN", "none", {"edge_dropout": 0.3}),  # draws from torch's global RNG every step
], ids=["VBPR-none", "VBPR-ckd", "VBPR-gb", "VBPR-ogm", "MGCN-none", "GRCN-dropout-none"])
def test_interrupted_mid_epoch_resumes_exactly(tiny, tmp_path, monkeypatch, capsys, backbone, method,
                                               backbone_params):
    cfg = config(method, backbone, backbone_params=backbone_params)
    reference = fit(tiny, cfg, cache_dir=tmp_path / "ref")

    interrupt_at(monkeypatch, epoch=3, step=2)
    with pytest.raises(TrainingInterrupted) as info:
        fit(tiny, cfg, cache_dir=tmp_path / "run")
    path = checkpoint_path(cfg, tiny, tmp_path / "run")
    assert info.value.signum == signal.SIGINT and info.value.checkpoint == str(path) and path.exists()
    assert "interrupted at epoch 3, step 2" in str(info.value)
    monkeypatch.undo()

    resumed = fit(tiny, cfg, cache_dir=tmp_path / "run")
    assert f"resuming from epoch 3 step 2 ({path})" in capsys.readouterr().err
    assert numbers(resumed) == numbers(reference)
    assert not path.exists()  # a completed run deletes its checkpoint


def test_interrupt_at_epoch_boundary_and_during_final_evaluation(tiny, tmp_path, monkeypatch):
    cfg = config("ogm", max_epochs=3)
    reference = fit(tiny, cfg, cache_dir=tmp_path / "ref")
    # after the last step of epoch 2, before its epoch-end bookkeeping
    interrupt_at(monkeypatch, epoch=2, step=STEPS_PER_EPOCH)
    with pytest.raises(TrainingInterrupted):
        fit(tiny, cfg, cache_dir=tmp_path / "run")
    monkeypatch.undo()
    # during the final evaluation: resuming redoes only the evaluation
    original = train_module._Trainer._evaluate

    def evaluate_then_signal(self, split):
        out = original(self, split)
        if split == "test":
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(train_module._Trainer, "_evaluate", evaluate_then_signal)
    with pytest.raises(TrainingInterrupted) as info:
        fit(tiny, cfg, cache_dir=tmp_path / "run")
    assert info.value.signum == signal.SIGTERM
    assert load_checkpoint(info.value.checkpoint)["loop"]["finished"]
    monkeypatch.undo()
    assert numbers(fit(tiny, cfg, cache_dir=tmp_path / "run")) == numbers(reference)


def test_interrupted_teacher_resumes_then_student(tiny, tmp_path, monkeypatch, capsys):
    cfg = config("ckd", max_epochs=3)
    reference = fit(tiny, cfg, cache_dir=tmp_path / "ref")
    interrupt_at(monkeypatch, epoch=2, step=1, teacher=True)
    with pytest.raises(TrainingInterrupted) as info:
        fit(tiny, cfg, cache_dir=tmp_path / "run")
    assert "/checkpoints/vbpr-" in info.value.checkpoint
    assert info.value.checkpoint != str(checkpoint_path(cfg, tiny, tmp_path / "run"))  # the teacher's own
    monkeypatch.undo()
    resumed = fit(tiny, cfg, cache_dir=tmp_path / "run")
    assert "without" in capsys.readouterr().err  # "VBPR/none without text: resuming from ..."
    assert numbers(resumed) == numbers(reference)
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt"))


def test_signal_handlers_only_during_fit_and_only_in_main_thread(tiny, tmp_path, monkeypatch):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    seen = []
    original = train_module._Trainer._after_step

    def hook(self, progress):
        seen.append(signal.getsignal(signal.SIGTERM))
        return original(self, progress)

    monkeypatch.setattr(train_module._Trainer, "_after_step", hook)
    cfg = config(max_epochs=1)
    fit(tiny, cfg, cache_dir=tmp_path)
    assert seen[0] is not before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before

    seen.clear()
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("result", fit(tiny, cfg, cache_dir=tmp_path / "t")))
    worker.start()
    worker.join()
    assert "result" in box and seen[0] is before[signal.SIGTERM]  # worker threads install nothing


def test_resume_false_starts_afresh(tiny, tmp_path, monkeypatch, capsys):
    cfg = config(max_epochs=3)
    reference = fit(tiny, cfg, cache_dir=tmp_path / "ref")
    interrupt_at(monkeypatch, epoch=2, step=3)
    with pytest.raises(TrainingInterrupted):
        fit(tiny, cfg, cache_dir=tmp_path / "run")
    monkeypatch.undo()
    capsys.readouterr()
    assert numbers(fit(tiny, cfg, cache_dir=tmp_path / "run", resume=False)) == numbers(reference)
    assert "resuming" not in capsys.readouterr().err
    assert not checkpoint_path(cfg, tiny, tmp_path / "run").exists()


def test_periodic_checkpoints_and_key_ignores_checkpoint_every(tiny, tmp_path, monkeypatch):
    cfg = config(max_epochs=4, checkpoint_every=2)
    assert checkpoint_path(cfg, tiny, tmp_path) == checkpoint_path(cfg.replace(checkpoint_every=0, device="auto"),
                                                                   tiny, tmp_path)
    assert "checkpoint_every" not in cfg.identity()
    written = []
    original = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint",
                        lambda path, state, **kw: (written.append(state["loop"]["epoch"]),
                                                   original(path, state, **kw)))
    fit(tiny, cfg, cache_dir=tmp_path)
    assert written == [3]  # after epoch 2; none after the last epoch (the run is about to finish)


def test_unwritable_checkpoint_folder_warns_and_the_run_goes_on(tiny, tmp_path, monkeypatch):
    cfg = config(max_epochs=3, checkpoint_every=1)
    (tmp_path / "checkpoints").write_text("a file where the folder should be")
    with pytest.warns(CacheWarning, match="cannot write checkpoint"):
        result = fit(tiny, cfg, cache_dir=tmp_path)
    assert numbers(result) == numbers(fit(tiny, cfg, cache_dir=tmp_path / "ok"))
    interrupt_at(monkeypatch, epoch=2, step=1)
    with pytest.warns(CacheWarning), pytest.raises(TrainingInterrupted, match="could not be saved") as info:
        fit(tiny, cfg, cache_dir=tmp_path)
    assert info.value.checkpoint is None


def test_truncated_checkpoint_is_set_aside_and_run_starts_afresh(tiny, tmp_path, monkeypatch):
    cfg = config("gb", max_epochs=3)
    reference = fit(tiny, cfg, cache_dir=tmp_path / "ref")
    interrupt_at(monkeypatch, epoch=2, step=4)
    with pytest.raises(TrainingInterrupted):
        fit(tiny, cfg, cache_dir=tmp_path / "run")
    monkeypatch.undo()
    path = checkpoint_path(cfg, tiny, tmp_path / "run")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.warns(CacheWarning, match=re.escape(str(path))):
        resumed = fit(tiny, cfg, cache_dir=tmp_path / "run")
    assert numbers(resumed) == numbers(reference)
    assert path.with_name(path.name + ".corrupt").read_bytes() == data[: len(data) // 2]
    assert not path.exists()


def test_checkpoint_that_does_not_fit_the_run_is_set_aside(tiny, tmp_path):
    cfg = config(max_epochs=2)
    reference = fit(tiny, cfg, cache_dir=tmp_path / "ref")
    path = checkpoint_path(cfg, tiny, tmp_path / "run")
    save_checkpoint(path, {"format": 1, "model": {"no_such_weight": np.zeros(3)}})  # verifies, but stale
    with pytest.warns(CacheWarning, match="does not fit this run"):
        resumed = fit(tiny, cfg, cache_dir=tmp_path / "run")
    assert numbers(resumed) == numbers(reference)
    assert path.with_name(path.name + ".corrupt").exists()


# -- the command line, in a subprocess ----------------------------------------------------------

# Runs ``ckdlab.cli.main`` with one torch thread (as the tests do) and, when the first
# argument is > 0, that many seconds of sleep per batch, so a signal lands mid-run.
DRIVER = """
import sys, time
import torch
torch.set_num_threads(1)
delay = float(sys.argv[1])
if delay:
    from ckdlab.data import samplers
    epoch = samplers.BPRSampler.epoch
    def slow_epoch(self, *args, **kwargs):
        for batch in epoch(self, *args, **kwargs):
            time.sleep(delay)
            yield batch
    samplers.BPRSampler.epoch = slow_epoch
from ckdlab.cli import main
sys.exit(main(sys.argv[2:]))
"""




@pytest.fixture(scope="module")
def cli_case(tmp_path_factory):
    """A dataset folder, the CLI arguments of one run, and its uninterrupted result (run in-process)."""
    from ckdlab.cli import main

    base = tmp_path_factory.mktemp("cli")
    data = write_mmrec(make_tiny_dataset(), base / "tiny")
    args = ["train", "--data", str(data), "--backbone", "VBPR", "--epochs", "25", "--device", "cpu", "--quiet",
            "--set", "batch_size=32", "--set", "lr=0.005", "--set", "patience=100", "--set", "checkpoint_every=1"]
    assert main(args + ["--cache-dir", str(base / "ref"), "--out", str(base / "ref.json")]) == 0
    return args, comparable(base / "ref.json")


def comparable(path: Path) -> dict:
    d = json.loads(path.read_text())
    d.pop("timing")
    d["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in d["history"]]
    return d


def start_cli(args, tmp_path: Path, delay: float) -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(driver), str(delay), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, folder: Path, timeout: float = 60.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(folder.glob("checkpoints/*.pt"))
        if found:
            return found[0]
        assert proc.poll() is None, f"run ended before checkpointing: {proc.communicate()}"
        time.sleep(0.02)
    pytest.fail("no checkpoint appeared")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_cli_killed_run_resumes_to_the_same_result(cli_case, tmp_path, how):
    args, expected = cli_case
    cache = tmp_path / "cache"
    run_args = args + ["--cache-dir", str(cache), "--out", str(tmp_path / "out.json")]
    proc = start_cli(run_args, tmp_path, delay=0.03)
    try:
        path = wait_for_checkpoint(proc, cache)
        time.sleep(0.1)  # land mid-epoch, after a periodic checkpoint
        proc.send_signal(getattr(signal, how))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if how == "SIGTERM":
        assert proc.returncode == 143, err
        assert re.search(r"interrupted at epoch \d+, step \d+; state saved to .*; run the same command again "
                         r"to resume", err), err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert path.exists() and not (tmp_path / "out.json").exists()

    proc = start_cli(run_args, tmp_path, delay=0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "resuming from epoch" in err and str(path) in err
    assert comparable(tmp_path / "out.json") == expected
    assert not path.exists()
