"""Run records (ckdlab.records): written for every run, portable, read before the cache, the only source
when a report is rebuilt from them; the committed ones fit their budget and rebuild their report."""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from concurrent.futures import Executor, Future
from pathlib import Path

import pytest

import ckdlab.train
from ckdlab import experiments as ex
from ckdlab import records
from ckdlab.config import TrainConfig
from ckdlab.faults import TrainingDiverged
from ckdlab.report import NOTEBOOKS, RUNS_FOLDER, report

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "reports"


def cfg(**kw) -> TrainConfig:
    base = dict(backbone="VBPR", max_epochs=2, device="cpu", progress=False, batch_size=64)
    return TrainConfig(**{**base, **kw})


def no_training(*args, **kwargs):
    raise AssertionError("a recorded run must not train")


@pytest.fixture
def keep_records(tmp_path, monkeypatch):
    folder = tmp_path / "runs"
    monkeypatch.setenv(records.RECORDS_ENV, str(folder))
    return folder


def test_a_run_writes_a_compact_portable_record_that_reads_back(tiny_dataset, tmp_path, keep_records):
    result = ex.run(cfg(), tiny_dataset, cache_dir=tmp_path / "cache")
    key = ex.result_key(cfg(), tiny_dataset)
    path = records.result_record_path(keep_records, key)
    assert path.is_file() and path.name == f"{key}.json.gz"
    again = records.read_result(keep_records, key)
    assert again.extras.pop("from_record") is True and again.extras.pop("cached") is True
    assert again.extras.pop("record_key") == key
    assert again.to_dict() == json.loads(json.dumps(result.to_dict()))  # every field, as JSON holds it
    payload = gzip.decompress(path.read_bytes().split(b"\n", 1)[1])
    assert b'"cached"' not in payload
    # writing the same record again gives the same bytes: re-running a report changes nothing in git
    before = path.read_bytes()
    records.write_result(keep_records, key, result)
    assert path.read_bytes().split(b"\n", 1)[1] == before.split(b"\n", 1)[1]


def test_no_absolute_path_reaches_a_record(tiny_dataset, tmp_path, keep_records):
    result = ex.run(cfg(), tiny_dataset, cache_dir=tmp_path / "cache")
    result.dataset["source"] = str(tmp_path / "data" / "tiktok")
    result.extras["teachers"] = {"image": {"path": "/home/someone/cache/teachers/x.pt", "note": "a/b relative"}}
    records.write_result(keep_records, "k", result)
    back = records.read_result(keep_records, "k")
    assert back.dataset["source"] == "tiktok"
    assert back.teachers == {"image": {"path": "x.pt", "note": "a/b relative"}}
    failure = {"key": "f", "error": f"diverged; last good checkpoint: {tmp_path / 'c.pt'} (epoch 3/2 of runs)",
               "checkpoint": str(tmp_path / "c.pt"), "host": "box", "pid": 7}
    records.write_failure(keep_records, "f", failure)
    assert records.read_failure(keep_records, "f") == {
        "key": "f", "error": "diverged; last good checkpoint: c.pt (epoch 3/2 of runs)", "checkpoint": "c.pt",
        "cached": True}


def test_a_recorded_run_is_not_trained_on_another_machine(tiny_dataset, tmp_path, keep_records, monkeypatch):
    first = ex.run(cfg(), tiny_dataset, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(ckdlab.train, "fit", no_training)
    # another machine: the records folder travelled (a clone), its cache did not
    second = ex.run(cfg(), tiny_dataset, cache_dir=tmp_path / "other-cache")
    assert second.test == first.test and second.extras["cached"] is True
    frame, results = ex.grid([cfg(), cfg()], tiny_dataset, tmp_path / "other-cache", progress=False,
                             return_results=True)
    assert frame["cached"].all() and results[0].test == first.test


def test_a_record_made_on_the_other_device_type_serves_this_one(tiny_dataset, tmp_path, keep_records,
                                                                monkeypatch):
    made = ex.run(cfg(), tiny_dataset, cache_dir=tmp_path / "cache")
    on_gpu = ex.result_key(cfg(device="cuda"), tiny_dataset)  # as a GPU machine names the same run
    assert on_gpu != ex.result_key(cfg(), tiny_dataset)
    records.write_result(keep_records, on_gpu, made)
    records.result_record_path(keep_records, ex.result_key(cfg(), tiny_dataset)).unlink()
    monkeypatch.setenv(records.ONLY_ENV, "1")
    monkeypatch.setattr(ckdlab.train, "fit", no_training)
    assert ex.run(cfg(), tiny_dataset, cache_dir=tmp_path / "empty").test == made.test
    frame = ex.grid([cfg()], tiny_dataset, tmp_path / "empty", progress=False)
    assert frame["key"].tolist() == [on_gpu]  # the row names the record it came from
    assert ex.load_results(frame, tmp_path / "empty")[0].test == made.test


def test_records_only_refuses_to_train_even_when_asked_to(tiny_dataset, tmp_path, keep_records, monkeypatch):
    monkeypatch.setenv(records.ONLY_ENV, "1")
    with pytest.raises(ValueError, match="records only"):
        ex.run(cfg(), tiny_dataset, cache_dir=tmp_path / "cache", use_cache=False)
    with pytest.raises(ValueError, match="records only"):
        ex.grid([cfg()], tiny_dataset, tmp_path / "cache", progress=False, use_cache=False)
    monkeypatch.delenv(records.RECORDS_ENV)
    with pytest.raises(ValueError, match="names no records folder"):
        ex.run(cfg(), tiny_dataset, cache_dir=tmp_path / "cache")


def test_a_cached_run_gets_its_record(tiny_dataset, tmp_path, monkeypatch):
    ex.grid([cfg(), cfg(seed=1)], tiny_dataset, tmp_path / "cache", progress=False, executor="inline")
    folder = tmp_path / "runs"
    monkeypatch.setenv(records.RECORDS_ENV, str(folder))
    monkeypatch.setattr(ckdlab.train, "fit", no_training)
    ex.grid([cfg(), cfg(seed=1)], tiny_dataset, tmp_path / "cache", progress=False)
    assert records.summary(folder)["records"] == 2
    assert records.summary(folder)["numbers"][0]["numbers_version"] == ex.numbers_identity("cpu")["numbers_version"]


class WorkerWithoutRecords(Executor):
    """An executor whose worker does not see ``$CKDLAB_RECORDS`` (a cluster's worker on another machine)."""

    def submit(self, fn, *args, **kwargs):
        future = Future()
        saved = os.environ.pop(records.RECORDS_ENV)
        try:
            future.set_result(fn(*args, **kwargs))
        finally:
            os.environ[records.RECORDS_ENV] = saved
        return future


def test_runs_trained_by_a_remote_worker_are_recorded_by_the_grid(tiny_dataset, tmp_path, keep_records):
    ex.grid([cfg(), cfg(seed=1)], tiny_dataset, tmp_path / "cache", progress=False, executor=WorkerWithoutRecords())
    assert records.summary(keep_records)["records"] == 2


def test_from_records_only_nothing_trains_and_the_cache_is_not_read(tiny_dataset, tmp_path, keep_records,
                                                                     monkeypatch):
    ex.run(cfg(), tiny_dataset, cache_dir=tmp_path / "cache")
    ex.run(cfg(seed=1), tiny_dataset, cache_dir=tmp_path / "cache", )
    records.result_record_path(keep_records, ex.result_key(cfg(seed=1), tiny_dataset)).unlink()
    monkeypatch.setenv(records.ONLY_ENV, "1")
    monkeypatch.setattr(ckdlab.train, "fit", no_training)
    assert ex.run(cfg(), tiny_dataset, cache_dir=tmp_path / "cache").extras["from_record"]
    # seed 1 is in the cache but has no record: with records only, that is an error naming the run
    with pytest.raises(records.MissingRecord, match=r"VBPR/none seed 1 .*--from-records"):
        ex.run(cfg(seed=1), tiny_dataset, cache_dir=tmp_path / "cache")
    with pytest.raises(records.MissingRecord, match=r"1 of 2 runs|VBPR/none seed 1"):
        ex.grid([cfg(), cfg(seed=1)], tiny_dataset, tmp_path / "cache", progress=False)


def test_a_diverged_run_is_recorded_and_reported_from_its_record(tiny_dataset, tmp_path, keep_records,
                                                                 monkeypatch):
    bad = cfg(lr=1e20, max_epochs=1)
    frame = ex.grid([bad], tiny_dataset, tmp_path / "cache", progress=False, executor="inline")
    assert frame["status"].tolist() == ["failed"]
    monkeypatch.setenv(records.ONLY_ENV, "1")
    monkeypatch.setattr(ckdlab.train, "fit", no_training)
    again = ex.grid([bad], tiny_dataset, tmp_path / "other-cache", progress=False)
    assert again["status"].tolist() == ["failed"] and again["cached"].tolist() == [True]
    assert "diverged" in again["error"][0]


def test_a_damaged_record_is_an_error_not_a_silent_retrain(tiny_dataset, tmp_path, keep_records):
    ex.run(cfg(), tiny_dataset, cache_dir=tmp_path / "cache")
    path = records.result_record_path(keep_records, ex.result_key(cfg(), tiny_dataset))
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ex.store.CorruptEntry, match="sha256"):
        ex.run(cfg(), tiny_dataset, cache_dir=tmp_path / "cache")


# -- the committed records ------------------------------------------------------------------------

def committed_record_files() -> list[Path]:
    return sorted(COMMITTED.glob(f"*/{RUNS_FOLDER}/*.json.gz"))


def test_committed_records_fit_the_size_budget_and_name_no_machine_path():
    files = committed_record_files()
    assert files, "reports/*/runs/ holds no records"
    assert sum(p.stat().st_size for p in files) <= records.SIZE_BUDGET_BYTES
    machine_path = re.compile(r"(?<![\w.])/(root|home|work|tmp|Users|mnt|scratch)/")
    for path in files:
        payload = gzip.decompress(path.read_bytes().split(b"\n", 1)[1]).decode()
        assert not machine_path.search(payload), path


def test_the_committed_synthetic_report_rebuilds_from_its_records_without_training(tmp_path):
    """The CI check of ``ckdlab report --from-records``: every notebook of the committed synthetic
    report executes again from its committed records, in a fresh cache, with nothing trained."""
    source = COMMITTED / "synthetic"
    shutil.copytree(source / RUNS_FOLDER, tmp_path / "synthetic" / RUNS_FOLDER)
    shutil.copy(source / "report.json", tmp_path / "synthetic" / "report.json")
    notebooks = [n for n in NOTEBOOKS if (source / f"{n}.ipynb").exists()]
    manifests = report(["synthetic"], notebooks, tmp_path, html_output=False, from_records=True,
                       overrides={"cache_dir": str(tmp_path / "empty-cache")}, log=lambda msg: None)
    outcome = {r["notebook"]: r["error"] for r in manifests[0]["notebooks"]}
    assert outcome == {n: None for n in notebooks}
    assert not (tmp_path / "empty-cache" / "results").exists()  # nothing trained, nothing cached
    # the rebuilt numbers are the committed ones: CKD's improvement per backbone, recomputed from the same
    # recorded floats (to 1e-12: the interval's t quantile comes from a special function, whose last bit
    # may differ between library builds; everything else is equal)
    rebuilt = json.loads((tmp_path / "synthetic" / "table1_summary.json").read_text())
    committed = json.loads((source / "table1_summary.json").read_text())
    assert rebuilt.keys() == committed.keys() and rebuilt["provenance"] == committed["provenance"]
    assert rebuilt["backbones"].keys() == committed["backbones"].keys()
    for name, entry in committed["backbones"].items():
        assert rebuilt["backbones"][name] == pytest.approx(entry, rel=1e-12, nan_ok=True), name


def test_summary_counts_what_the_runs_and_their_teachers_cost_each_teacher_once(tiny_dataset, tmp_path,
                                                                                keep_records):
    teacher = {"teacher": {"max_epochs": 1}}
    ckd = [cfg(method="ckd", method_params=teacher), cfg(method="ckd", method_params={**teacher, "lambda_kd": 0.5})]
    results = [ex.run(c, tiny_dataset, cache_dir=tmp_path / "cache") for c in ckd]
    summary = records.summary(keep_records)
    assert summary["records"] == 2
    assert summary["train_seconds"] == pytest.approx(sum(r.timing["total_train_seconds"] for r in results), abs=2e-3)
    # every epoch validates, then the final validation and the test
    assert summary["eval_seconds"] == pytest.approx(
        sum(r.timing["eval_seconds"] * (r.epochs_run + 2) for r in results), abs=2e-3)
    # the two runs share their teachers (one per modality): counted once, with their stored cost
    costs = [t["cost"] for t in results[0].teachers.values()]
    assert all(t["cached"] for t in results[1].teachers.values())  # the second run read them
    assert summary["teachers_without_cost"] == 0
    assert summary["teacher_seconds"] == pytest.approx(
        sum(c["total_train_seconds"] + c["eval_seconds"] * (c["epochs_run"] + 2) for c in costs), abs=2e-3)
