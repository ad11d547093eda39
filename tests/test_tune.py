"""Hyperparameter search (ckdlab.tuning): pruning, a sealed test split, resuming, equal budgets, final runs."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import write_mmrec  # noqa: E402

from ckdlab import train as train_module  # noqa: E402
from ckdlab import tuning  # noqa: E402
from ckdlab.config import TrainConfig  # noqa: E402
from ckdlab.data import Dataset, load  # noqa: E402
from ckdlab.experiments import read_result, result_path  # noqa: E402
from ckdlab.studies import storage_url  # noqa: E402
from ckdlab.train import fit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class SplitReadError(AssertionError):
    pass


class SealedTestSplit(Dataset):
    """A dataset whose test split raises when read, until ``unseal()``.

    The fingerprint (a content hash, the cache key) is taken before sealing: it
    identifies the data, it is not an evaluation.
    """

    def __getattribute__(self, name):
        if name == "test" and object.__getattribute__(self, "__dict__").get("sealed"):
            raise SplitReadError("the test split was read")
        return object.__getattribute__(self, name)

    @classmethod
    def of(cls, dataset: Dataset) -> "SealedTestSplit":
        fields = {f.name: getattr(dataset, f.name) for f in dataclasses.fields(Dataset) if f.init}
        sealed = cls(**fields)
        assert sealed.fingerprint == dataset.fingerprint
        sealed.sealed = True
        return sealed

    def unseal(self) -> None:
        self.sealed = False


@pytest.fixture(scope="module")
def small():
    return load("synthetic", n_users=120, n_items=100)


def test_sealed_dataset_raises_on_any_read(small):
    ds = SealedTestSplit.of(small)
    for read in (lambda: ds.test, lambda: ds.split("test"), lambda: ds.summary(), lambda: ds.eval_users("test")):
        with pytest.raises(SplitReadError):
            read()
    ds.unseal()
    assert len(ds.test) == len(small.test)


# -- the training-loop hooks the search relies on ----------------------------------------------------

def test_fit_without_test_split_and_with_a_stopping_callback(small, tmp_path):
    ds = SealedTestSplit.of(small)
    cfg = TrainConfig(max_epochs=4, batch_size=512, lr=5e-3, device="cpu", progress=False, evaluate_test=False,
                      eval_by_modality=False, checkpoint_every=1)
    seen = []
    result = fit(ds, cfg, cache_dir=tmp_path, on_evaluation=lambda epoch, valid: seen.append((epoch, valid)))
    assert result.test == {} and result.test_by_modality == {}
    assert "test" not in result.dataset["interactions"] and "test" not in result.dataset["eval_users"]
    assert [e for e, _ in seen] == [1, 2, 3, 4]
    assert [v for _, v in seen] == [h["valid"] for h in result.history]
    # a run without the test split is another cache entry; ordinary runs keep their keys
    assert cfg.identity()["evaluate_test"] is False
    assert set(cfg.replace(evaluate_test=True).identity()) == set(TrainConfig().identity()) == set(cfg.identity()) - {
        "evaluate_test"}

    class Stop(Exception):
        pass

    def stop_at_3(epoch, valid):
        if epoch == 3:
            raise Stop

    with pytest.raises(Stop):
        fit(ds, cfg.replace(seed=1), cache_dir=tmp_path, on_evaluation=stop_at_3)
    # resumed from the epoch-2 checkpoint: the callback first sees the restored evaluations, then the new ones
    seen.clear()
    resumed = fit(ds, cfg.replace(seed=1), cache_dir=tmp_path, on_evaluation=lambda e, v: seen.append((e, v)))
    assert [e for e, _ in seen] == [1, 2, 3, 4] and resumed.epochs_run == 4


# -- the search --------------------------------------------------------------------------------------

def test_pruning_stops_weak_trials_early(small, tmp_path):
    out = tuning.tune(small, "VBPR", "none", trials=8, epochs_budget=9, cache_dir=tmp_path, progress=False,
                      final=False)
    t = out.trials
    pruned = t[t.state == "pruned"]
    assert len(t) == 8 and t.counts.all()
    assert len(pruned) >= 1 and (pruned.epochs_run < 9).any(), t
    complete = t[t.state == "complete"]
    # a pruned trial is stopped because trials in its bracket did better at that epoch
    assert pruned["valid_recall@20"].max() < complete["valid_recall@20"].max()
    assert out.spent["epochs"] == int(t.epochs_run.sum()) < 8 * 9
    assert out.spent["pruned"] == len(pruned) and out.spent["trials"] == 8
    assert out.best["value"] == pytest.approx(complete["valid_recall@20"].max())


def test_equal_budgets_and_no_test_split_read_by_any_method(small, tmp_path):
    ds = SealedTestSplit.of(small)  # a read of the test split anywhere in a search raises
    budgets, studies = {}, {}
    for method in ("none", "gb", "ogm", "ckd"):
        out = tuning.tune(ds, "VBPR", method, trials=3, epochs_budget=3, cache_dir=tmp_path, progress=False,
                          final=False, base=TrainConfig(batch_size=512))
        budgets[method] = out.budget
        studies[method] = optuna.load_study(study_name=out.study_name, storage=storage_url(out.study_name, tmp_path))
        assert out.spent["trials"] == 3 and len(out.trials) == 3
        assert out.trials.epochs_run.between(1, 3).all()
        assert out.spent["epochs"] <= 3 * 3
    assert all(b == budgets["none"] for b in budgets.values())
    for method, study in studies.items():
        assert study.user_attrs["budget"] == budgets["none"]
        base = study.user_attrs["search"]["base"]
        assert base["max_epochs"] == 3 and base["evaluate_test"] is False and base["select_metric"] == "recall@20"
        if method == "ckd":
            assert base["method_params"]["teacher"]["max_epochs"] == 3
    assert set(studies["ckd"].trials[0].params) == {"lr", "reg_weight", "method.lambda_g", "method.lambda_kd"}
    assert set(studies["gb"].trials[0].params) == {"lr", "reg_weight", "method.super_epoch"}


def test_final_runs_read_the_test_split_once_per_seed(small, tmp_path, monkeypatch):
    ds = SealedTestSplit.of(small)
    test_reads = {"overall": 0, "by_modality": 0}
    real_eval, real_by_modality = train_module.evaluate, train_module.evaluate_by_modality

    def counting(kind, fn):
        def wrapped(model, inputs, dataset, split="valid", *a, **kw):
            test_reads[kind] += split == "test"
            return fn(model, inputs, dataset, split, *a, **kw)
        return wrapped

    monkeypatch.setattr(train_module, "evaluate", counting("overall", real_eval))
    monkeypatch.setattr(train_module, "evaluate_by_modality", counting("by_modality", real_by_modality))
    real_final = tuning.final_runs

    def unsealed_final(config, dataset, seeds, **kw):
        assert test_reads == {"overall": 0, "by_modality": 0}  # nothing during the search
        dataset.unseal()
        return real_final(config, dataset, seeds, **kw)

    monkeypatch.setattr(tuning, "final_runs", unsealed_final)
    out = tuning.tune(ds, "VBPR", "none", trials=3, epochs_budget=2, seeds=[0, 1, 2], cache_dir=tmp_path,
                      progress=False, base=TrainConfig(batch_size=512))
    assert test_reads == {"overall": 3, "by_modality": 3}
    assert [row["seed"] for row in out.final] == [0, 1, 2]
    assert all(row["test"]["recall@20"] >= 0 and row["test_by_modality"] for row in out.final)
    chosen = TrainConfig.from_dict(out.best["config"])
    assert chosen.evaluate_test is False  # the search's runs hold no test metrics
    assert read_result(result_path(chosen, ds, tmp_path)).test == {}
    for row in out.final:
        assert read_result(result_path(chosen.replace(seed=row["seed"], evaluate_test=True), ds, tmp_path)).test


def test_a_study_refuses_another_search(small, tmp_path):
    tuning.tune(small, "MF", "none", trials=1, epochs_budget=1, study_name="s", cache_dir=tmp_path,
                progress=False, final=False)
    with pytest.raises(ValueError, match="epochs_per_trial"):
        tuning.tune(small, "MF", "none", trials=1, epochs_budget=2, study_name="s", cache_dir=tmp_path,
                    progress=False, final=False)



def test_a_study_from_before_a_field_left_the_run_identity_still_resumes(small, tmp_path):
    """``eval_by_modality`` was once part of a run's identity (it never changed a number); a study
    that stored it in its search is the same search now, not another one."""
    first = tuning.tune(small, "MF", "none", trials=1, epochs_budget=1, study_name="s", cache_dir=tmp_path,
                        progress=False, final=False)
    study = optuna.load_study(study_name="s", storage=storage_url("s", tmp_path))
    search = study.user_attrs["search"]
    study.set_user_attr("search", {**search, "base": {**search["base"], "eval_by_modality": False}})
    again = tuning.tune(small, "MF", "none", trials=2, epochs_budget=1, study_name="s", cache_dir=tmp_path,
                        progress=False, final=False)
    assert again.spent["trials"] == 2  # the first trial counted once, not run again
    assert again.trials.iloc[0].to_dict() == first.trials.iloc[0].to_dict()
    # the base's value of a searched setting never reaches a run: a changed package default is the same search
    study.set_user_attr("search", {**search, "base": {**search["base"], "lr": 0.5}})
    assert "lr" in search["space"]
    tuning.tune(small, "MF", "none", trials=2, epochs_budget=1, study_name="s", cache_dir=tmp_path,
                progress=False, final=False)
    study.set_user_attr("search", {**search, "base": {**search["base"], "batch_size": 7}})  # not searched
    with pytest.raises(ValueError, match="base"):
        tuning.tune(small, "MF", "none", trials=2, epochs_budget=1, study_name="s", cache_dir=tmp_path,
                    progress=False, final=False)

# -- resuming a killed search ---------------------------------------------------------------------

HANG_AT_TRIAL = """
import pathlib, sys, time
import torch
torch.set_num_threads(1)
from ckdlab import cli, tuning
marker, hang_at = pathlib.Path(sys.argv[1]), int(sys.argv[2])
report = tuning._Reporter.__call__
def hang(self, epoch, valid):
    report(self, epoch, valid)
    if self.trial.number == hang_at and epoch == 2:
        marker.write_text("hanging")
        time.sleep(300)
tuning._Reporter.__call__ = hang
sys.exit(cli.main(sys.argv[3:]))
"""


def test_killed_search_resumes_without_repeating_finished_trials(small, tmp_path, capsys):
    folder = write_mmrec(small, tmp_path / "small")
    cache = tmp_path / "cache"
    args = ["tune", "--data", str(folder), "--backbone", "VBPR", "--trials", "6", "--epochs-budget", "4",
            "--pruner", "none", "--set", "batch_size=512", "--cache-dir", str(cache), "--no-final", "--quiet",
            "--study", "killed"]
    marker = tmp_path / "hanging"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HANG_AT_TRIAL, str(marker), "3", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the search never reached trial 3"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()

    url = storage_url("killed", cache)
    before = optuna.load_study(study_name="killed", storage=url).trials
    assert [t.state.name for t in before] == ["COMPLETE"] * 3 + ["RUNNING"]

    from ckdlab.cli import main

    assert main(args) == 0
    printed = capsys.readouterr().out
    after = optuna.load_study(study_name="killed", storage=url).trials
    for old, new in zip(before[:3], after[:3]):  # finished trials kept as they were
        assert (new.state, new.params, new.value, new.user_attrs) == (old.state, old.params, old.value, old.user_attrs)
    killed = after[3]
    assert killed.state.name == "FAIL" and "died" in killed.user_attrs["error"]
    repeats = [t for t in after[4:] if "repeat_of" in t.user_attrs]  # the sampler asking again: free
    assert all("epochs_run" not in t.user_attrs for t in repeats)
    new = [t for t in after[4:] if "repeat_of" not in t.user_attrs]
    assert len(new) == 3 and all(t.state.name == "COMPLETE" for t in new)  # 6 - 3: nothing trained twice
    retry = [t for t in new if t.user_attrs.get("retry_of") == 3]
    assert len(retry) == 1 and retry[0].params == killed.params
    assert sum(t.user_attrs["epochs_run"] for t in new) == 3 * 4

    saved = json.loads((cache / "studies" / "killed.json").read_text())
    assert saved["budget"]["trials"] == 6 and saved["budget"]["epochs_per_trial"] == 4
    assert saved["spent"] == {"trials": 6, "complete": 6, "pruned": 0, "diverged": 0, "epochs": 24, "retried": 1}
    assert [r["state"] for r in saved["trials"] if r["state"] != "repeat"] == ["complete"] * 3 + ["failed"] + \
        ["complete"] * 3
    assert "dashboard: optuna-dashboard sqlite:///" in printed


def test_cli_compares_methods_on_one_budget(small, tmp_path, capsys):
    from ckdlab.cli import main

    folder = write_mmrec(small, tmp_path / "small")
    assert main(["tune", "--data", str(folder), "--backbone", "VBPR", "--method", "none", "ogm", "--trials", "2",
                 "--epochs-budget", "2", "--seeds", "0", "1", "--set", "batch_size=512", "--set", "reg_weight=1e-4",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    table = printed.split("every method with the same budget\n")[1].splitlines()
    assert table[0].split()[:5] == ["method", "trials", "epochs_per_trial", "trials_spent", "epochs_spent"]
    rows = {line.split()[0]: line.split() for line in table[1:3]}
    assert set(rows) == {"none", "ogm"} and rows["none"][1:4] == rows["ogm"][1:4] == ["2", "2", "2"]
    assert "reg_weight" not in printed.split("chosen:")[1].splitlines()[0]  # fixed with --set: not searched


def test_a_repeated_setting_spends_no_budget(small, tmp_path):
    """TPE on a small categorical space asks for settings again: the repeat answers as before, for free."""
    space = {"lr": (1e-3, 5e-3), "reg_weight": (1e-4,)}
    out = tuning.tune(small, "VBPR", "none", trials=5, epochs_budget=2, cache_dir=tmp_path, progress=False,
                      final=False, sampler="tpe", space=space, base=TrainConfig(batch_size=512))
    t = out.trials
    assert out.budget["trials"] == 2  # the space has two settings: more trials cannot buy anything
    counted = t[t.counts]
    assert len(counted) == 2 and counted.lr.nunique() == 2
    repeats = t[t.state == "repeat"]
    assert not repeats.counts.any() and repeats.repeat_of.notna().all()
    for _, r in repeats.iterrows():
        first = t[t.trial == r.repeat_of].iloc[0]
        assert first.lr == r.lr and (first["valid_recall@20"] == r["valid_recall@20"] or first.state == "pruned")
    assert out.spent["trials"] == 2 and out.spent["epochs"] == int(counted.epochs_run.sum())


def test_auto_sampler_runs_the_grid_when_the_budget_covers_it(small, tmp_path):
    space = {"lr": (1e-3, 5e-3), "reg_weight": (1e-4, 1e-3)}
    out = tuning.tune(small, "VBPR", "none", trials=4, epochs_budget=2, cache_dir=tmp_path, progress=False,
                      final=False, space=space, base=TrainConfig(batch_size=512))
    assert out.budget["sampler"] == "grid"
    assert sorted(zip(out.trials.lr, out.trials.reg_weight)) == sorted((a, b) for a in space["lr"]
                                                                       for b in space["reg_weight"])
    assert tuning.resolve_sampler("auto", space, 3) == "tpe"


def test_no_trial_is_pruned_before_the_minimum_epochs(small, tmp_path):
    out = tuning.tune(small, "VBPR", "none", trials=8, epochs_budget=9, min_epochs=3, cache_dir=tmp_path,
                      progress=False, final=False, base=TrainConfig(batch_size=512))
    t = out.trials
    assert out.budget["min_epochs"] == 3 and "hyperband3" in out.study_name
    assert (t.epochs_run >= 3).all(), t
    assert tuning.default_min_epochs(27) == 3 and tuning.default_min_epochs(5) == 1
