"""reports/index.html: CKD's improvement per backbone and dataset, coloured by its interval, linked to its
Table 1, with each report's cost and numbers-version."""
from __future__ import annotations

import json
import re

import pandas as pd

from ckdlab import tables
from ckdlab.report import build_index


def runs(ckd_minus_none: list[float], backbone: str) -> pd.DataFrame:
    rows = []
    for seed, gap in enumerate(ckd_minus_none):
        for method, value in (("none", 0.10), ("ckd", 0.10 + gap)):
            rows.append({"dataset": "d", "backbone": backbone, "method": method, "variant": "", "seed": seed,
                         "test_recall@20": value, "status": "ok", "reached_cap": False})
    return pd.DataFrame(rows)


def write_report(root, name: str, frame: pd.DataFrame) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "table1_summary.json").write_text(json.dumps(tables.improvement_summary(frame)))
    manifest = {"dataset": name, "generated": "2026-12-02T00:00:00",
                "notebooks": [{"notebook": "main_table", "ok": True, "seconds": 7200, "ipynb": "main_table.ipynb",
                               "parameters": {}}],
                "records": {"records": 12, "bytes": 2**20, "train_seconds": 3600.0, "eval_seconds": 900.0,
                            "teacher_seconds": 1800.0, "teachers_without_cost": 3,
                            "numbers": [{"numbers_version": 2, "torch": "2.13.0", "device": "cpu", "threads": 1}]}}
    (folder / "report.json").write_text(json.dumps(manifest))


def test_the_summary_colours_each_improvement_by_its_interval_and_links_its_table(tmp_path):
    write_report(tmp_path, "up", pd.concat([runs([0.02, 0.021, 0.019], "VBPR"), runs([0.01, -0.01, 0.0], "MGCN")]))
    write_report(tmp_path, "down", runs([-0.02, -0.021, -0.019], "VBPR"))
    page = build_index(tmp_path).read_text()
    assert "CKD's improvement over each backbone" in page
    rows = dict(re.findall(r"<tr><th>(\w+)</th>(.*?)</tr>", page, flags=re.S))
    assert set(rows) >= {"VBPR", "MGCN"}
    up_vbpr = re.findall(r'background:([^"]+)"><a href="up/main_table.html">([^<]+)<', rows["VBPR"])
    down_vbpr = re.findall(r'background:([^"]+)"><a href="down/main_table.html">([^<]+)<', rows["VBPR"])
    mgcn = re.findall(r'background:([^"]+)"><a href="up/main_table.html">([^<]+)<', rows["MGCN"])
    assert up_vbpr == [("#c8e6c9", "+20.0%")]      # interval above zero: green
    assert down_vbpr == [("#ffcdd2", "-20.0%")]    # below zero: red
    assert mgcn == [("#eeeeee", "+0.0%")]          # contains zero: grey
    assert "p (Holm)" in rows["VBPR"]
    assert "training epochs 1.00 h" in page and "numbers v2" in page and "wall time 2.00 h" in page
    assert "evaluations 0.25 h" in page and "CKD teachers 0.50 h (3 more teacher(s)" in page
    assert not re.search(r'"/(root|home|work|tmp)/', page)
