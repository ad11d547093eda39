"""grid on a real Dask cluster (two local worker processes), one of which is killed mid-grid."""
from __future__ import annotations

import os
import signal
import threading
import time

import pandas as pd
import pytest

distributed = pytest.importorskip(
    "distributed", reason="dask[distributed] is not installed (pip install -e '.[cluster]'; the test extra has it)")

from conftest import make_tiny_dataset, write_mmrec  # noqa: E402
from test_grid_executors import metrics  # noqa: E402

from ckdlab import experiments as ex  # noqa: E402
from ckdlab.config import TrainConfig  # noqa: E402

N_RUNS = 8


def configs() -> list[TrainConfig]:
    """Eight runs of ~1 s each on one thread: long enough for a kill to land mid-run."""
    return [TrainConfig(backbone="VBPR", max_epochs=8, patience=100, batch_size=64, device="cpu", progress=False,
                        seed=s) for s in range(N_RUNS)]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_grid_survives_a_killed_worker_and_matches_in_process_runs(tmp_path):
    folder = write_mmrec(make_tiny_dataset(n_users=300, n_items=200, per_user=12), tmp_path / "data" / "tiny")
    reference = ex.grid(configs(), str(folder), tmp_path / "sequential", progress=False, executor="inline")
    results_dir = tmp_path / "dask" / "results"

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        pids = client.run(os.getpid)  # worker address -> pid of the worker process (not its nanny)
        outcome = {}

        def run_grid():
            try:
                outcome["frame"] = ex.grid(configs(), str(folder), tmp_path / "dask", progress=False,
                                           executor=client.get_executor())
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test's thread
                outcome["error"] = exc

        thread = threading.Thread(target=run_grid, daemon=True)
        thread.start()
        # once one run has finished the workers are warm and each is training its next run
        wait_for(lambda: results_dir.is_dir() and any(results_dir.glob("*.json")), 60, "a first result")
        busy = wait_for(lambda: [w for w, keys in client.processing().items() if keys and w in pids], 10,
                        "a worker with a run in progress")
        os.kill(pids[busy[0]], signal.SIGKILL)
        thread.join(timeout=120)
        assert not thread.is_alive(), "grid did not finish after a worker was killed"
        if "error" in outcome:
            raise outcome["error"]
        assert any(pid not in pids.values() for pid in client.run(os.getpid).values())  # the nanny restarted it

    frame = outcome["frame"]
    assert len(frame) == N_RUNS and frame["status"].tolist() == ["ok"] * N_RUNS
    assert frame["seed"].tolist() == list(range(N_RUNS))
    pd.testing.assert_frame_equal(metrics(frame), metrics(reference))
    assert len([p for p in results_dir.glob("*.json")]) == N_RUNS
