"""`ckdlab bench`: every backbone measured in its own process, ratios computed from one run."""
import json
import math

from ckdlab import bench
from ckdlab.cli import main as cli_main
from conftest import make_tiny_dataset, write_mmrec


def test_bench_reports_every_ratio_for_each_backbone(tmp_path, capsys):
    folder = write_mmrec(make_tiny_dataset(n_users=40, n_items=50), tmp_path / "tiny")
    out = tmp_path / "bench.json"
    assert cli_main(["bench", "--data", str(folder), "--backbones", "VBPR,MGCN", "--epochs", "1",
                     "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "VBPR" in printed and "MGCN" in printed and "CKD x" in printed
    report = json.loads(out.read_text())
    rows = {r["backbone"]: r for r in report["rows"]}
    assert set(rows) == {"VBPR", "MGCN"}
    for r in rows.values():
        for key in ("epoch_seconds", "ckd_epoch_seconds", "eval_seconds", "floor_seconds", "peak_memory_mb"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert r["ckd_over_plain"] == r["ckd_epoch_seconds"] / r["epoch_seconds"]
        assert r["eval_over_floor"] == r["eval_seconds"] / r["floor_seconds"]
    assert rows["VBPR"]["epoch_over_vbpr"] == 1.0
    assert rows["MGCN"]["epoch_over_vbpr"] == rows["MGCN"]["epoch_seconds"] / rows["VBPR"]["epoch_seconds"]


def test_bench_without_ckd_leaves_the_ratio_empty(tmp_path):
    folder = write_mmrec(make_tiny_dataset(n_users=30, n_items=40), tmp_path / "tiny")
    report = bench.run_bench(str(folder), ["DeepStyle"], "cpu", epochs=1, threads=1, ckd=False)
    (row,) = report["rows"]
    assert math.isnan(row["ckd_over_plain"]) and row["epoch_seconds"] > 0


def test_bench_against_a_revision_and_under_load(tmp_path, capsys):
    """--against REV benchmarks another checkout in the same run; --load N adds CPU-bound neighbours."""
    import subprocess

    folder = write_mmrec(make_tiny_dataset(n_users=30, n_items=40), tmp_path / "tiny")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=bench.PACKAGE_ROOT, capture_output=True,
                          text=True).stdout.strip()
    report = bench.run_bench(str(folder), ["VBPR"], "cpu", epochs=1, threads=1, ckd=False, against="HEAD", load=1)
    (row,) = report["rows"]
    assert report["against"] == head and report["rounds"] == 2 and report["data"] == "tiny"
    assert row["epoch_speedup"] == row["against"]["epoch_seconds"] / row["epoch_seconds"]
    assert row["load_slowdown"] == row["loaded_epoch_seconds"] / row["epoch_seconds"] > 0
    assert row["step_over_floor"] == row["step_seconds"] / row["floor_step_seconds"] > 0
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=bench.PACKAGE_ROOT, capture_output=True,
                               text=True).stdout
    assert "ckdlab-bench-" not in worktrees  # the temporary checkout is gone
    print(bench.format_table(report))
    assert "speedup" in capsys.readouterr().out


def test_bench_against_an_unknown_revision_is_a_clear_error(tmp_path):
    import pytest

    folder = write_mmrec(make_tiny_dataset(n_users=30, n_items=40), tmp_path / "tiny")
    with pytest.raises(RuntimeError, match="git rev-parse"):
        bench.run_bench(str(folder), ["VBPR"], "cpu", epochs=1, threads=1, ckd=False, against="no-such-rev")
