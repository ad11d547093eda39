"""Cache integrity: checksummed entries, bad entries moved aside and recomputed, locks, failure records."""
from __future__ import annotations

import json
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pandas as pd
import pytest
import torch

import ckdlab.train
from ckdlab import store
from ckdlab import experiments as ex
from ckdlab.balance import teachers as teachers_module
from ckdlab.config import TrainConfig
from ckdlab.faults import CacheWarning, TrainingDiverged
from ckdlab.result import Result
from ckdlab.train import training_runner

DIVERGING_LR = 1e30


def cfg(**kw) -> TrainConfig:
    base = dict(backbone="VBPR", max_epochs=2, device="cpu", progress=False, batch_size=64)
    return TrainConfig(**{**base, **kw})


def entries(folder, pattern="*"):
    return sorted(p.name for p in folder.glob(pattern)) if folder.exists() else []


# -- the store's envelopes ---------------------------------------------------------------------------

def test_json_entry_round_trip_and_every_kind_of_damage(tmp_path):
    path = tmp_path / "e.json"
    payload = {"b": [1, 2.5, None], "a": {"x": float("nan")}, "s": "é"}
    store.write_json(path, payload, schema="s", format=3)
    data = json.loads(path.read_text())  # still plain, readable JSON
    assert set(data) == {"schema", "format", "sha256", "payload"} and data["format"] == 3
    got = store.read_json(path, schema="s", format=3)
    assert got["b"] == [1, 2.5, None] and got["s"] == "é"

    damaged = {
        "truncated": path.read_bytes()[:-20],
        "tampered": path.read_text().replace("2.5", "2.6").encode(),
        "no envelope": json.dumps(payload).encode(),
        "empty": b"",
    }
    for what, raw in damaged.items():
        path.write_bytes(raw)
        with pytest.raises(store.CorruptEntry):
            store.read_json(path, schema="s", format=3)
    store.write_json(path, payload, schema="s", format=3)
    with pytest.raises(store.CorruptEntry, match="schema"):
        store.read_json(path, schema="other", format=3)
    with pytest.raises(store.CorruptEntry, match="stale"):
        store.read_json(path, schema="s", format=4)
    with pytest.raises(FileNotFoundError):
        store.read_json(tmp_path / "absent.json", schema="s")


def test_blob_entry_round_trip_and_damage(tmp_path):
    path = tmp_path / "b.pt"
    store.write_blob(path, b"\x00\x01binary\npayload", schema="t", format=1)
    assert store.read_blob(path, schema="t", format=1) == b"\x00\x01binary\npayload"
    raw = path.read_bytes()
    for bad in (raw[:-3], raw[:10], raw.replace(b"binary", b"BINARY"), b"\x80\x02plain pickle"):
        path.write_bytes(bad)
        with pytest.raises(store.CorruptEntry):
            store.read_blob(path, schema="t", format=1)


def test_quarantine_warns_with_the_path_and_moves_the_entry_aside(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{")
    with pytest.warns(CacheWarning, match=str(path)):
        assert store.load_entry(store.read_json, path, schema="s") is None
    assert entries(tmp_path) == ["x.json.corrupt"]
    path.write_text("{")
    assert store.load_entry(store.read_json, path, quarantine_bad=False, schema="s") is None
    assert path.exists()  # without quarantine a bad entry is only treated as missing


def test_lock_excludes_other_holders_and_leaves_no_file(tmp_path):
    entry = tmp_path / "sub" / "e.json"
    order = []

    def contender():
        with store.locked(entry):
            order.append("contender")

    with store.locked(entry):
        assert store.lock_path(entry).exists()
        thread = threading.Thread(target=contender)
        thread.start()
        time.sleep(0.3)
        order.append("holder")  # the contender is still waiting
    thread.join(5)
    assert order == ["holder", "contender"]
    assert entries(entry.parent) == []


# -- results ---------------------------------------------------------------------------------------

def test_truncated_result_is_reported_moved_aside_and_recomputed(tiny_dataset, tmp_path):
    first = ex.run(cfg(), tiny_dataset, cache_dir=tmp_path)
    path = ex.result_path(cfg(), tiny_dataset, tmp_path)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.warns(CacheWarning, match=f"{path}.*unparsable"):
        again = ex.run(cfg(), tiny_dataset, cache_dir=tmp_path)
    assert not again.extras.get("cached", False)  # recomputed, not loaded
    assert again.test == first.test
    assert (path.parent / f"{path.name}.corrupt").is_file()
    assert ex.run(cfg(), tiny_dataset, cache_dir=tmp_path).extras["cached"]  # the new entry is valid


def test_tampered_or_unenveloped_result_is_not_trusted(tiny_dataset, tmp_path):
    first = ex.run(cfg(), tiny_dataset, cache_dir=tmp_path)
    path = ex.result_path(cfg(), tiny_dataset, tmp_path)
    data = json.loads(path.read_text())
    data["payload"]["test"]["recall@20"] = 0.999
    path.write_text(json.dumps(data))
    with pytest.warns(CacheWarning, match="sha256 mismatch"):
        assert ex.run(cfg(), tiny_dataset, cache_dir=tmp_path).test == first.test
    first.to_json(path)  # the plain export format (as format 1 entries were): stale, recomputed
    with pytest.warns(CacheWarning, match="no integrity envelope"):
        assert not ex.run(cfg(), tiny_dataset, cache_dir=tmp_path).extras.get("cached", False)
    # Result.from_json reads both forms (and verifies the envelope)
    assert Result.from_json(path).test == first.test


def test_grid_treats_a_bad_entry_as_missing(tiny_dataset, tmp_path):
    ex.grid([cfg()], tiny_dataset, tmp_path, progress=False)
    path = ex.result_path(cfg(), tiny_dataset, tmp_path)
    path.write_text('{"schema": "ckdlab.result"')
    with pytest.warns(CacheWarning, match=str(path)):
        frame = ex.grid([cfg()], tiny_dataset, tmp_path, progress=False)
    assert frame["status"].tolist() == ["ok"] and not frame["cached"].any()


# -- teachers ----------------------------------------------------------------------------------------

def test_truncated_teacher_is_reported_and_retrained(tiny_dataset, tmp_path):
    student = cfg(method="ckd")
    cpu = torch.device("cpu")
    train = training_runner(tmp_path)
    first = teachers_module.load_or_train_teacher(student, tiny_dataset, "text", tmp_path, cpu, {"max_epochs": 1},
                                                  train_run=train)
    (path,) = (tmp_path / "teachers").glob("*.pt")
    assert path.read_bytes().startswith(b'{"format": 2')  # integrity header, then torch.save's bytes
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.warns(CacheWarning, match=f"{path}.*truncated"):
        again = teachers_module.load_or_train_teacher(student, tiny_dataset, "text", tmp_path, cpu,
                                                      {"max_epochs": 1}, train_run=training_runner(tmp_path))
    assert not again.cached and torch.equal(again.item_reps, first.item_reps)
    assert (path.parent / f"{path.name}.corrupt").is_file()
    assert teachers_module.load_or_train_teacher(student, tiny_dataset, "text", tmp_path, cpu,
                                                 {"max_epochs": 1}, train_run=training_runner(tmp_path)).cached


def test_teacher_that_torch_cannot_load_is_retrained(tiny_dataset, tmp_path):
    student = cfg(method="ckd")
    cpu = torch.device("cpu")
    train = training_runner(tmp_path)
    teachers_module.load_or_train_teacher(student, tiny_dataset, "image", tmp_path, cpu, {"max_epochs": 1},
                                          train_run=train)
    (path,) = (tmp_path / "teachers").glob("*.pt")
    store.write_blob(path, b"not a torch file", schema=teachers_module.TEACHER_SCHEMA,
                     format=teachers_module.TEACHER_FORMAT)  # checksum fine, content unreadable
    with pytest.warns(CacheWarning, match="torch.load failed"):
        again = teachers_module.load_or_train_teacher(student, tiny_dataset, "image", tmp_path, cpu,
                                                      {"max_epochs": 1}, train_run=training_runner(tmp_path))
    assert not again.cached


# -- two processes, one configuration ------------------------------------------------------------------

def test_concurrent_identical_runs_train_once_and_share_the_entry(tiny_dataset, tmp_path):
    config = cfg(max_epochs=3)
    path = ex.result_path(config, tiny_dataset, tmp_path)
    args = (config.to_dict(), tiny_dataset, str(tmp_path), 1)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        warm = [pool.submit(exec, "import ckdlab.experiments, ckdlab.train") for _ in range(2)]
        for f in warm:
            f.result()
        with store.locked(path):  # both start while the entry is locked: both must wait for it
            futures = [pool.submit(ex.run_task, *args) for _ in range(2)]
            time.sleep(1.0)
            assert not path.exists()
        outcomes = [f.result(timeout=120) for f in futures]
    results = [Result.from_dict(o["result"]) for o in outcomes]
    assert sorted(bool(r.extras.get("cached", False)) for r in results) == [False, True]
    assert results[0].test == results[1].test and results[0].history == results[1].history
    assert entries(path.parent) == [path.name]  # one entry; no lock, temporary or corrupt file left
    assert ex.run(config, tiny_dataset, cache_dir=tmp_path).test == results[0].test


# -- failed runs --------------------------------------------------------------------------------------

@pytest.fixture
def diverging_fit(monkeypatch):
    """``fit`` raising TrainingDiverged for ``lr >= 1e29`` (as train.py's divergence guard does); counts calls."""
    real_fit = ckdlab.train.fit
    calls = []

    def fit(dataset, config=None, **kw):
        calls.append(config.lr)
        if config.lr >= 1e29:
            raise TrainingDiverged("loss is nan at epoch 1, step 3", epoch=1, step=3,
                                   terms={"bpr": float("nan"), "reg": torch.tensor(float("inf"))},
                                   checkpoint="/ckpt/last.pt")
        return real_fit(dataset, config, **kw)

    monkeypatch.setattr(ckdlab.train, "fit", fit)
    return calls


def test_run_records_a_diverged_run_and_reraises(tiny_dataset, tmp_path, diverging_fit):
    bad = cfg(lr=DIVERGING_LR)
    with pytest.raises(TrainingDiverged):
        ex.run(bad, tiny_dataset, cache_dir=tmp_path)
    assert not ex.result_path(bad, tiny_dataset, tmp_path).exists()
    record = ex.read_failure(ex.failure_path(bad, tiny_dataset, tmp_path))
    assert record["error"] == "loss is nan at epoch 1, step 3" and record["exception"] == "TrainingDiverged"
    assert (record["epoch"], record["step"], record["checkpoint"]) == (1, 3, "/ckpt/last.pt")
    assert record["config"]["lr"] == DIVERGING_LR and record["key"] == ex.result_key(bad, tiny_dataset)
    assert record["terms"]["reg"] == float("inf") and record["time"]


def test_grid_reports_failed_runs_and_does_not_retrain_them(tiny_dataset, tmp_path, diverging_fit):
    configs = [cfg(), cfg(lr=DIVERGING_LR), cfg(seed=1)]
    with pytest.warns(RuntimeWarning, match="1 of 3 runs failed"):
        frame, results = ex.grid(configs, tiny_dataset, tmp_path, progress=False, executor="inline",
                                 return_results=True)
    assert frame["status"].tolist() == ["ok", "failed", "ok"]
    assert frame["error"].tolist()[1] == "loss is nan at epoch 1, step 3"
    assert frame["error"].isna().tolist() == [True, False, True]
    assert frame["test_recall@20"].isna().tolist() == [False, True, False]
    assert results[1] is None and results[0] is not None
    assert frame.loc[1, "seed"] == 0 and frame.loc[1, "method"] == "none"
    assert ex.cache_status(frame) == "cached runs: 0/3 (1 failed)"
    assert ex.load_results(frame, tmp_path)[1] is None

    diverging_fit.clear()
    with pytest.warns(RuntimeWarning):
        again = ex.grid(configs, tiny_dataset, tmp_path, progress=False, executor="inline")
    assert diverging_fit == []  # the failure record answers: nothing retrained
    assert again["status"].tolist() == ["ok", "failed", "ok"] and again["cached"].all()

    with pytest.warns(RuntimeWarning):
        ex.grid(configs, tiny_dataset, tmp_path, progress=False, executor="inline", retry_failed=True)
    assert diverging_fit == [DIVERGING_LR]  # only the failed run is retried


def test_a_retried_run_that_succeeds_drops_its_failure_record(tiny_dataset, tmp_path, diverging_fit, monkeypatch):
    bad = cfg(lr=DIVERGING_LR)
    with pytest.raises(TrainingDiverged):
        ex.run(bad, tiny_dataset, cache_dir=tmp_path)
    monkeypatch.setattr(ckdlab.train, "fit", lambda dataset, config, **kw: Result(
        config=config.to_dict(), dataset={"name": dataset.name}, best_epoch=1, epochs_run=1,
        valid={"recall@20": 0.1}, test={"recall@20": 0.1}))  # e.g. the guard now recovers
    frame = ex.grid([bad], tiny_dataset, tmp_path, progress=False, retry_failed=True)
    assert frame["status"].tolist() == ["ok"]
    assert not ex.failure_path(bad, tiny_dataset, tmp_path).exists()


def test_tables_leave_failed_runs_out_and_count_them():
    from ckdlab import tables

    rows = []
    for method, values in {"none": [0.10, 0.12, 0.11], "ckd": [0.13, None, 0.15]}.items():
        for seed, v in enumerate(values):
            nan = float("nan")
            rows.append({"dataset": "d", "backbone": "VBPR", "method": method, "variant": "", "seed": seed,
                         "status": "ok" if v is not None else "failed",
                         "test_recall@20": nan if v is None else v, "test_ndcg@20": nan if v is None else v / 2,
                         "test_precision@20": nan if v is None else v / 10})
    frame = pd.DataFrame(rows)
    with pytest.warns(RuntimeWarning, match="1 failed run"):
        t1 = tables.table1(frame)
    ckd = t1.loc[("d", "VBPR", "ckd"), "recall@20"]
    assert ckd["mean"] == pytest.approx(0.14) and ckd["n"] == 2 and ckd["n_failed"] == 1
    assert t1.loc[("d", "VBPR", "none"), ("recall@20", "n_failed")] == 0
    with pytest.warns(RuntimeWarning, match="1 failed run"):
        imp = tables.improvement(frame)
    assert imp.loc[("d", "VBPR", "recall@20"), "n_pairs"] == 2
    ok = frame[frame["status"] == "ok"].drop(columns="status")
    assert "n_failed" not in tables.table1(ok).columns.get_level_values("stat")  # unchanged without failures
