"""grid on executors: only missing runs are submitted, rows keep their order, numbers match in-process runs."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Executor, Future

import numpy as np
import pandas as pd
import pytest
import torch

import ckdlab.train
from ckdlab import executors
from ckdlab import experiments as ex
from ckdlab.config import TrainConfig
from ckdlab.data import load
from ckdlab.faults import TrainingDiverged

from conftest import write_mmrec

DIVERGING_LR = 1e30


def cfg(**kw) -> TrainConfig:
    base = dict(backbone="VBPR", max_epochs=2, device="cpu", progress=False, batch_size=64)
    return TrainConfig(**{**base, **kw})




def metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns that must not depend on where a run trained."""
    cols = [c for c in frame.columns if c.startswith(("valid_", "test_", "teacher_"))]
    return frame[["backbone", "method", "variant", "seed", "key", "status", "best_epoch", "epochs_run"] + cols]


def curves(result) -> list[dict]:
    """A run's history without its wall-clock timings."""
    return [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]


class ReverseExecutor(Executor):
    """Runs the submitted calls in a background thread, last submitted first, once ``expect`` have arrived.

    Lets a test see every submission, force completion in reverse order and
    check that grid leaves the executor running.
    """

    def __init__(self, expect: int, pause: float = 0.0):
        self.expect, self.pause = expect, pause
        self.submitted, self.pending, self.closed = [], [], False

    def submit(self, fn, *args, **kwargs):
        future = Future()
        self.submitted.append(args)
        self.pending.append((future, fn, args, kwargs))
        if len(self.pending) == self.expect:
            threading.Thread(target=self._drain, daemon=True).start()
        return future

    def _drain(self):
        for future, fn, args, kwargs in reversed(self.pending):
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    future.set_exception(exc)
            time.sleep(self.pause)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self.closed = True


def test_local_process_pool_matches_sequential_runs_in_order(tiny_dataset, tmp_path):
    configs = [("a", cfg()), ("b", cfg(seed=1)), ("c", cfg(seed=2)), ("d", cfg(lr=0.01))]
    sequential = ex.grid(configs, tiny_dataset, tmp_path / "seq", progress=False, executor="inline")
    ex.run(configs[2][1], tiny_dataset, cache_dir=tmp_path / "par")  # one run already cached
    parallel, results = ex.grid(configs, tiny_dataset, tmp_path / "par", progress=False, workers=2,
                                return_results=True)
    assert parallel["variant"].tolist() == ["a", "b", "c", "d"]
    assert parallel["cached"].tolist() == [False, False, True, False]
    assert parallel["status"].tolist() == ["ok"] * 4
    pd.testing.assert_frame_equal(metrics(parallel), metrics(sequential))
    assert [curves(r) for r in results] == [curves(r) for r in ex.load_results(sequential, tmp_path / "seq")]
    assert ex.grid(configs, tiny_dataset, tmp_path / "par", progress=False)["cached"].all()


def test_any_executor_gets_only_missing_runs_and_rows_keep_input_order(tiny_dataset, tmp_path):
    configs = [cfg(seed=s) for s in range(4)] + [cfg(seed=1)]  # seed 1 listed twice
    ex.run(configs[0], tiny_dataset, cache_dir=tmp_path / "par")
    pool = ReverseExecutor(expect=3)
    frame = ex.grid(configs, tiny_dataset, tmp_path / "par", progress=False, executor=pool)
    submitted = [args[0]["seed"] for args in pool.submitted]
    assert submitted == [1, 2, 3]  # cached seed 0 and the repeat of seed 1 are not submitted
    assert all(args[3] == torch.get_num_threads() for args in pool.submitted)  # the parent's thread count
    assert frame["seed"].tolist() == [0, 1, 2, 3, 1]  # input order, though they completed 3, 2, 1
    assert frame["cached"].tolist() == [True, False, False, False, True]
    assert not pool.closed  # the caller's executor stays up
    sequential = ex.grid(configs, tiny_dataset, tmp_path / "seq", progress=False, executor="inline")
    pd.testing.assert_frame_equal(metrics(frame), metrics(sequential))


def test_failed_run_in_a_worker_is_a_failed_row(tiny_dataset, tmp_path, monkeypatch):
    real_fit = ckdlab.train.fit

    def fit(dataset, config=None, **kw):
        if config.lr >= 1e29:
            raise TrainingDiverged("parameter item_emb is inf", epoch=2, step=0, terms={"bpr": 1e38})
        return real_fit(dataset, config, **kw)

    monkeypatch.setattr(ckdlab.train, "fit", fit)
    pool = ReverseExecutor(expect=3)
    with pytest.warns(RuntimeWarning, match="1 of 3 runs failed"):
        frame = ex.grid([cfg(), cfg(lr=DIVERGING_LR), cfg(seed=1)], tiny_dataset, tmp_path, progress=False,
                        executor=pool)
    assert frame["status"].tolist() == ["ok", "failed", "ok"]
    assert frame.loc[1, "error"] == "parameter item_emb is inf" and np.isnan(frame.loc[1, "test_recall@20"])
    assert ex.read_failure(ex.failure_path(cfg(lr=DIVERGING_LR), tiny_dataset, tmp_path))["epoch"] == 2


def test_other_errors_propagate_and_cancel_pending_runs(tiny_dataset, tmp_path, monkeypatch):
    real_fit = ckdlab.train.fit
    trained = []

    def fit(dataset, config=None, **kw):
        if config.lr == 0.123:
            raise RuntimeError("out of memory (simulated)")
        trained.append(config.seed)
        return real_fit(dataset, config, **kw)

    monkeypatch.setattr(ckdlab.train, "fit", fit)
    pool = ReverseExecutor(expect=4, pause=0.5)
    with pytest.raises(RuntimeError, match="simulated"):
        ex.grid([cfg(seed=0), cfg(seed=1), cfg(seed=2), cfg(lr=0.123)], tiny_dataset, tmp_path,
                progress=False, executor=pool)
    time.sleep(1.0)  # the drain thread would have started a second run by now
    assert trained == []  # the failing run came first (reverse order); the others were cancelled
    assert sum(f.cancelled() for f, *_ in pool.pending) == 3


def test_real_divergence_in_a_worker_process(tiny_dataset, tmp_path):
    try:
        ckdlab.train.fit(tiny_dataset, cfg(lr=DIVERGING_LR, max_epochs=2))
    except TrainingDiverged:
        pass
    else:
        pytest.skip("train.fit has no divergence guard yet (lr=1e30 raised no TrainingDiverged)")
    with pytest.warns(RuntimeWarning, match="1 of 3 runs failed"):
        frame = ex.grid([cfg(), cfg(lr=DIVERGING_LR), cfg(seed=1)], tiny_dataset, tmp_path, progress=False,
                        workers=2)
    assert frame["status"].tolist() == ["ok", "failed", "ok"] and frame.loc[1, "error"]
    assert frame["test_recall@20"].isna().tolist() == [False, True, False]


def test_invalid_executor_arguments(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="executor"):
        ex.grid([cfg()], tiny_dataset, tmp_path, progress=False, executor="threads")
    with pytest.raises(ValueError, match="workers"):
        ex.grid([cfg()], tiny_dataset, tmp_path, progress=False, workers=0)


def test_workers_reload_the_dataset_from_its_source_when_it_reproduces(tiny_dataset, tmp_path):
    folder = write_mmrec(tiny_dataset, tmp_path / "tiny")
    from_folder = load(str(folder))
    spec = executors.dataset_spec(from_folder, from_folder)
    assert isinstance(spec, executors.DataSpec) and spec.source == str(folder.resolve())
    assert executors.worker_dataset(spec).fingerprint == from_folder.fingerprint
    assert executors.dataset_spec(str(folder), from_folder).source == str(folder.resolve())
    assert executors.dataset_spec("synthetic", tiny_dataset) == executors.DataSpec("synthetic", (),
                                                                                   tiny_dataset.fingerprint)
    # no reloadable source, or changed after loading: the Dataset itself travels
    assert executors.dataset_spec(tiny_dataset, tiny_dataset) is tiny_dataset
    changed = load(str(folder))
    changed.features["image"] = changed.features["image"] * 2
    assert executors.dataset_spec(changed, changed) is changed


def test_default_pool_size_respects_threads():
    cpus = executors.available_cpus()
    assert executors.default_workers(100, 1) == cpus
    assert executors.default_workers(1, 1) == 1
    assert executors.default_workers(100, cpus * 4) == 1
