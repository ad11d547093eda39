"""``ckdlab bench``: training/evaluation speed and memory, reported as ratios from one run.

Each backbone is measured in its own subprocess so that its peak memory (resident
set size on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) is its own. Ratios:

- ``eval_over_floor``: one full evaluation (``ckdlab.evaluate``) over the bare floor,
  ``user_reps @ item_reps.T`` plus top-k for the same users (target <= 1.5);
- ``sampling_over_epoch``: sampling one epoch of BPR triples over one training
  epoch of VBPR (target <= 0.1);
- ``epoch_over_vbpr``: a backbone's training epoch over VBPR's, same run;
- ``ckd_over_plain``: a CKD training epoch over the plain backbone's (teachers
  excluded: trained untimed for one epoch and read from a temporary cache);
  targets: <= 2.5 for VBPR and DeepStyle, <= M + 1.5 for the others.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

DEFAULT_BACKBONES = ("VBPR", "DeepStyle", "MMGCN", "GRCN", "EgoGCN", "MGCN")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
SHARED_TIKTOK = PACKAGE_ROOT.parent / "shared" / "data" / "tiktok"


def _default_data() -> str:
    return str(SHARED_TIKTOK) if SHARED_TIKTOK.is_dir() else "synthetic"


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _best_of(fn, repeats: int = 3) -> float:
    return min(_seconds(fn) for _ in range(repeats))


def _epoch_timer(dataset, model, inputs, method_name: str, method_params: dict, config, dev, cache_dir):
    """A function running one training epoch of ``model`` under a balancing method."""
    from .balance import TrainContext, build_method
    from .data import BPRSampler
    from .train import make_optimizer, train_epoch, training_runner

    method = build_method(method_name, **method_params)
    method.setup(TrainContext(dataset, config, dev, cache_dir, inputs, train_run=training_runner(cache_dir)), model)
    sampler = BPRSampler(method.training_matrix(dataset), seed=0)
    optimizer = make_optimizer(model, config.lr)

    def one_epoch():
        train_epoch(model, method, inputs, sampler, optimizer, config.batch_size, dev)

    one_epoch()  # warm-up (allocator, lazy caches)
    return one_epoch, sampler


def measure_backbone(data: str, backbone: str, device: str, epochs: int, ckd: bool = True) -> dict:
    """Time training epochs (plain and, with ``ckd``, under CKD), one full evaluation and its floor."""
    import tempfile

    from .backbones import build_backbone
    from .config import TrainConfig
    from .data import load
    from .evaluate import evaluate, representations
    from .modality import ModalityInputs
    from .train import resolve_device, seed_everything

    dataset = load(data)
    dev = resolve_device(device)
    seed_everything(0)
    config = TrainConfig(backbone=backbone, device=str(dev), progress=False)
    model = build_backbone(backbone, dataset).to(dev)
    inputs = ModalityInputs.from_dataset(dataset, dev)
    with tempfile.TemporaryDirectory() as cache_dir:
        plain_epoch, sampler = _epoch_timer(dataset, model, inputs, "none", {}, config, dev, cache_dir)
        sampling_seconds = _best_of(lambda: [None for _ in sampler.epoch(config.batch_size)])
        ckd_epoch = None
        if ckd and len(dataset.modalities) > 1:
            # teachers (1 epoch each, untimed) come from the cache during the timed epochs
            ckd_epoch, _ = _epoch_timer(dataset, model, inputs, "ckd", {"teacher": {"max_epochs": 1}},
                                        config, dev, cache_dir)
        # plain and CKD epochs alternate, so a change in machine load hits both alike
        plain_times, ckd_times = [], []
        for _ in range(epochs):
            plain_times.append(_seconds(plain_epoch))
            if ckd_epoch is not None:
                ckd_times.append(_seconds(ckd_epoch))
        epoch_seconds = min(plain_times)
        ckd_seconds = min(ckd_times) if ckd_times else float("nan")

    users = dataset.eval_users("test")
    eval_seconds = _best_of(lambda: evaluate(model, inputs, dataset, "test"))
    user_reps, item_reps = representations(model, inputs)
    forward_seconds = _best_of(lambda: representations(model, inputs))
    idx = torch.as_tensor(users, device=dev)

    def floor():
        for start in range(0, len(users), 2048):
            torch.topk(user_reps[idx[start:start + 2048]] @ item_reps.T, min(50, item_reps.shape[0]), dim=1)

    floor_seconds = _best_of(floor) + forward_seconds
    step_seconds = epoch_seconds / max(1, sampler.n_batches(config.batch_size))
    floor_step_seconds = None
    if backbone.lower() == "vbpr":
        from .bench_floor import vbpr_floor_step_seconds

        floor_step_seconds = vbpr_floor_step_seconds(dataset, dev, batch_size=config.batch_size,
                                                     reg_weight=config.reg_weight)
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"backbone": backbone, "epoch_seconds": epoch_seconds, "ckd_epoch_seconds": ckd_seconds,
            "sampling_seconds": sampling_seconds, "eval_seconds": eval_seconds, "floor_seconds": floor_seconds,
            "step_seconds": step_seconds, "floor_step_seconds": floor_step_seconds,
            "eval_users": int(len(users)), "peak_memory_mb": peak_mb,
            "parameters": sum(p.numel() for p in model.parameters())}


#: Keys of a measurement that are timings (the minimum over rounds is kept).
_TIMINGS = ("epoch_seconds", "ckd_epoch_seconds", "sampling_seconds", "eval_seconds", "floor_seconds",
            "step_seconds", "floor_step_seconds")


def _measure(name: str, data: str, device: str, epochs: int, threads: int | None, ckd: bool,
             checkout: Path | None = None) -> dict:
    """One ``ckdlab.bench --one`` subprocess: of the working tree, or of another revision's ``checkout``."""
    cmd = [sys.executable, "-m", "ckdlab.bench", "--one", name, "--data", data, "--device", device,
           "--epochs", str(epochs)] + (["--threads", str(threads)] if threads else []) + ([] if ckd else ["--no-ckd"])
    env = dict(os.environ)
    if checkout is not None:  # its ckdlab first on the path (python -m also puts the cwd first)
        env["PYTHONPATH"] = os.pathsep.join([str(checkout), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=checkout or PACKAGE_ROOT)
    if out.returncode != 0:
        where = f" at {checkout.name}" if checkout is not None else ""
        raise RuntimeError(f"benchmark of {name}{where} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fastest(runs: list[dict]) -> dict:
    """The first run with each timing replaced by its minimum over ``runs``."""
    row = dict(runs[0])
    for key in _TIMINGS:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and r[key] == r[key]]
        if values:
            row[key] = min(values)
    return row


def run_bench(data: str | None = None, backbones=DEFAULT_BACKBONES, device: str = "auto", epochs: int = 2,
              threads: int | None = None, ckd: bool = True, against: str | None = None, load: int = 0,
              rounds: int = 1) -> dict:
    """Measure ``backbones``; ``against``: also revision REV, alternately; ``load``: also under N neighbours.

    With ``against`` or ``load`` every measurement is repeated ``rounds`` times (at least 2), alternating
    the two sides, and the fastest of each side is kept.
    """
    from contextlib import nullcontext

    from .bench_compare import checkout, neighbours

    data = str(Path(data or _default_data()).resolve()) if data != "synthetic" else data
    rounds = max(int(rounds), 2 if (against or load) else 1)
    rows, rev_commit = [], None
    with (checkout(against) if against else nullcontext((None, None))) as (rev_folder, rev_commit):
        for name in backbones:
            mine, theirs, loaded = [], [], []
            for _ in range(rounds):
                mine.append(_measure(name, data, device, epochs, threads, ckd))
                if rev_folder is not None:
                    theirs.append(_measure(name, data, device, epochs, threads, ckd, rev_folder))
                if load:
                    with neighbours(load):
                        loaded.append(_measure(name, data, device, epochs, threads, False))
            row = _fastest(mine)
            if theirs:
                old = _fastest(theirs)
                row["against"] = {k: old.get(k) for k in _TIMINGS if k in old}
                row["epoch_speedup"] = old["epoch_seconds"] / row["epoch_seconds"]
                row["ckd_epoch_speedup"] = old.get("ckd_epoch_seconds", float("nan")) / row["ckd_epoch_seconds"]
                row["eval_speedup"] = old["eval_seconds"] / row["eval_seconds"]
            if loaded:
                row["loaded_epoch_seconds"] = _fastest(loaded)["epoch_seconds"]
                row["load_slowdown"] = row["loaded_epoch_seconds"] / row["epoch_seconds"]
            rows.append(row)
    by_name = {r["backbone"]: r for r in rows}
    vbpr = by_name.get("VBPR")
    for r in rows:
        r["eval_over_floor"] = r["eval_seconds"] / r["floor_seconds"]
        r["sampling_over_epoch"] = r["sampling_seconds"] / r["epoch_seconds"]
        r["ckd_over_plain"] = r["ckd_epoch_seconds"] / r["epoch_seconds"]
        if r.get("floor_step_seconds"):
            r["step_over_floor"] = r["step_seconds"] / r["floor_step_seconds"]
        if vbpr:
            r["epoch_over_vbpr"] = r["epoch_seconds"] / vbpr["epoch_seconds"]
    from .provenance import git_commit

    return {"data": data if data == "synthetic" else Path(data).name,
            "device": device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {threads or torch.get_num_threads()} torch threads",
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "commit": git_commit(), "against": rev_commit, "load": int(load),
            "rounds": rounds, "rows": rows}


def format_table(report: dict) -> str:
    cols = [("backbone", "{:<10}"), ("epoch_seconds", "{:>9.3f}"), ("epoch_over_vbpr", "{:>9.2f}"),
            ("eval_seconds", "{:>9.3f}"), ("eval_over_floor", "{:>9.2f}"), ("sampling_over_epoch", "{:>9.3f}"),
            ("ckd_over_plain", "{:>9.2f}"), ("peak_memory_mb", "{:>9.0f}")]
    heads = ["backbone", "s/epoch", "x VBPR", "eval s", "eval/flr", "samp/ep", "CKD x", "peak MB"]
    optional = [("step_over_floor", "step/flr"), ("epoch_speedup", "speedup"), ("ckd_epoch_speedup", "CKD spd"),
                ("eval_speedup", "eval spd"), ("load_slowdown", "loaded x")]
    for key, head in optional:
        if any(key in r for r in report["rows"]):
            cols.append((key, "{:>9.2f}"))
            heads.append(head)
    lines = [f"data: {report['data']}  device: {report['device']}  gpu: {report['gpu']}  torch {report['torch']}",
             f"machine: {report['machine']}; commit {report.get('commit')}"
             + (f"; speedups against {report['against'][:12]}" if report.get("against") else "")
             + (f"; loaded: {report['load']} CPU-bound neighbours" if report.get("load") else "")
             + f"; fastest of {report.get('rounds', 1)} round(s)",
             f"{heads[0]:<10}" + "".join(f"{h:>9}" for h in heads[1:])]
    for r in report["rows"]:
        lines.append("".join(fmt.format(r.get(c, float("nan"))) for c, fmt in cols))
    return "\n".join(lines)


def main(args) -> int:
    from .backbones import available

    names = args.backbones.split(",") if args.backbones else [b for b in DEFAULT_BACKBONES if b in available()]
    from .threads import choose_threads

    report = run_bench(args.data, names, args.device, args.epochs, choose_threads(args.threads), not args.no_ckd,
                       against=args.against, load=args.load, rounds=args.rounds)
    print(format_table(report))
    if args.out:
        from .result import atomic_write_text
        atomic_write_text(args.out, json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--one", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-ckd", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(json.dumps(measure_backbone(a.data, a.one, a.device, a.epochs, ckd=not a.no_ckd)))
