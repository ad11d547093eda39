"""``ckdlab tune``: the command line of :func:`ckdlab.tuning.tune`.

Examples::

    ckdlab tune --data ../shared/data/tiktok --backbone VBPR --method ckd --trials 30 --epochs-budget 50 --seeds 0 1 2
    ckdlab tune ... --storage postgresql://user@db/ckdlab    # one study shared by several workers
    optuna-dashboard sqlite:///$HOME/.cache/ckdlab/studies/<study>.db

Optuna is imported only when the command runs (it is the optional ``tune`` extra).
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .config import TrainConfig

CACHE_HELP = "cache folder (default $CKDLAB_CACHE or ~/.cache/ckdlab); studies go to <cache>/studies/"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--data", default="synthetic", help="dataset folder (MMRec or LATTICE layout) or 'synthetic'")
    parser.add_argument("--backbone", default="VBPR", help="backbone name, case-insensitive")
    parser.add_argument("--method", nargs="+", default=["none"], metavar="METHOD",
                        help="balancing method(s): none, ckd, gb, ogm; several: one search each, same budget, "
                             "then a comparison table")
    parser.add_argument("--trials", type=int, default=20, help="trials per search, the same for every method (default 20)")
    parser.add_argument("--epochs-budget", type=int, default=50,
                        help="max epochs of every trial and of the final runs (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the trials and of the sampler")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds of the final runs of the chosen settings (default: --seed)")
    parser.add_argument("--sampler", default="auto", choices=("auto", "tpe", "grid", "random"),
                        help="auto (default): the full grid when --trials covers it, else TPE")
    parser.add_argument("--pruner", default="hyperband", choices=("hyperband", "halving", "median", "none"))
    parser.add_argument("--min-epochs", type=int, default=None,
                        help="no trial is pruned before this epoch (default: a ninth of --epochs-budget, at least 1)")
    parser.add_argument("--storage", default=None,
                        help="SQLAlchemy URL of the study (default sqlite under <cache>/studies/)")
    parser.add_argument("--study", default=None, help="study name (default: from data, backbone, method, budget)")
    parser.add_argument("--normalize", default=None, metavar="SPEC",
                        help="feature normalisation: none, standardize, l2, or image=standardize,text=l2 "
                             "(default: the loader's, standardize for a folder)")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE",
                        help="fixed setting of every trial (batch_size=1024, patience=5, backbone.n_layers=3); "
                             "a searched parameter set here is no longer searched")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per trial (default $CKDLAB_THREADS, else 1: run one search "
                             "process per core on the same study)")
    parser.add_argument("--cache-dir", default=None, help=CACHE_HELP)
    parser.add_argument("--out", default=None, help="write the search as JSON here (default <cache>/studies/<study>.json)")
    parser.add_argument("--no-final", action="store_true", help="search only; do not train the choice on the test seeds")
    parser.add_argument("--ship", nargs="?", const="", default=None, metavar="TABLE",
                        help="record the chosen settings in the tuned-settings table (default: the one the package "
                             "ships), so ckdlab train, the notebooks and reports use them on this dataset; only when "
                             "they beat the package defaults on validation (else an older entry is withdrawn)")
    parser.add_argument("--show-space", action="store_true", help="print the search space and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def searched_space(args, method: str) -> dict:
    """The table's space for the backbone and ``method``, less the parameters fixed with ``--set``."""
    from .config import parse_setting
    from .search_space import search_space

    fixed = {parse_setting(item)[0] for item in args.set or []}
    return {k: v for k, v in search_space(args.backbone, method, max_epochs=args.epochs_budget).items()
            if k not in fixed}


def cmd_tune(args) -> int:
    """Run (or resume) a search; exit 130/143 when interrupted (run it again to resume)."""
    from .search_space import grid_size

    if args.show_space:
        for method in args.method:
            space = searched_space(args, method)
            print(f"{args.backbone} + {method}: {grid_size(space)} grid points")
            for name, values in space.items():
                print(f"  {name:<24} {list(values)}")
        return 0
    if len(args.method) > 1 and (args.study or args.out):
        raise ValueError("--study and --out name one search; leave them out with several methods")
    from .data import parse_normalize
    from .experiments import load_dataset
    from .studies import study_path
    from .tuning import comparison_frame, tune

    from .threads import available_cpus, use_threads

    use_threads(args.threads, concurrent_runs=available_cpus())  # one thread per trial unless told
    base = TrainConfig().with_settings(args.set or [])
    from .data import default_normalization, normalize_dataset

    raw = load_dataset(args.data, normalize=None)
    given = parse_normalize(args.normalize) if args.normalize is not None else default_normalization(args.data)
    data = normalize_dataset(raw, given)
    results = {}
    for method in args.method:
        try:
            result = tune(data, args.backbone, method, trials=args.trials, epochs_budget=args.epochs_budget,
                          seed=args.seed, seeds=args.seeds, storage=args.storage, study_name=args.study,
                          sampler=args.sampler, pruner=args.pruner, min_epochs=args.min_epochs,
                          space=searched_space(args, method), base=base,
                          cache_dir=args.cache_dir, device=args.device, final=not args.no_final,
                          progress=not args.quiet)
        except KeyboardInterrupt as exc:  # TrainingInterrupted (state saved) or a second Ctrl-C
            print(f"{exc or 'interrupted'}; the study is saved: run the same command again to resume",
                  file=sys.stderr)
            return 128 + int(getattr(exc, "signum", None) or signal.SIGINT)
        print(result.summary())
        out = Path(args.out) if args.out else study_path(result.study_name, args.cache_dir).with_suffix(".json")
        print(f"search written to {result.to_json(out)}")
        print(f"dashboard: optuna-dashboard {result.storage}\n")
        if args.ship is not None:
            from .shipping import ship

            decision = ship(result, raw, data, args.ship or None, cache_dir=args.cache_dir, device=args.device)
            print(decision.describe() + "\n")
        results[method] = result
    if len(results) > 1:
        print(f"{args.backbone} on {data.name}: every method with the same budget")
        print(comparison_frame(results).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0
