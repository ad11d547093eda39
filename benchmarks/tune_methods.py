"""Tune one backbone under every balancing method with one budget, and ship the choices.

The plain backbone is searched first; CKD's uni-modal teachers are then fixed
to the plain search's choice (learning rate, L2, backbone hyperparameters,
epoch cap), so every CKD trial distils from the same teachers and the search
budget goes to the student's settings (lambda_kd, lambda_g and the shared
grids). Every method gets the same trials, epoch budget, sampler and pruner;
the test split is read once, by each chosen configuration's final run.
Usage::

    OMP_NUM_THREADS=1 python benchmarks/tune_methods.py --data ../shared/data/tiktok --backbone VBPR \\
        --normalize standardize --trials 16 --epochs-budget 27 --ship ckdlab/tuned_settings.json
"""
from __future__ import annotations

import argparse
import json
import time

from ckdlab.config import TrainConfig
from ckdlab.data import default_normalization, normalize_dataset, parse_normalize
from ckdlab.experiments import load_dataset
from ckdlab.provenance import describe, run_provenance
from ckdlab.search_space import search_space
from ckdlab.shipping import ship
from ckdlab.tuning import comparison_frame, tune


def teacher_settings(plain) -> dict:
    """CKD's teacher overrides: the plain search's chosen lr, L2, backbone hyperparameters and epoch cap."""
    chosen = TrainConfig.from_dict(plain.best["config"])
    return {"lr": chosen.lr, "reg_weight": chosen.reg_weight, "max_epochs": chosen.max_epochs,
            "backbone_params": dict(chosen.backbone_params)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--backbone", required=True)
    p.add_argument("--methods", default="none,gb,ogm,ckd")
    p.add_argument("--normalize", default=None, help="none, standardize, l2 (default: the loader's)")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs-budget", type=int, default=27)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--ship", default=None, help="tuned-settings table to record the choices in")
    p.add_argument("--out", default=None, help="write every search as JSON here")
    args = p.parse_args()
    raw = load_dataset(args.data, normalize=None)
    data = normalize_dataset(raw, parse_normalize(args.normalize) if args.normalize is not None
                             else default_normalization(args.data))
    results, walls = {}, {}
    for method in ["none"] + [m for m in args.methods.split(",") if m != "none"]:
        base, space = TrainConfig(), None
        if method == "ckd":
            teacher = teacher_settings(results["none"])
            base = TrainConfig(method_params={"teacher": teacher})
            space = search_space(args.backbone, "ckd", max_epochs=args.epochs_budget)
        t0 = time.perf_counter()
        results[method] = tune(data, args.backbone, method, trials=args.trials, epochs_budget=args.epochs_budget,
                               seeds=args.seeds, base=base, space=space, progress=False)
        walls[method] = time.perf_counter() - t0
        print(results[method].summary(), f"\nwall time {walls[method]:.0f} s\n", flush=True)
        if args.ship:
            print(ship(results[method], raw, data, args.ship).describe() + "\n", flush=True)
    frame = comparison_frame(results)
    frame["wall_s"] = [round(walls[m]) for m in frame["method"]]
    print(f"{args.backbone} on {data.name}: every method with the same budget")
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(describe(run_provenance("cpu")))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({m: r.to_dict() for m, r in results.items()} | {"wall_s": walls}, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
