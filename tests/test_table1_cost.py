"""benchmarks/table1_cost.py prices one seed of Table 1 from the run lengths its records give."""
import importlib.util
import sys
from pathlib import Path

import pytest

from ckdlab import records

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "reports" / "tiktok" / "runs"


def cost_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports its neighbour table1_preview
    try:
        spec = importlib.util.spec_from_file_location("table1_cost", ROOT / "benchmarks" / "table1_cost.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.skipif(not RUNS.is_dir(), reason="needs the committed TikTok run records")
def test_pricing_uses_each_runs_epochs_evaluations_and_teachers():
    module = cost_module()
    cells = module.cell_runs(RUNS, seed=0)
    assert len(cells) and (cells["backbone"].isin(module.BACKBONES)).all()
    assert not cells.duplicated(["backbone", "method"]).any()  # one run per Table 1 cell
    # teachers belong to CKD runs only, and every CKD run has some
    assert (cells.loc[cells["method"] == "ckd", "teacher_epochs"] > 0).all()
    assert (cells.loc[cells["method"] != "ckd", "teacher_epochs"] == 0).all()
    this = {"train_seconds_per_epoch": 1.0, "eval_seconds": 0.5}
    before = {"train_seconds_per_epoch": 3.0, "eval_seconds": 0.25}
    plain = {"this": {"train_seconds_per_epoch": 0.75, "eval_seconds": 0.5},  # a teacher's epoch: the plain one
             "against": {"train_seconds_per_epoch": 2.0, "eval_seconds": 0.25}}
    timings = {"epochs": 2, "against": "x",
               "cells": {f"{b}/{m}": plain if m == "none" else {"this": this, "against": before}
                         for b, m in zip(cells["backbone"], cells["method"])}}
    priced = module.price(cells, timings)
    for (_, cell), (_, row) in zip(cells.iterrows(), priced.iterrows()):
        result = records.read_result(RUNS, cell["record_key"])
        assert result.config == cell["config"]
        evaluations = result.epochs_run + 2  # every epoch, then the final validation and the test
        side = plain if cell["method"] == "none" else {"this": this, "against": before}
        for name in ("this", "against"):
            expected = (result.epochs_run * side[name]["train_seconds_per_epoch"]
                        + evaluations * side[name]["eval_seconds"]
                        + cell["teacher_epochs"] * sum(plain[name].values()))
            assert row[f"{name}_seconds"] == pytest.approx(expected)
