"""Which training defaults should a dataset without tuned settings get? Decided on validation only.

For each dataset and backbone, every candidate (learning rate, L2 weight) is
trained with the package's other defaults (up to 200 epochs, early stopping on
validation Recall@20 with patience 10, the loader's default feature
normalisation) and ``evaluate_test=False``: the test split is never read. The
table lists each candidate's validation Recall@20 next to popularity's; the
candidate with the best mean ratio to popularity over all (dataset, backbone)
pairs is the default. A backbone that stays below popularity on validation of either dataset with
that default gets its own learning rate (``Backbone.default_lr``), chosen the same way over both
datasets from the paper's grid (``--candidates``). Results are cached, so re-running only prints.
Usage::

    OMP_NUM_THREADS=1 python benchmarks/defaults_choice.py --datasets tiktok --backbones DeepStyle,MMGCN
    OMP_NUM_THREADS=1 python benchmarks/defaults_choice.py --backbones MMGCN --candidates 1e-4:1e-2,5e-4:1e-2
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ckdlab.config import TrainConfig
from ckdlab.experiments import load_dataset, run
from ckdlab.provenance import describe, run_provenance

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CANDIDATES = ((1e-3, 1e-2), (1e-3, 1e-3))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--datasets", default="tiktok,baby")
    p.add_argument("--backbones", default="VBPR,DeepStyle,MMGCN,GRCN,EgoGCN,MGCN")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--candidates", default=None,
                   help="lr:L2 pairs, comma-separated (default: the pairs the global default was chosen from)")
    args = p.parse_args()
    candidates = CANDIDATES if args.candidates is None else tuple(
        tuple(float(v) for v in pair.split(":")) for pair in args.candidates.split(","))
    rows = []
    for name in args.datasets.split(","):
        data = load_dataset(SHARED / name)
        pop = run(TrainConfig(backbone="Pop", evaluate_test=False, progress=False), data).valid["recall@20"]
        for backbone in args.backbones.split(","):
            for lr, reg in candidates:
                cfg = TrainConfig(backbone=backbone, lr=lr, reg_weight=reg, seed=args.seed, evaluate_test=False,
                                  progress=False)
                t0 = time.perf_counter()
                r = run(cfg, data)
                rows.append((name, backbone, lr, reg, r.valid["recall@20"], pop, r.best_epoch, r.epochs_run))
                print(f"{name} {backbone} lr={lr} L2={reg}: valid R@20 {r.valid['recall@20']:.4f} (Pop {pop:.4f}; "
                      f"epoch {r.best_epoch}/{r.epochs_run}, {time.perf_counter() - t0:.0f}s)", flush=True)
    print(f"\n{describe(run_provenance('cpu'))}\n")
    print("| dataset | backbone | lr | L2 | valid R@20 | / Pop | best epoch / run |")
    print("|---|---|---|---|---|---|---|")
    for d, b, lr, reg, v, pop, be, er in rows:
        print(f"| {d} | {b} | {lr:g} | {reg:g} | {v:.4f} | {v / pop:.2f} | {be} / {er} |")
    for lr, reg in candidates:
        ratios = [v / pop for _, _, l, r, v, pop, _, _ in rows if (l, r) == (lr, reg)]
        print(f"lr {lr:g}, L2 {reg:g}: mean valid R@20 / Pop {np.mean(ratios):.3f} over {len(ratios)} pairs, "
              f"below Pop in {sum(x < 1 for x in ratios)}")


if __name__ == "__main__":
    main()
