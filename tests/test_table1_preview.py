"""benchmarks/table1_preview.py recomputes a report's Table 1 statistics from its committed records alone."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

from ckdlab.tables import improvement

ROOT = Path(__file__).resolve().parents[1]
REPORTS = sorted(p.parent for p in (ROOT / "reports").glob("*/table1_summary.json") if (p.parent / "runs").is_dir())


def preview_module():
    spec = importlib.util.spec_from_file_location("table1_preview", ROOT / "benchmarks" / "table1_preview.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("folder", REPORTS, ids=[p.name for p in REPORTS])
def test_preview_of_the_records_equals_the_reports_summary(folder):
    summary = json.loads((folder / "table1_summary.json").read_text())
    frame = preview_module().table1_runs(preview_module().record_rows(folder / "runs"))
    frame = frame[frame["backbone"].isin(summary["backbones"])]
    ours = improvement(frame, metrics=(summary["metric"],))
    for backbone, expected in summary["backbones"].items():
        row = ours.loc[(folder.name, backbone, summary["metric"])]
        assert int(row["n_pairs"]) == expected["n_pairs"]
        for key in ("baseline_mean", "treatment_mean", "improv_pct", "ci_low_pct", "ci_high_pct", "p_value"):
            value, want = float(row[key]), float(expected[key])
            assert (math.isnan(value) and math.isnan(want)) or value == pytest.approx(want, rel=1e-9, abs=1e-12), \
                (backbone, key)
