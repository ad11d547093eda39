"""Table-1-style comparison on real data: backbone alone, +GB, +OGM, +CKD over seeds.

CKD's lambda_kd is chosen on the *validation* split (seed 0) from ``--lambda-kd``;
every other setting is shared by all methods. Results are cached, so re-running
only prints. Usage::

    python benchmarks/balance_table.py --data ../shared/data/tiktok --backbone VBPR --lr 1e-3 --reg 1e-3
"""
from __future__ import annotations

import argparse
import platform

import numpy as np
import torch
from scipy import stats

from ckdlab.config import TrainConfig
from ckdlab.experiments import load_dataset, run

METHODS = ("none", "gb", "ogm", "ckd")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--backbone", required=True)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--reg", type=float, default=1e-4)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--lambda-kd", default="0.01,0.1")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    base = TrainConfig(backbone=args.backbone, lr=args.lr, reg_weight=args.reg, max_epochs=args.max_epochs,
                       progress=False, eval_by_modality=False)

    def cfg(method, seed, **params):
        return base.replace(method=method, seed=seed, method_params=params)

    # lambda_kd on validation, seed 0
    choices = []
    for lam in (float(x) for x in args.lambda_kd.split(",")):
        r = run(cfg("ckd", seeds[0], lambda_kd=lam), dataset, cache_dir=args.cache_dir)
        print(f"ckd lambda_kd={lam}: valid R@20 {r.valid['recall@20']:.4f}", flush=True)
        choices.append((r.valid["recall@20"], lam))
    lambda_kd = max(choices)[1]

    results = {}
    for method in METHODS:
        params = {"lambda_kd": lambda_kd} if method == "ckd" else {}
        results[method] = [run(cfg(method, s, **params), dataset, cache_dir=args.cache_dir) for s in seeds]
        for s, r in zip(seeds, results[method]):
            print(f"{method} seed {s}: test R@20 {r.test['recall@20']:.4f} (best epoch {r.best_epoch})", flush=True)

    lines = [f"{args.backbone} on {dataset.name}: lr {args.lr}, L2 {args.reg}, seeds {seeds}, CKD lambda_kd "
             f"{lambda_kd} (chosen on validation), {platform.machine()} CPU, {args.threads} torch thread(s).", "",
             "| method | test R@20 | test NDCG@20 | p (R@20 vs backbone, paired t) | epochs | s/epoch |",
             "|---|---|---|---|---|---|"]
    none_r = np.array([r.test["recall@20"] for r in results["none"]])
    for method in METHODS:
        rs = results[method]
        rec = np.array([r.test["recall@20"] for r in rs])
        ndcg = np.array([r.test["ndcg@20"] for r in rs])
        pval = "-" if method == "none" or len(rs) < 2 else f"{stats.ttest_rel(rec, none_r).pvalue:.3f}"
        lines.append(f"| {args.backbone}{'' if method == 'none' else ' + ' + method.upper()} | "
                     f"{rec.mean():.4f} ± {rec.std(ddof=1) if len(rs) > 1 else 0:.4f} | "
                     f"{ndcg.mean():.4f} ± {ndcg.std(ddof=1) if len(rs) > 1 else 0:.4f} | {pval} | "
                     f"{np.mean([r.best_epoch for r in rs]):.0f} | "
                     f"{np.mean([r.timing['train_seconds_per_epoch'] for r in rs]):.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(table + "\n\n")


if __name__ == "__main__":
    main()
