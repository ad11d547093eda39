"""The ``ckdlab`` command line: train, tune, data summary, report, cache, bench."""
from __future__ import annotations

import argparse
import json
import signal
import sys

from .config import TrainConfig
from .threads import ENV as THREADS_ENV


def _metric_table(result) -> str:
    """A short plain-text table: overall and per-modality test metrics at K=20."""
    cols = ["recall@20", "ndcg@20", "precision@20"]
    channels = result.test_by_modality
    # a model that ignores the features (MF, LightGCN, Pop) scores every channel as the whole model
    ignores_features = bool(channels) and all(v == result.test for v in channels.values())
    rows = [("all modalities", result.test)] + ([] if ignores_features else
                                                [(f"{m} channel", v) for m, v in channels.items()])
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'test split':<{width}}" + "".join(f"{c:>14}" for c in cols)]
    for name, metrics in rows:
        lines.append(f"{name:<{width}}" + "".join(f"{metrics.get(c, float('nan')):>14.4f}" for c in cols))
    if ignores_features:
        lines.append("(each modality's channel scores the same: this model does not use the features)")
    valid = result.valid.get("recall@20", float("nan"))
    lines.append(f"best epoch {result.best_epoch} of {result.epochs_run}; valid recall@20 {valid:.4f}; "
                 f"{result.timing.get('train_seconds_per_epoch', 0):.2f} s/epoch on {result.timing.get('device')}")
    from .provenance import describe

    lines.append(describe(result.provenance))
    return "\n".join(lines)


def cmd_train(args) -> int:
    """Train one configuration; exit 130/143 when interrupted (state saved), 3 when it diverged."""
    from .experiments import load_dataset, run
    from .faults import TrainingDiverged, TrainingInterrupted

    from .data import default_normalization, parse_normalize
    from .threads import use_threads
    from .tuned import resolve

    use_threads(args.threads)
    config = TrainConfig(backbone=args.backbone, method=args.method, seed=args.seed, device=args.device,
                         progress=None if not args.quiet else False)
    # defaults < shipped tuned settings (and their normalisation) < --normalize / --epochs / --set
    dataset, config, tuned = resolve(load_dataset(args.data, normalize=None), config, args.normalize is not None,
                                     parse_normalize(args.normalize), default=default_normalization(args.data),
                                     use_table=not args.no_tuned)
    if tuned is not None:
        print(f"tuned settings {tuned.describe()}; --set overrides them, --no-tuned ignores them")
    if args.epochs is not None:
        config = config.replace(max_epochs=args.epochs)
    config = config.with_settings(args.set or [])
    try:
        result = run(config, dataset, cache_dir=args.cache_dir, use_cache=not args.no_cache)
    except TrainingInterrupted as exc:
        # the shell's convention for "killed by signal N": 130 for SIGINT, 143 for SIGTERM
        print(f"{exc}; run the same command again to resume" if exc.checkpoint else str(exc), file=sys.stderr)
        return 128 + int(exc.signum or signal.SIGINT)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    summary = dataset.summary()
    print(f"{config.backbone} + {config.method} on {summary['name']} "
          f"({summary['users']} users, {summary['items']} items, modalities {summary['modalities']}"
          + (f", features normalised {summary['normalization']}" if summary.get("normalization") else "") + ")"
          + ("  [cached result]" if result.extras.get("cached") else ""))
    print(_metric_table(result))
    if args.out:
        result.to_json(args.out)
        print(f"result written to {args.out}")
    return 0


def cmd_tuned(args) -> int:
    """``ckdlab tuned list``: the shipped tuned-settings table."""
    from .tuned import TABLE_PATH, load_table, table_frame

    table = load_table(args.table)
    print(f"{len(table)} tuned setting(s) in {args.table or TABLE_PATH.name} (written by ckdlab tune --ship)")
    if table:
        print(table_frame(table).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def cmd_data_summary(args) -> int:
    from .data import DataError, load

    try:
        dataset = load(args.path)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(dataset.summary(), indent=2))
    return 0


def cmd_cache(args) -> int:
    """``ckdlab cache list`` / ``ckdlab cache prune [--dry-run]``."""
    from .cache import resolve_cache_dir
    from .cache_entries import format_entries, list_entries, prune

    root = resolve_cache_dir(args.cache_dir)
    if args.cache_command == "list":
        print(f"cache folder {root}")
        print(format_entries(list_entries(root)))
        return 0
    removed = prune(root, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for entry in removed:
        print(f"{verb} {entry.kind}/{entry.name} ({entry.status})")
    print(f"{verb} {len(removed)} stale or corrupt entries ({sum(e.bytes for e in removed) / 1e6:.1f} MB) from {root}")
    return 0


def cmd_check_backbone(args) -> int:
    """Run the backbone contract (ckdlab.testing.check_backbone); exit 1 when a check fails."""
    from .config import parse_setting
    from .testing import check_backbone

    params = dict(parse_setting(item, "--param") for item in args.param or [])
    report = check_backbone(args.backbone, params=params, seed=args.seed)
    print(report)
    return 0 if report.ok else 1


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def cmd_report(args) -> int:
    from .report import cmd_report as run_report

    return run_report(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckdlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train and evaluate one backbone (+ balancing method)")
    train.add_argument("--data", default="synthetic", help="dataset folder (MMRec or LATTICE layout) or 'synthetic'")
    train.add_argument("--backbone", default="VBPR",
                       help="backbone name (case-insensitive; built-in or installed entry point), "
                            "path/to/file.py:ClassName or module:ClassName")
    train.add_argument("--method", default="none", help="balancing method: none, ckd, gb, ogm")
    train.add_argument("--epochs", type=int, default=None, help="maximum epochs (early stopping may end sooner)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="cpu, cuda or auto")
    train.add_argument("--set", action="append", metavar="NAME=VALUE",
                       help="override a setting: lr=0.005, backbone.embedding_dim=32, method.lambda_kd=0.1")
    train.add_argument("--cache-dir", default=None, help="cache folder (default $CKDLAB_CACHE or ~/.cache/ckdlab)")
    train.add_argument("--no-cache", action="store_true", help="always train, do not read or write the result cache")
    train.add_argument("--no-tuned", action="store_true",
                       help="ignore the shipped tuned settings for this dataset (ckdlab tuned list shows them)")
    train.add_argument("--normalize", default=None, metavar="SPEC",
                       help="feature normalisation: none, standardize, l2, or image=standardize,text=l2 (default: the tuned "
                            "entry's for this dataset, else the loader's: standardize for a folder)")
    train.add_argument("--out", default=None, help="write the result JSON here")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--threads", type=int, default=None,
                       help=f"torch CPU threads (default ${THREADS_ENV}, else every CPU this process may use)")
    train.set_defaults(func=cmd_train)

    from .tune_cli import add_arguments as tune_arguments, cmd_tune

    tune = sub.add_parser("tune", help="search hyperparameters on validation Recall@20 (Optuna), "
                                       "then train the choice on the test seeds")
    tune_arguments(tune)
    tune.set_defaults(func=cmd_tune)

    tuned = sub.add_parser("tuned", help="the shipped tuned settings (dataset x backbone x method)")
    tuned_sub = tuned.add_subparsers(dest="tuned_command", required=True)
    tuned_list = tuned_sub.add_parser("list", help="every entry: dataset, backbone, method, settings, origin")
    tuned_list.add_argument("--table", default=None, help="a table file other than the shipped one")
    tuned_list.set_defaults(func=cmd_tuned)

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    summary = data_sub.add_parser("summary", help="validate a dataset and print its summary")
    summary.add_argument("path", help="dataset folder or 'synthetic'")
    summary.set_defaults(func=cmd_data_summary)

    from .report import add_arguments as report_arguments

    report = sub.add_parser("report", help="execute every notebook per dataset into reports/<dataset>/ (papermill + HTML)")
    report_arguments(report)
    report.set_defaults(func=cmd_report)

    cache = sub.add_parser("cache", help="list the cache's entries or prune the stale ones")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    for name, text in (("list", "every cached result, teacher and checkpoint, current or stale"),
                       ("prune", "delete entries made by other numbers-code or torch, and corrupt ones")):
        cmd = cache_sub.add_parser(name, help=text)
        cmd.add_argument("--cache-dir", default=None, help="cache folder (default $CKDLAB_CACHE or ~/.cache/ckdlab)")
        if name == "prune":
            cmd.add_argument("--dry-run", action="store_true", help="only say what would be removed")
        cmd.set_defaults(func=cmd_cache)

    check = sub.add_parser("check-backbone", help="check that a backbone keeps the contract CKD, GB and OGM "
                                                  "rely on (tiny synthetic data, one line per check)")
    check.add_argument("backbone", help="name, path/to/file.py:ClassName or module:ClassName")
    check.add_argument("--param", action="append", metavar="NAME=VALUE",
                       help="constructor hyperparameter, e.g. embedding_dim=16")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=cmd_check_backbone)

    bench = sub.add_parser("bench", help="measure training/evaluation speed and memory")
    bench.add_argument("--data", default=None, help="dataset (default: ../shared/data/tiktok if present, else synthetic)")
    bench.add_argument("--backbones", default=None, help="comma-separated backbone names (default: all six)")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--epochs", type=int, default=2, help="timed training epochs per backbone")
    bench.add_argument("--threads", type=int, default=None,
                       help=f"torch CPU threads (default ${THREADS_ENV}, else every CPU this process may use)")
    bench.add_argument("--no-ckd", action="store_true", help="skip the CKD epoch timing")
    bench.add_argument("--against", default=None, metavar="REV",
                       help="also benchmark git revision REV (checked out to a temporary worktree), alternating "
                            "with this tree; prints the speed-ups")
    bench.add_argument("--load", type=int, default=0, metavar="N",
                       help="also measure each epoch with N CPU-bound neighbour processes running (slowdown ratio)")
    bench.add_argument("--rounds", type=int, default=1,
                       help="measurements per side, alternating; the fastest is kept (at least 2 with --against/--load)")
    bench.add_argument("--out", default=None, help="write the measurements as JSON here")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .threads import yielding_openmp

    yielding_openmp()  # before torch is imported: idle OpenMP threads yield their core (see ckdlab.threads)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    # LookupError, ImportError, FileNotFoundError: a --backbone spec that does not resolve
    except (LookupError, ValueError, TypeError, RuntimeError, ImportError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
