"""The trained numbers behind the notebooks, checked the way they can be checked on any CPU.

The committed notebooks' checked cells (``# NBVAL_CHECK_OUTPUT``, compared by nbval) show only
what holds on every CPU and thread count: names, shapes, orderings, counts and qualitative
findings. Trained floats move in their last digits from one CPU to another (torch and MKL pick
other kernels, AVX-512, AVX2 or plain C++, which round and sum differently), so they are checked
here instead, on a smaller configuration of the same calls the notebooks make (VBPR, a smaller
synthetic dataset, a few epochs; ``ex.table_configs``, ``ex.ablation_configs``, ``ex.pilot`` and
the ``ckdlab.tables`` functions), against numbers this file computes itself:

* the same runs twice in this process (one machine, one thread count): bit-identical;
* a run read back from the cache: bit-identical (JSON keeps every digit of a float);
* each table against the runs it was built from: exact where the table selects a number or
  recomputes it with the same float operations, to 1e-12 where it computes a statistic another way;
* the same runs with two intra-op threads, and under the other CPU kernel family (a subprocess
  with ``ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE``, or without those when this process
  has them): equal within relative float32-training tolerances (``RTOL_*`` below).

Resuming an interrupted run against running it uninterrupted (bit-identical) is ``test_resume.py``'s.

Run as ``python tests/test_notebook_numbers.py OUT.json`` it trains :data:`REPEATED` and writes
their numbers (what the kernel test's subprocess does).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ckdlab import experiments as ex, tables
from ckdlab.config import TrainConfig
from ckdlab.data import load
from ckdlab.result import Result

#: A smaller synthetic dataset than the notebooks' default (2000 users, 1500 items), same generator.
DATA = {"n_users": 500, "n_items": 400}
#: The notebooks' training settings (``train_params = {"lr": 0.005}``) with fewer epochs.
KW = {"max_epochs": 4, "teacher_epochs": 3, "device": "cpu", "lr": 0.005, "progress": False}
SEEDS = [0, 1]  # two seeds: Table 1's paired t-test needs two pairs
METRICS = ("recall@20", "ndcg@20", "precision@20")

# Relative tolerances for the same runs on another thread count or another CPU kernel family.
# Rounding differences (float32: ~1e-7 relative per operation) grow through the SGD steps. Measured
# on these runs (AVX-512 vs default kernels, and 1 vs 2 threads; torch 2.13 CPU): losses, rho and
# lambda moved by at most 2e-7 relative, Recall/NDCG/Precision not at all. On another CPU a ranking
# metric moves in steps: one test item crossing a user's top-20 boundary changes Recall@20 by
# 1/(3 test items per user * 500 users) ~ 7e-4 absolute, ~3e-3 relative to a score of 0.2-0.3.
RTOL_METRIC = 3e-2  # Recall/NDCG/Precision at the best epoch: room for about ten items crossing the top-20 boundary
RTOL_DYNAMICS = 1e-4  # per-epoch means of CKD's rho and lambda: 500x the measured 2e-7, far below any real change
RTOL_LOSS = 1e-4  # per-epoch mean training loss: as for rho and lambda (measured: up to 9e-8)


def dataset():
    return load("synthetic", **DATA)


def table_configs():
    """Tables 1 and 2 (main_table, unimodal_table, quickstart): every method x seed."""
    return ex.table_configs("VBPR", ex.METHODS, SEEDS, **KW)


def ablation_configs():
    """Table 3 (ablation): every CKD variant, first seed (its CKD run is Table 1's)."""
    return ex.ablation_configs("VBPR", SEEDS[:1], **KW)


def pilot_configs(data):
    multimodal, unimodal = ex.pilot_configs("VBPR", data.modalities, seed=SEEDS[0], max_epochs=KW["max_epochs"],
                                            device=KW["device"], lr=KW["lr"])
    return multimodal, unimodal


def repeated_configs(data):
    """The runs trained again (twice, on two threads, on the other kernels): one per code path."""
    by_label = dict((label, c) for label, c in ablation_configs())
    plain = [c for c in table_configs() if c.seed == SEEDS[0]]  # none, gb, ogm, ckd
    _, unimodal = pilot_configs(data)
    first = data.modalities[0]
    return ([(c.method, c) for c in plain] + [("w/o re-weight", by_label["w/o re-weight"])]
            + [(f"{first}-only", unimodal[first])])


def train(configs, data, cache_dir):
    """``ex.grid`` in this process, one run after the other (what a notebook does with one worker)."""
    return ex.grid(configs, data, cache_dir, progress=False, return_results=True, executor="inline")


def exact_form(result, curves: bool = True) -> str:
    """Every number of a Result except timings, cache flags and provenance, as canonical JSON text.

    ``curves=False`` also leaves out the channels' validation curves (``eval_by_modality``: the pilot's
    run of a configuration records them, and its cache entry then serves Table 1's request too).
    """
    skip = ("seconds", "cached") if curves else ("seconds", "cached", "valid_by_modality", "eval_by_modality")

    def strip(value):
        if isinstance(value, dict):
            # "seconds" anywhere: also the timings inside a CKD teacher's stored cost
            return {k: strip(v) for k, v in value.items() if k not in skip and "seconds" not in k}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    d = result.to_dict()
    for name in ("timing", "provenance", "cached"):
        d.pop(name, None)
    d["config"] = TrainConfig.from_dict(d["config"]).identity()  # not progress, device: they change no number
    return json.dumps(strip(d), sort_keys=True)


def numbers(result) -> dict[str, dict[str, float]]:
    """The numbers the notebooks show, by kind (``metric``, ``dynamics``, ``loss``) and path.

    Channels of modalities a run ablates are left out: a uni-modal model's other channel has every
    modality ablated, scores almost constant over items, and a top-20 decided by rounding.
    """
    out = {"metric": {}, "dynamics": {}, "loss": {}, "epochs": {}}
    out["epochs"]["best_epoch"], out["epochs"]["epochs_run"] = result.best_epoch, result.epochs_run
    ablated = set(result.config.get("ablate") or ())
    for split in ("valid", "test"):
        for k in METRICS:
            out["metric"][f"{split}/{k}"] = getattr(result, split)[k]
            for m, by in getattr(result, f"{split}_by_modality").items():
                if m not in ablated:
                    out["metric"][f"{split}/{m}/{k}"] = by[k]
            for m, teacher in (result.extras.get("teachers") or {}).items():
                out["metric"][f"teacher {m}/{split}/{k}"] = teacher[split][k]
    for h in result.history:
        out["loss"][f"epoch {h['epoch']}"] = h["loss"]
        for q in ("rho", "lambda"):
            for m, v in (h.get(q) or {}).items():
                out["dynamics"][f"epoch {h['epoch']}/{q}/{m}"] = v
    return out


def compare(got: dict, ref: dict, label: str) -> None:
    """``got`` against ``ref`` (both from :func:`numbers`): epochs exactly, floats within their RTOL_*."""
    # epochs exactly: in these first epochs validation Recall@20 rises by >= 0.02 an epoch (measured),
    # far more than rounding moves it, so the best epoch is no near-tie
    assert got["epochs"] == ref["epochs"], label
    for kind, rtol in (("metric", RTOL_METRIC), ("dynamics", RTOL_DYNAMICS), ("loss", RTOL_LOSS)):
        assert got[kind].keys() == ref[kind].keys(), (label, kind)
        for path, value in ref[kind].items():
            assert got[kind][path] == pytest.approx(value, rel=rtol), f"{label}: {path}"


# -- the runs -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data():
    return dataset()


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The notebooks' calls on the small configuration: Tables 1-3, the pilot study, the dynamics."""
    cache = tmp_path_factory.mktemp("notebook-numbers-cache")
    table, table_results = train(table_configs(), data, cache)
    ablation, ablation_results = train(ablation_configs(), data, cache)
    multimodal, unimodal = ex.pilot("VBPR", data, seed=SEEDS[0], max_epochs=KW["max_epochs"], cache_dir=cache,
                                    device=KW["device"], progress=False, executor="inline", lr=KW["lr"])
    return {"cache": cache, "table": table, "table_results": table_results, "ablation": ablation,
            "ablation_results": ablation_results, "multimodal": multimodal, "unimodal": unimodal}


def reference(runs, data) -> dict[str, object]:
    """The Results of :func:`repeated_configs` from the module's runs, by label."""
    by_key = {}
    for frame, results in ((runs["table"], runs["table_results"]), (runs["ablation"], runs["ablation_results"])):
        by_key.update(zip(frame["key"], results))
    by_key.update({ex.result_key(c, data): runs["unimodal"][m]
                   for m, c in pilot_configs(data)[1].items()})
    return {label: by_key[ex.result_key(c, data)] for label, c in repeated_configs(data)}


# -- exact by construction: one machine, one thread count ----------------------------------------

def test_every_run_trained_and_the_pilot_shares_the_plain_run(runs):
    assert (runs["table"]["status"] == "ok").all() and (runs["ablation"]["status"] == "ok").all()
    assert runs["ablation"]["cached"].tolist() == [True] + [False] * (len(runs["ablation"]) - 1)  # CKD: Table 1's
    plain = runs["table_results"][0]
    # the pilot asks for the channels' validation curves, which Table 1's run did not record: it trains the
    # same configuration again, and evaluating the channels changes nothing of what it learns
    pilot = runs["multimodal"]
    assert not pilot.extras.get("cached") and all(h["valid_by_modality"] for h in pilot.history)
    assert TrainConfig.from_dict(pilot.config).identity() == TrainConfig.from_dict(plain.config).identity()
    assert exact_form(pilot, curves=False) == exact_form(plain, curves=False)


def test_same_runs_twice_in_one_process_are_bit_identical(runs, data, tmp_path):
    ref = reference(runs, data)
    _, again = train([c for _, c in repeated_configs(data)], data, tmp_path)  # fresh cache: teachers retrained
    for (label, _), result in zip(repeated_configs(data), again):
        assert not result.extras.get("cached")
        # same machine, same thread count, same seed: the same float operations in the same order
        assert exact_form(result) == exact_form(ref[label]), label


def test_cached_runs_read_back_bit_identical(runs, data):
    frame, results = train(table_configs(), data, runs["cache"])
    assert frame["cached"].all()
    for fresh, cached in zip(runs["table_results"], results):  # JSON stores every float with all its digits
        assert exact_form(cached, curves=False) == exact_form(fresh, curves=False)
    metric_cols = [c for c in runs["table"].columns if c.startswith(("valid_", "test_", "teacher_"))]
    pd.testing.assert_frame_equal(frame[metric_cols], runs["table"][metric_cols], check_exact=True)


# -- tables from the runs' own numbers ------------------------------------------------------------

def _values(frame, method, column):
    block = frame[frame["method"] == method].sort_values("seed")
    return block[column].to_numpy(dtype=float)


def test_runs_overview_selects_the_runs_numbers(runs):
    overview = tables.runs_overview(runs["table"])
    for row, result in zip(overview.itertuples(index=False), runs["table_results"]):
        row = row._asdict()
        assert (row["best_epoch"], row["epochs_run"]) == (result.best_epoch, result.epochs_run)
    # selected, not recomputed: exact
    assert overview["test_recall@20"].tolist() == [r.test["recall@20"] for r in runs["table_results"]]
    for m in ("text", "image"):
        assert overview[f"test_{m}_recall@20"].tolist() == [r.test_by_modality[m]["recall@20"]
                                                            for r in runs["table_results"]]


def test_table1_and_improvement_from_the_runs(runs):
    frame = runs["table"]
    t1 = tables.table1(frame)
    imp = tables.improvement(frame)
    for metric in METRICS:
        col = ex.metric_column("test", metric)
        for method in ex.METHODS:
            vals = _values(frame, method, col)
            stats = t1.loc[("synthetic", "VBPR", method), metric]
            # the mean of two floats is (a + b) / 2 in any summation order: exact
            assert stats["mean"] == (vals[0] + vals[1]) / 2
            assert stats["std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-12)  # another formula: float64 rounding
            assert stats["n"] == len(SEEDS)
        r = imp.loc[("synthetic", "VBPR", metric)]
        base, treat = _values(frame, "none", col), _values(frame, "ckd", col)
        assert (r["baseline_mean"], r["treatment_mean"]) == (t1.loc[("synthetic", "VBPR", "none"), (metric, "mean")],
                                                             t1.loc[("synthetic", "VBPR", "ckd"), (metric, "mean")])
        # the same expression on the same floats: exact
        assert r["improv_pct"] == 100.0 * (r["treatment_mean"] - r["baseline_mean"]) / r["baseline_mean"]
        assert r["diff_mean"] == pytest.approx(np.mean(treat - base), rel=1e-12)  # float64 rounding only
        from scipy import stats as st
        expected = st.ttest_rel(treat, base)
        assert (r["t"], r["p_value"]) == (float(expected.statistic), float(expected.pvalue))  # same call, same inputs
        assert r["n_pairs"] == len(SEEDS) and r["note"] == ""


def test_table2_from_the_runs_and_their_teachers(runs):
    frame, results = runs["table"], runs["table_results"]
    t2 = tables.table2(frame)
    assert t2.index.get_level_values("model").tolist() == list(tables.TABLE2_ROWS)
    for row, method in (("backbone", "none"), ("GB", "gb"), ("OGM", "ogm"), ("CKD", "ckd")):
        for m in ("text", "image"):
            vals = [r.test_by_modality[m]["recall@20"] for r, meth in zip(results, frame["method"]) if meth == method]
            assert t2.loc[("synthetic", "VBPR", row), (m, "mean")] == (vals[0] + vals[1]) / 2  # two floats: exact
    ckd = [r for r, meth in zip(results, frame["method"]) if meth == "ckd"]
    for m in ("text", "image"):
        vals = [r.teachers[m]["test"]["recall@20"] for r in ckd]
        assert t2.loc[("synthetic", "VBPR", "uni-teacher"), (m, "mean")] == (vals[0] + vals[1]) / 2
        assert t2.loc[("synthetic", "VBPR", "uni-teacher"), (m, "n")] == len(SEEDS)


def test_table3_from_the_variants(runs):
    frame, results = runs["ablation"], runs["ablation_results"]
    t3 = tables.table3(frame)
    assert t3.index.get_level_values("variant").tolist() == list(ex.ABLATION_VARIANTS)
    full = t3.loc[("synthetic", "VBPR", "CKD"), "mean"]
    for label, result in zip(frame["variant"], results):
        row = t3.loc[("synthetic", "VBPR", label)]
        assert row["mean"] == result.test["recall@20"] and row["n"] == 1  # one seed: the run's own number
        assert row["delta_pct"] == 100.0 * (row["mean"] - full) / full  # same expression, same floats: exact
    # the full-CKD row is Table 1's CKD run of that seed, read from the cache
    ckd0 = next(r for r, (meth, seed) in zip(runs["table_results"], zip(runs["table"]["method"], runs["table"]["seed"]))
                if meth == "ckd" and seed == SEEDS[0])
    assert full == ckd0.test["recall@20"]


def test_pilot_summary_and_findings_from_the_runs(runs):
    multimodal, unimodal = runs["multimodal"], runs["unimodal"]
    summary = tables.pilot_summary(multimodal, unimodal)
    assert summary.loc["all modalities", "multimodal model"] == multimodal.test["recall@20"]
    for m, alone in unimodal.items():
        row = summary.loc[m]
        channel, score = multimodal.test_by_modality[m]["recall@20"], alone.test["recall@20"]
        assert (row["multimodal model"], row["uni-modal model"]) == (channel, score)  # selected: exact
        assert row["gap"] == score - channel and row["gap_pct"] == 100.0 * (score - channel) / score  # same floats
        assert row["uni-modal best_epoch"] == alone.best_epoch
    findings = tables.pilot_findings(summary)
    for m, alone in unimodal.items():
        assert f"{m}-only model {alone.test['recall@20']:.4f}" in findings


def test_dynamics_summary_from_the_run(runs):
    ckd = next(r for r, meth in zip(runs["table_results"], runs["table"]["method"]) if meth == "ckd")
    dyn = tables.dynamics_summary(ckd)
    assert dyn.index.tolist() == [h["epoch"] for h in ckd.history] == list(range(1, ckd.epochs_run + 1))
    for h in ckd.history:
        for q in ("rho", "lambda"):
            for m, v in h[q].items():
                assert dyn.loc[h["epoch"], (q, m)] == v  # selected: exact
        assert dyn.loc[h["epoch"], ("valid", "all")] == h["valid"]["recall@20"]
    # lambda_m = 1 - rho_m / sum rho: two modalities' lambdas sum to 1 up to float64 rounding
    np.testing.assert_allclose(dyn["lambda"].sum(axis=1), 1.0, rtol=1e-12)


# -- another thread count, another CPU kernel family: within float32 tolerances --------------------

#: The runs retrained on two threads (a subset: two threads on a shared two-core machine are slow).
TWO_THREADS = ("none", "ogm", "ckd")


def test_two_threads_agree_within_float32_tolerances(runs, data, tmp_path):
    ref = reference(runs, data)
    configs = [(label, c) for label, c in repeated_configs(data) if label in TWO_THREADS]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _, results = train([c for _, c in configs], data, tmp_path)  # the thread count is part of the cache key
    finally:
        torch.set_num_threads(before)
    for (label, _), result in zip(configs, results):
        assert result.provenance.get("threads") in (2, None)
        compare(numbers(result), numbers(ref[label]), f"{label}, 2 threads")


KERNEL_VARS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


def test_other_cpu_kernels_agree_within_float32_tolerances(runs, data, tmp_path):
    """The same runs where torch and MKL use their other kernels: another CPU's rounding, on this one."""
    env = dict(os.environ)
    if all(env.get(k) == v for k, v in KERNEL_VARS.items()):  # this process already runs the plain kernels
        for k in KERNEL_VARS:
            env.pop(k)
    else:
        env.update(KERNEL_VARS)
    env["CKDLAB_CACHE"] = str(tmp_path / "cache")
    out = tmp_path / "numbers.json"
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    other = json.loads(out.read_text())
    assert other["threads"] == torch.get_num_threads()
    ref = reference(runs, data)
    assert set(other["numbers"]) == set(ref)
    for label, result in ref.items():
        compare(other["numbers"][label], numbers(result), f"{label}, {other['capability']} kernels")


def _main(path: str) -> None:
    torch.set_num_threads(1)  # as tests/conftest.py
    data = dataset()
    cache = os.environ["CKDLAB_CACHE"]
    _, results = train([c for _, c in repeated_configs(data)], data, cache)
    payload = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
               "numbers": {label: numbers(r) for (label, _), r in zip(repeated_configs(data), results)}}
    Path(path).write_text(json.dumps(payload))


if __name__ == "__main__":
    _main(sys.argv[1])
