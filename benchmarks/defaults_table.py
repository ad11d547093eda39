"""What a new user's first run gives: ``ckdlab train --data D --backbone B`` with no other flag, against ``Pop``.

Each run goes through the command line itself (``ckdlab.cli.main``, in this process; ``--quiet`` and
``--out`` only silence the progress bar and save the result), so it uses exactly what the command
uses: the shipped tuned settings where the data matches an entry, else the package defaults.
This reads the test split: run it once, after the defaults were chosen on validation
(``benchmarks/defaults_choice.py``). Results are cached, so a second call only prints. Usage::

    OMP_NUM_THREADS=1 python benchmarks/defaults_table.py --datasets tiktok,baby
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ckdlab import cli
from ckdlab.provenance import describe

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BACKBONES = "VBPR,DeepStyle,MMGCN,GRCN,EgoGCN,MGCN"  # and Pop, always


def first_run(folder: Path, backbone: str) -> dict:
    """The result ``ckdlab train --data folder --backbone backbone`` writes (no other flag)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        code = cli.main(["train", "--data", str(folder), "--backbone", backbone, "--threads", "1", "--quiet",
                         "--out", str(out)])
        if code != 0:
            raise SystemExit(f"ckdlab train --backbone {backbone} on {folder.name} exited {code}")
        return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--datasets", default="tiktok,baby")
    p.add_argument("--backbones", default=BACKBONES)
    args = p.parse_args()
    rows, provenance = [], None
    models = [b for b in args.backbones.split(",") if b != "Pop"]
    for name in args.datasets.split(","):
        pop = None
        for backbone in ["Pop", *models]:  # popularity first: every row is compared with it
            result = first_run(SHARED / name, backbone)
            test = result["test"]["recall@20"]
            pop = test if backbone == "Pop" else pop
            config = result["config"]
            rows.append((name, backbone, test, result["test"]["ndcg@20"], result["valid"]["recall@20"],
                         config["lr"], config["reg_weight"], result["best_epoch"], result["epochs_run"],
                         config["max_epochs"], pop))
            provenance = result.get("provenance")
            print(f"{name} {backbone}: test R@20 {test:.4f} (Pop {pop:.4f})", flush=True)
    print(f"\n{describe(provenance)}\n")
    print("| dataset | model | test R@20 | test NDCG@20 | valid R@20 | lr | L2 | best epoch / run (cap) | vs Pop |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d, b, t, n, v, lr, reg, be, er, cap, pop in rows:
        verdict = "" if b == "Pop" else ("above" if t > pop else "below")
        print(f"| {d} | {b} | {t:.4f} | {n:.4f} | {v:.4f} | {lr:g} | {reg:g} | {be} / {er} ({cap}) | {verdict} |")


if __name__ == "__main__":
    main()
