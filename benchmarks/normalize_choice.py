"""Which feature normalisation should the loader apply by default? Decided on validation only.

For each dataset, backbone and normalisation (none, standardize, l2) one run is
trained with fixed per-dataset settings (the learning rate and L2 weight VBPR's
validation search chose on that dataset), early stopping on validation
Recall@20, ``evaluate_test=False``: the test split is never read. Results are
cached (``--cache-dir``), so re-running only prints. Usage::

    OMP_NUM_THREADS=1 python benchmarks/normalize_choice.py --datasets tiktok --backbones VBPR,DeepStyle,MGCN
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ckdlab.config import TrainConfig
from ckdlab.experiments import load_dataset, run
from ckdlab.provenance import describe, run_provenance

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NORMALIZATIONS = (None, "standardize", "l2")
#: lr, L2 per dataset: VBPR's validation choices (README, "Reference recommenders and VBPR on real data").
SETTINGS = {"tiktok": {"lr": 5e-3, "reg_weight": 1e-2}, "baby": {"lr": 1e-3, "reg_weight": 1e-3}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--datasets", default="tiktok,baby")
    p.add_argument("--backbones", default="VBPR,DeepStyle")
    p.add_argument("--max-epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args()
    rows = []
    for name in args.datasets.split(","):
        settings = SETTINGS.get(name, {})
        for backbone in args.backbones.split(","):
            for normalize in NORMALIZATIONS:
                data = load_dataset(SHARED / name, normalize=normalize)
                cfg = TrainConfig(backbone=backbone, max_epochs=args.max_epochs, seed=args.seed, progress=False,
                                  eval_by_modality=False, evaluate_test=False, **settings)
                t0 = time.perf_counter()
                result = run(cfg, data, cache_dir=args.cache_dir)
                rows.append((name, backbone, normalize or "none", result.valid["recall@20"],
                             result.valid["ndcg@20"], result.best_epoch, result.epochs_run))
                print(f"{name} {backbone} {normalize}: valid R@20 {result.valid['recall@20']:.4f} "
                      f"(epoch {result.best_epoch}/{result.epochs_run}, {time.perf_counter() - t0:.0f}s)", flush=True)
    print(f"\n{describe(run_provenance('cpu'))}\n")
    print("| dataset | backbone | normalize | valid R@20 | valid NDCG@20 | best epoch / run |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.4f} | {r[4]:.4f} | {r[5]} / {r[6]} |")


if __name__ == "__main__":
    main()
