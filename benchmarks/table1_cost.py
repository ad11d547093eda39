"""What one seed of a report's Table 1 costs in CPU-hours, at this tree and at another revision.

Table 1 has six backbones x four methods. The committed records of one seed give how long each
of those runs was: the epochs it trained (early stopping) and the evaluations it made, and for
CKD the epochs of its two teachers. This script measures what one training epoch and one
evaluation cost for every (backbone, method) at both revisions, in one run, alternating the two
(``ckdlab.train.fit`` for a few epochs in a subprocess per revision, one thread, teachers of one
epoch), and prices the recorded runs with those figures:

    cost = epochs x train seconds per epoch + evaluations x seconds per evaluation
           (+ for CKD: teacher epochs x the plain backbone's epoch and evaluation)

Both sides are priced on the same run lengths, so the ratio is the code's. The recorded wall
time of the runs themselves (made by several commits, under whatever load the grid had) is
printed beside it.

    python benchmarks/table1_cost.py reports/tiktok/runs --data ../shared/data/tiktok --against 39dc663
    python benchmarks/table1_cost.py reports/tiktok/runs --timings benchmarks/results/table1_cost_timings.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from table1_preview import record_rows, table1_runs  # noqa: E402 - this folder is on sys.path

from ckdlab import records
from ckdlab.bench_compare import checkout

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = ("VBPR", "DeepStyle", "MMGCN", "GRCN", "EgoGCN", "MGCN")
METHODS = ("none", "gb", "ogm", "ckd")

# Runs inside the measured revision (its own ckdlab on PYTHONPATH): a few epochs, no early stop.
_TIMER = """
import dataclasses, json, sys, tempfile, warnings
import torch
torch.set_num_threads(1)
warnings.simplefilter("ignore")
from ckdlab.config import TrainConfig
from ckdlab.data import load
from ckdlab.train import fit
data, wanted = sys.argv[1], json.loads(sys.argv[2])
known = {f.name for f in dataclasses.fields(TrainConfig)}
config = {k: v for k, v in wanted.items() if k in known}
with tempfile.TemporaryDirectory() as cache:
    result = fit(load(data), TrainConfig(**config), cache_dir=cache)
print(json.dumps({"train_seconds_per_epoch": result.timing["train_seconds_per_epoch"],
                  "eval_seconds": result.timing["eval_seconds"]}))
"""


def cell_runs(folder: Path, seed: int) -> pd.DataFrame:
    """The seed's Table 1 runs with their lengths: epochs, evaluations, teachers' epochs, recorded seconds."""
    table = table1_runs(record_rows(folder))
    table = table[(table["seed"] == seed) & table["backbone"].isin(BACKBONES) & table["method"].isin(METHODS)]
    rows = []
    for _, cell in table.iterrows():
        result = records.read_result(folder, cell["record_key"])
        config, timing = result.config, result.timing
        evaluations = records.evaluations(result.epochs_run, config.get("eval_every"))
        teacher_epochs, teacher_seconds = 0, 0.0
        for teacher in (result.extras.get("teachers") or {}).values():
            cost = teacher.get("cost")
            if cost:  # teachers trained since they keep their cost
                teacher_epochs += cost["epochs_run"]
                teacher_seconds += records.teacher_seconds(cost)
            else:  # early stopping ran `patience` epochs past the best one, up to the teacher's cap
                cap = (config.get("method_params", {}).get("teacher") or {}).get("max_epochs", config["max_epochs"])
                teacher_epochs += min(teacher["best_epoch"] + config["patience"], cap)
        rows.append({"record_key": cell["record_key"], "backbone": cell["backbone"], "method": cell["method"],
                     "epochs": result.epochs_run,
                     "evaluations": evaluations, "teacher_epochs": teacher_epochs,
                     "recorded_seconds": timing["total_train_seconds"] + timing["eval_seconds"] * evaluations
                     + teacher_seconds, "config": config})
    return pd.DataFrame(rows)


def _timer_config(config: dict, epochs: int) -> dict:
    params = dict(config.get("method_params") or {})
    if config["method"] == "ckd":
        params["teacher"] = {**(params.get("teacher") or {}), "max_epochs": 1}
    return {**config, "max_epochs": epochs, "patience": epochs + 10, "eval_every": 1, "method_params": params,
            "progress": False, "device": "cpu", "eval_by_modality": False, "seed": 0}


def measure(tree: Path, data: str, config: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _TIMER, data, json.dumps(config)], env=env, cwd=tree,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"timing {config['backbone']}/{config['method']} in {tree.name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_all(cells: pd.DataFrame, data: str, against: str, epochs: int, timings: dict | None = None) -> dict:
    """Per (backbone, method): this tree's and ``against``'s epoch and evaluation seconds, alternately
    (only the cells ``timings`` does not have yet)."""
    timings = timings or {"against": None, "epochs": epochs, "cells": {}}
    todo = cells[[f"{b}/{m}" not in timings["cells"] for b, m in zip(cells["backbone"], cells["method"])]]
    if todo.empty:
        return timings
    with checkout(timings["against"] or against) as (folder, commit):
        timings["against"] = commit
        for i, (_, cell) in enumerate(todo.iterrows()):
            config = _timer_config(cell["config"], epochs)
            sides = [("this", ROOT), ("against", folder)]
            pair = {}
            for side, tree in (sides if i % 2 == 0 else sides[::-1]):
                pair[side] = measure(tree, data, config)
            timings["cells"][f"{cell['backbone']}/{cell['method']}"] = pair
            print(f"  {cell['backbone']}/{cell['method']}: this {pair['this']['train_seconds_per_epoch']:.2f} s/epoch, "
                  f"{against} {pair['against']['train_seconds_per_epoch']:.2f}", flush=True)
    return timings


def price(cells: pd.DataFrame, timings: dict) -> pd.DataFrame:
    rows = []
    for _, cell in cells.iterrows():
        pair = timings["cells"][f"{cell['backbone']}/{cell['method']}"]
        plain = timings["cells"].get(f"{cell['backbone']}/none", pair)
        row = {k: cell[k] for k in ("backbone", "method", "epochs", "evaluations", "teacher_epochs")}
        for side in ("this", "against"):
            t, p = pair[side], plain[side]
            row[f"{side}_seconds"] = (cell["epochs"] * t["train_seconds_per_epoch"] + cell["evaluations"] * t["eval_seconds"]
                                      + cell["teacher_epochs"] * (p["train_seconds_per_epoch"] + p["eval_seconds"]))
        row["recorded_seconds"] = cell["recorded_seconds"]
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="a report's runs/ folder")
    parser.add_argument("--data", help="the dataset folder (to measure)")
    parser.add_argument("--against", default="39dc663", help="the other revision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timing run")
    parser.add_argument("--timings", type=Path, help="timings measured earlier (JSON); with --data, the cells "
                        "it lacks are measured and added to it")
    args = parser.parse_args()
    cells = cell_runs(args.runs, args.seed)
    missing = [f"{b}/{m}" for b in BACKBONES for m in METHODS
               if not ((cells["backbone"] == b) & (cells["method"] == m)).any()]
    timings = json.loads(args.timings.read_text()) if args.timings and args.timings.exists() else None
    if args.data:
        timings = measure_all(cells, str(Path(args.data).resolve()), args.against, args.epochs, timings)
        if args.timings:
            args.timings.write_text(json.dumps(timings, indent=1))
    elif timings is None:
        parser.error("--data is needed to measure (or pass --timings with earlier measurements)")
    priced = price(cells, timings)
    against = (timings.get("against") or args.against)[:7]
    print(f"Table 1, seed {args.seed}, {args.runs.parent.name}: {len(priced)} of {len(BACKBONES) * len(METHODS)} cells"
          + (f" (no record yet: {', '.join(missing)})" if missing else ""))
    print(f"priced with per-epoch and per-evaluation seconds measured at this tree and at {against} "
          f"({timings['epochs']} epochs per timing run, one thread, alternating)\n")
    shown = priced.rename(columns={"this_seconds": "this s", "against_seconds": f"{against} s",
                                   "recorded_seconds": "recorded s"})
    print(shown.round(1).to_string(index=False))
    hours = priced[["this_seconds", "against_seconds", "recorded_seconds"]].sum() / 3600
    print(f"\nCPU-hours: this tree {hours['this_seconds']:.2f}, {against} {hours['against_seconds']:.2f} "
          f"({hours['against_seconds'] / hours['this_seconds']:.2f}x); as recorded {hours['recorded_seconds']:.2f} "
          "(teachers without a stored cost not included there)")


if __name__ == "__main__":
    main()
