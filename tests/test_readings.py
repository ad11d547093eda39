"""The readings under Tables 1-3 say what the numbers say (hand-made frames, no training)."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_tables import frame  # noqa: E402

from ckdlab import readings  # noqa: E402


def test_table1_reading_counts_lifts_intervals_holm_and_popularity():
    worse = frame({"none": [0.20, 0.21, 0.20], "gb": [0.21, 0.22, 0.21], "ckd": [0.18, 0.19, 0.181]},
                  backbone="MGCN")
    pop = frame({"none": [0.15, 0.15, 0.15]}, backbone="Pop")
    runs = pd.concat([frame(), worse, pop])
    runs["reached_cap"] = (runs["backbone"] == "MGCN") & (runs["method"] == "gb")
    text = "\n".join(readings.table1_reading(runs))
    assert "CKD raises the mean R@20 of 1 of 2 backbones (VBPR)" in text
    assert "GB raises the mean R@20 of 1 of 2 backbones (MGCN)" in text
    assert "interval lies above zero for VBPR, below zero for MGCN, and contains zero for the other 0 of 2" in text
    assert "CKD is better for VBPR and worse for MGCN" in text  # significance keeps its direction
    assert "the plain VBPR score(s) below Pop on R@20" in text and "MGCN score" not in text
    assert "ended at their epoch cap" in text and "MGCN/gb" in text


def test_one_seed_says_there_is_no_interval():
    text = "\n".join(readings.table1_reading(frame({"none": [0.1], "ckd": [0.2]}, seeds=(0,))))
    assert "no interval and no paired test" in text and "lies above zero" not in text


def test_table2_reading_names_teachers_weaker_than_the_backbones_own_channel():
    runs = frame()
    runs.loc[runs["method"] == "ckd", "teacher_test_image_recall@20"] = 0.001  # far below every channel
    text = "\n".join(readings.table2_reading(runs))
    assert "the uni-modal teacher of image scores below the backbone's own channel" in text
    assert "premise (a stronger teacher to learn from) is not met" in text
    assert "teacher of text" not in text
    assert "every uni-modal teacher scores above" in "\n".join(readings.table2_reading(frame()))


def test_table3_reading_says_which_variant_beats_full_ckd():
    rows = []
    for variant, value in (("CKD", 0.20), ("w/o generic", 0.22), ("w/o re-weight", 0.19)):
        for seed in (0, 1):
            rows.append({"dataset": "d", "backbone": "VBPR", "method": "ckd", "variant": variant, "seed": seed,
                         "test_recall@20": value})
    text = readings.table3_reading(pd.DataFrame(rows))
    assert text == ["d/VBPR: full CKD is beaten by w/o generic (+10.0%)."]
