"""CKD's Table 1 improvement over the plain backbone from committed run records, before a report exists.

Reads ``reports/<dataset>/runs/`` (no training), keeps every backbone with all four methods on the
same seeds, and prints what the report's Table 1 will show for them: mean test metrics per method,
CKD's relative improvement with its 95% interval, the paired t-test and Holm's correction across
the backbones listed (so the corrected p-values change when more backbones join the family).

    python benchmarks/table1_preview.py reports/tiktok/runs
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ckdlab import records
from ckdlab.tables import improvement

METHODS = ("none", "gb", "ogm", "ckd")
#: CKD parameters only Table 3's variants set
TABLE3_KEYS = ("specific", "generic", "reweight")


def record_rows(folder: Path) -> pd.DataFrame:
    """One row per finished run recorded in ``folder`` (read and checked by :mod:`ckdlab.records`)."""
    rows = []
    for key in records.result_keys(folder):
        result = records.read_result(folder, key)
        config = result.config
        row = {"record_key": key, "dataset": folder.parent.name, "backbone": config["backbone"],
               "method": config["method"],
               "seed": config["seed"], "ablate": tuple(config.get("ablate") or ()),
               "method_params": json.dumps(config.get("method_params") or {}, sort_keys=True),
               "eval_by_modality": bool(config.get("eval_by_modality")),
               "capped": result.epochs_run >= config["max_epochs"],
               "commit": (result.provenance or {}).get("git_commit", "")[:7]}
        row.update({f"test_{k}": v for k, v in result.test.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def table1_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Table 1's runs: no ablation (teachers, the pilot's uni-modal runs) and none of Table 3's CKD
    variants, one per (backbone, method, seed)."""
    table = frame[frame["ablate"] == ()]
    variant = table["method_params"].map(lambda text: any(k in json.loads(text) for k in TABLE3_KEYS))
    table = table[~variant]
    keys = ["backbone", "method", "seed"]
    # a run without curves is the table's own; one with curves (dynamics; the quick start's, which may
    # have another epoch cap) stands in only where the table has none
    plain = table[~table["eval_by_modality"]]
    disagree = plain.groupby(keys)["test_recall@20"].nunique() > 1
    if disagree.any():  # two different runs would claim the same cell
        raise ValueError(f"records with different results for the same Table 1 cell: {list(disagree[disagree].index)}")
    return table.sort_values("eval_by_modality", kind="stable").drop_duplicates(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="a report's runs/ folder")
    args = parser.parse_args()
    frame = record_rows(args.runs)
    table = table1_runs(frame)
    seeds = table.groupby(["backbone", "method"])["seed"].apply(frozenset)
    complete = [b for b in table["backbone"].unique()
                if all((b, m) in seeds.index for m in METHODS) and len({seeds[(b, m)] for m in METHODS}) == 1]
    table = table[table["backbone"].isin(complete)]
    means = table.groupby(["backbone", "method"])[["test_recall@20", "test_ndcg@20"]].mean().unstack("method")
    print(f"records: {len(frame)}; backbones with all four methods on the same seeds: {complete}")
    print("commits that made them:", sorted(table["commit"].unique()))
    print("runs that reached their epoch cap:",
          table[table["capped"]].groupby(["backbone", "method"]).size().to_dict() or "none")
    print("\nmean test metrics over seeds")
    print(means.round(4).to_string())
    imp = improvement(table, metrics=("recall@20", "ndcg@20"))
    cols = ["baseline_mean", "treatment_mean", "improv_pct", "ci_low_pct", "ci_high_pct", "p_value", "p_holm",
            "n_pairs"]
    print("\nCKD vs the plain backbone (Holm across the backbones above, per metric)")
    print(imp[cols].round(4).to_string())


if __name__ == "__main__":
    main()
