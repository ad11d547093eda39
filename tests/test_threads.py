"""The thread policy (ckdlab.threads): precedence, grids and searches at one thread per run, CLI flags."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ckdlab import executors, threads


@pytest.fixture(autouse=True)
def keep_torch_threads(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_requested_beats_environment_beats_available(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    assert threads.choose_threads() == 8
    assert threads.choose_threads(concurrent_runs=8) == 1
    assert threads.choose_threads(concurrent_runs=3) == 2
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.choose_threads() == 3 and threads.choose_threads(concurrent_runs=8) == 3
    assert threads.choose_threads(5) == 5


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_environment_value_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv(threads.ENV, value)
    with pytest.raises(ValueError, match=f"CKDLAB_THREADS={value!r}"):
        threads.choose_threads()
    with pytest.raises(ValueError, match="threads must be >= 1"):
        threads.choose_threads(0)


def test_grid_workers_use_the_parents_count_unless_told(monkeypatch):
    torch.set_num_threads(1)
    assert executors.grid_threads() == 1  # what a notebook's setup(1) gives: one run per CPU
    assert executors.default_workers(100, executors.grid_threads()) == threads.available_cpus()
    torch.set_num_threads(2)
    assert executors.grid_threads() == 2  # a worker computes what the same run computes in the parent
    monkeypatch.setenv(threads.ENV, "1")
    assert executors.grid_threads() == 1


def test_available_cpus_respects_a_container_quota(monkeypatch):
    monkeypatch.setattr(threads, "_cgroup_quota_cpus", lambda: 1.5)
    assert threads.available_cpus() == 1
    monkeypatch.setattr(threads, "_cgroup_quota_cpus", lambda: 0.2)
    assert threads.available_cpus() == 1
    monkeypatch.setattr(threads, "_cgroup_quota_cpus", lambda: None)
    assert threads.available_cpus() == len(os.sched_getaffinity(0))


def test_setup_makes_grids_use_the_notebook_count(monkeypatch):
    from ckdlab import experiments

    experiments.setup(1, plot_style=False)
    assert os.environ[threads.ENV] == "1" and torch.get_num_threads() == 1
    assert executors.grid_threads() == 1


def test_cli_train_and_tune_set_the_threads_of_the_run(monkeypatch, tmp_path):
    from ckdlab import cli

    seen = []

    class Stop(Exception):
        pass

    def fake_run(cfg, data, **kw):
        seen.append(torch.get_num_threads())
        raise Stop

    monkeypatch.setattr("ckdlab.experiments.run", fake_run)
    for argv in (["train", "--threads", "1"], ["train"]):
        with pytest.raises(Stop):
            cli.main(argv + ["--data", "synthetic", "--no-tuned", "--quiet"])
    assert seen == [1, threads.available_cpus()]
    monkeypatch.setenv(threads.ENV, "1")
    with pytest.raises(Stop):
        cli.main(["train", "--data", "synthetic", "--quiet"])
    assert seen[-1] == 1


def test_the_cli_makes_idle_openmp_threads_yield():
    code = ("import os, sys; from ckdlab.cli import main; main(['tuned', 'list']); "
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")

    def policy(**user):
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        out = subprocess.run([sys.executable, "-c", code], env={**env, **user}, capture_output=True, text=True,
                             check=True).stdout
        return out.splitlines()[-1]

    assert policy() == f"PASSIVE {threads.SPIN_COUNT} False"  # a brief spin, then sleep; before torch loads
    # the user's choice stands: a spin count would override their ACTIVE policy in GNU OpenMP
    assert policy(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE None False"
    assert policy(GOMP_SPINCOUNT="50") == "None 50 False"
