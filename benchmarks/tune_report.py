"""The README's tuning table from ``benchmarks/tune_methods.py --out`` files (nothing typed by hand).

One row per (backbone, method): trials counted and epochs spent of the budget, the chosen
settings, validation Recall@20 of the choice, test Recall@20 / NDCG@20 of its final run(s),
and the search's wall time. Usage::

    python benchmarks/tune_report.py tune_tiktok_vbpr.json tune_tiktok_mgcn.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def rows(path: Path):
    data = json.loads(path.read_text())
    walls = data.pop("wall_s", {})
    for method, search in data.items():
        best, budget, spent = search["best"], search["budget"], search["spent"]
        backbone = best["config"]["backbone"] if best else "?"
        test = [f["test"] for f in search["final"]]
        settings = ", ".join(f"{k.split('.')[-1]} {v:g}" if isinstance(v, float) else f"{k.split('.')[-1]} {v}"
                             for k, v in (best["params"] if best else {}).items())
        yield (backbone, method, f"{spent['trials']} / {budget['trials']}",
               f"{spent['epochs']} / {budget['trials'] * budget['epochs_per_trial']}", settings,
               f"{best['value']:.4f}" if best else "-",
               f"{np.mean([t['recall@20'] for t in test]):.4f}" if test else "-",
               f"{np.mean([t['ndcg@20'] for t in test]):.4f}" if test else "-",
               f"{walls.get(method, float('nan')) / 60:.1f}")


def main(paths) -> None:
    print("| backbone | method | trials | epochs spent / budget | chosen | valid R@20 | test R@20 | test NDCG@20 "
          "| wall min |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        for row in rows(Path(path)):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
