"""tables: statistics and layouts on hand-made frames (no training)."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ckdlab import tables

# test Recall@20 per method and seed; ckd is best, none second
VALUES = {"none": [0.10, 0.12, 0.11], "gb": [0.09, 0.10, 0.095], "ogm": [0.08, 0.11, 0.10], "ckd": [0.13, 0.14, 0.15]}


def frame(values=VALUES, seeds=(0, 1, 2), backbone="VBPR", dataset="d", teachers=True) -> pd.DataFrame:
    rows = []
    for method, vals in values.items():
        for seed, v in zip(seeds, vals):
            row = {"dataset": dataset, "backbone": backbone, "method": method, "variant": "", "seed": seed,
                   "test_recall@20": v, "test_ndcg@20": v / 2, "test_precision@20": v / 10,
                   "test_text_recall@20": v * 0.8, "test_image_recall@20": v * 0.5}
            if method == "ckd" and teachers:
                row["teacher_test_text_recall@20"] = 0.5 + seed
                row["teacher_test_image_recall@20"] = 0.2
            rows.append(row)
    return pd.DataFrame(rows)


def bold_cells(html: str, uuid: str) -> set[str]:
    """Cell ids (``rowI_colJ``) that the Styler's CSS makes bold."""
    cells = set()
    for selectors, body in re.findall(r"([^{}]+)\{([^}]*)\}", html):
        if "font-weight: bold" in body:
            cells |= set(re.findall(rf"#T_{uuid}_(row\d+_col\d+)", selectors))
    return cells


def test_aggregate_mean_std_n():
    agg = tables.aggregate(frame(), ["method"], ["test_recall@20"])
    for m, vals in VALUES.items():
        assert agg.loc[m, ("test_recall@20", "mean")] == pytest.approx(np.mean(vals))
        assert agg.loc[m, ("test_recall@20", "std")] == pytest.approx(np.std(vals, ddof=1))
        assert agg.loc[m, ("test_recall@20", "n")] == 3
    with pytest.raises(KeyError):
        tables.aggregate(frame(), ["method"], ["nope"])


def test_table1_orders_methods_and_backbones():
    df = pd.concat([frame(backbone="B2"), frame()])
    t1 = tables.table1(df)
    assert list(t1.index) == [("d", b, m) for b in ("B2", "VBPR") for m in ("none", "gb", "ogm", "ckd")]
    assert t1.loc[("d", "VBPR", "ckd"), ("recall@20", "mean")] == pytest.approx(0.14)
    assert t1.loc[("d", "VBPR", "none"), ("ndcg@20", "std")] == pytest.approx(np.std([0.05, 0.06, 0.055], ddof=1))


def test_improvement_uses_paired_ttest_over_seeds():
    imp = tables.improvement(frame())
    r = imp.loc[("d", "VBPR", "recall@20")]
    expected = stats.ttest_rel(VALUES["ckd"], VALUES["none"])
    assert r["p_value"] == pytest.approx(expected.pvalue)
    assert r["t"] == pytest.approx(expected.statistic)
    assert r["improv_pct"] == pytest.approx(100 * (0.14 - 0.11) / 0.11)
    assert r["n_pairs"] == 3 and r["note"] == ""
    # pairs are matched by seed, not by row order
    shuffled = frame().sample(frac=1.0, random_state=0)
    assert tables.improvement(shuffled).loc[("d", "VBPR", "recall@20"), "p_value"] == pytest.approx(expected.pvalue)


def test_improvement_with_one_seed_has_nan_p_and_a_note():
    imp = tables.improvement(frame({"none": [0.1], "ckd": [0.2]}, seeds=(0,)))
    r = imp.loc[("d", "VBPR", "recall@20")]
    assert math.isnan(r["p_value"]) and math.isnan(r["t"])
    assert "no t-test" in r["note"] and r["n_pairs"] == 1
    assert r["improv_pct"] == pytest.approx(100.0)
    display, _ = tables.format_table1(frame({"none": [0.1], "ckd": [0.2]}, seeds=(0,)))
    assert display.loc[("VBPR", tables.PVALUE_LABEL)].tolist() == ["n/a"] * 3
    assert display.loc[("VBPR", "VBPR"), ("d", "R@20")] == "0.1000"  # one seed: no ± shown


def test_improvement_interval_is_the_paired_t_interval_in_percent_of_the_backbone():
    r = tables.improvement(frame()).loc[("d", "VBPR", "recall@20")]
    diffs = np.subtract(VALUES["ckd"], VALUES["none"])
    half = stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / np.sqrt(3)
    base = np.mean(VALUES["none"])
    assert r["ci_low_pct"] == pytest.approx(100 * (diffs.mean() - half) / base)
    assert r["ci_high_pct"] == pytest.approx(100 * (diffs.mean() + half) / base)
    assert r["ci_low_pct"] < r["improv_pct"] < r["ci_high_pct"]
    display, _ = tables.format_table1(frame())
    assert display.loc[("VBPR", tables.CI_LABEL), ("d", "R@20")] == (
        f"[{r['ci_low_pct']:+.1f}%, {r['ci_high_pct']:+.1f}%]")


def test_holm_correction_across_backbones():
    assert tables.holm([0.01, 0.04, 0.03, float("nan")]) == pytest.approx([0.03, 0.06, 0.06, float("nan")],
                                                                          nan_ok=True)
    assert tables.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    b2 = frame({"none": [0.10, 0.11, 0.12], "ckd": [0.11, 0.13, 0.12]}, backbone="B2")
    imp = tables.improvement(pd.concat([frame(), b2]))
    raw = imp.xs("recall@20", level="metric")["p_value"]
    adjusted = imp.xs("recall@20", level="metric")["p_holm"]
    assert adjusted.tolist() == pytest.approx(tables.holm(raw.tolist()))
    assert (adjusted >= raw).all() and adjusted.min() == pytest.approx(2 * raw.min())


def test_a_flagged_test_stays_out_of_the_holm_family_and_statistics_use_paired_seeds():
    constant = frame({"none": [0.10, 0.11, 0.12], "ckd": [0.11, 0.12, 0.13]}, backbone="B2")  # +0.01 every seed
    imp = tables.improvement(pd.concat([frame(), constant]))
    assert "constant difference" in imp.loc[("d", "B2", "recall@20"), "note"]
    assert math.isnan(imp.loc[("d", "B2", "recall@20"), "p_holm"])
    assert imp.loc[("d", "VBPR", "recall@20"), "p_holm"] == pytest.approx(imp.loc[("d", "VBPR", "recall@20"), "p_value"])
    # a seed that failed on one side leaves every statistic: the improvement matches its interval's runs
    runs = frame({"none": [0.10, 0.10, 0.20], "ckd": [0.11, 0.12, 0.99]})
    runs = runs[~((runs["method"] == "ckd") & (runs["seed"] == 2))]
    r = tables.improvement(runs).loc[("d", "VBPR", "recall@20")]
    assert r["n_pairs"] == 2 and r["baseline_mean"] == pytest.approx(0.10)
    assert r["improv_pct"] == pytest.approx(15.0) and r["ci_low_pct"] <= r["improv_pct"] <= r["ci_high_pct"]


def test_references_lead_table1_and_capped_runs_are_marked():
    refs = pd.concat([frame({"none": [0.05, 0.06, 0.05]}, backbone=name) for name in ("Pop", "LightGCN")])
    runs = pd.concat([frame(), refs])
    runs["reached_cap"] = (runs["method"] == "gb") & (runs["seed"] == 2)
    display, mask = tables.format_table1(runs)
    assert list(display.index[:2]) == [("reference", "Pop"), ("reference", "LightGCN")]
    assert ("Pop", tables.IMPROV_LABEL) not in display.index
    assert display.loc[("VBPR", "+GB"), ("d", "R@20")].endswith(tables.CAP_MARK)
    assert not display.loc[("VBPR", "+CKD"), ("d", "R@20")].endswith(tables.CAP_MARK)
    assert any("epoch cap" in note for note in tables.table1_notes(runs))


def test_a_precision_that_only_repeats_recall_is_left_out():
    one_item = frame()
    one_item["test_precision@20"] = one_item["test_recall@20"] / 20
    assert tables.redundant_precision(one_item) == ["precision@20"]
    display, _ = tables.format_table1(one_item)
    assert [m for _, m in display.columns] == ["R@20", "NDCG@20"]
    assert tables.redundant_precision(frame()) == []  # P = R/10 here: a real column
    assert "P@20 left out" in tables.table1_notes(one_item)[0]


def test_identical_results_are_flagged():
    t, p, note = tables.paired_ttest([0.1, 0.2], [0.1, 0.2])
    assert math.isnan(p) and "identical" in note
    t, p, note = tables.paired_ttest([0.2, 0.3], [0.1, 0.2])
    assert "constant difference" in note


def test_format_table1_layout_and_bold_best():
    display, mask = tables.format_table1(frame())
    assert list(display.index) == [("VBPR", "VBPR"), ("VBPR", "+GB"), ("VBPR", "+OGM"), ("VBPR", "+CKD"),
                                   ("VBPR", tables.IMPROV_LABEL), ("VBPR", tables.CI_LABEL),
                                   ("VBPR", tables.PVALUE_LABEL), ("VBPR", tables.HOLM_LABEL)]
    assert list(display.columns) == [("d", "R@20"), ("d", "NDCG@20"), ("d", "P@20")]
    assert display.loc[("VBPR", "+CKD"), ("d", "R@20")] == "0.1400 ± 0.0100"
    assert display.loc[("VBPR", tables.IMPROV_LABEL), ("d", "R@20")] == "+27.27%"
    # exactly one bold cell per column: +CKD
    assert mask.sum().tolist() == [1, 1, 1]
    assert mask.loc[("VBPR", "+CKD")].all()
    assert bold_cells(tables.style_table1(frame()).to_html(), "table1") == {"row3_col0", "row3_col1", "row3_col2"}


def test_bold_is_per_backbone_block():
    other = frame({"none": [0.5, 0.5, 0.5], "ckd": [0.4, 0.4, 0.4]}, backbone="B2")
    _, mask = tables.format_table1(pd.concat([frame(), other]))
    assert mask.loc[("B2", "B2")].all() and not mask.loc[("B2", "+CKD")].any()
    assert mask.loc[("VBPR", "+CKD")].all()


def test_table2_rows_and_teachers():
    t2 = tables.table2(frame())
    assert list(t2.index.get_level_values("model")) == list(tables.TABLE2_ROWS)
    assert t2.loc[("d", "VBPR", "uni-teacher"), ("text", "mean")] == pytest.approx(1.5)
    assert t2.loc[("d", "VBPR", "uni-teacher"), ("text", "std")] == pytest.approx(1.0)
    assert t2.loc[("d", "VBPR", "CKD"), ("image", "mean")] == pytest.approx(0.07)
    assert t2.loc[("d", "VBPR", "GB"), ("image", "n")] == 3
    display, mask = tables.format_table2(frame())
    assert list(display.index.get_level_values("model")) == ["VBPR", "uni-teacher", "GB", "OGM", "CKD"]
    assert mask.loc[("VBPR", "uni-teacher")].all()  # the teachers are best here
    assert bold_cells(tables.style_table2(frame()).to_html(), "table2") == {"row1_col0", "row1_col1"}
    # without CKD runs there is no teacher row
    no_ckd = frame({k: v for k, v in VALUES.items() if k != "ckd"})
    assert "uni-teacher" not in tables.table2(no_ckd).index.get_level_values("model")


def ablation_frame() -> pd.DataFrame:
    rows = []
    for variant, vals in {"CKD": [0.2, 0.22], "w/o generic": [0.18, 0.2], "repl. KL": [0.25, 0.23]}.items():
        for seed, v in enumerate(vals):
            rows.append({"dataset": "d", "backbone": "VBPR", "method": "ckd", "variant": variant, "seed": seed,
                         "test_recall@20": v})
    return pd.DataFrame(rows)


def test_table3_delta_and_bold():
    t3 = tables.table3(ablation_frame())
    assert list(t3.index.get_level_values("variant")) == ["CKD", "w/o generic", "repl. KL"]
    assert t3.loc[("d", "VBPR", "w/o generic"), "delta_pct"] == pytest.approx(100 * (0.19 - 0.21) / 0.21)
    assert t3.loc[("d", "VBPR", "CKD"), "delta_pct"] == pytest.approx(0.0)
    assert t3.loc[("d", "VBPR", "CKD"), "n"] == 2
    display, mask = tables.format_table3(ablation_frame())
    assert list(display.index) == [("VBPR", "VBPR + CKD"), ("VBPR", "w/o generic"), ("VBPR", "repl. KL")]
    assert mask.loc[("VBPR", "repl. KL")].all() and mask.to_numpy().sum() == 1
    assert bold_cells(tables.style_table3(ablation_frame()).to_html(), "table3") == {"row2_col0"}


def test_format_mean_std():
    assert tables.format_mean_std(0.123456, 0.0012, 3) == "0.1235 ± 0.0012"
    assert tables.format_mean_std(0.123456, float("nan"), 1) == "0.1235"
    assert tables.format_mean_std(float("nan")) == "–"


def test_pilot_summary_and_findings():
    mm = {"test": {"recall@20": 0.30}, "test_by_modality": {"text": {"recall@20": 0.25}, "image": {"recall@20": 0.15}},
          "best_epoch": 10}
    uni = {"text": {"test": {"recall@20": 0.31}, "best_epoch": 9}, "image": {"test": {"recall@20": 0.20},
                                                                             "best_epoch": 12}}
    s = tables.pilot_summary(mm, uni)
    assert s.loc["text", "gap"] == pytest.approx(0.06)
    assert s.loc["image", "gap_pct"] == pytest.approx(25.0)
    assert s.loc["all modalities", "multimodal model"] == 0.30
    text = tables.pilot_findings(s)
    assert "(1) text" in text and "under-optimised" in text
    assert "text-only model 0.3100 beats the multimodal model" in text
    assert "weakest modality (lowest uni-modal score): image; largest relative gap: image (as the paper" in text


def test_dynamics_summary():
    history = [{"epoch": e, "rho": {"text": 0.1 * e, "image": 0.05 * e}, "lambda": {"text": 0.4, "image": 0.6},
                "valid": {"recall@20": 0.1 * e}, "valid_by_modality": {"text": {"recall@20": 0.05 * e},
                                                                       "image": {"recall@20": 0.02 * e}}}
               for e in (1, 2, 3)]
    d = tables.dynamics_summary({"history": history})
    assert list(d.index) == [1, 2, 3]
    assert d.loc[2, ("rho", "text")] == pytest.approx(0.2)
    assert d.loc[3, ("valid", "all")] == pytest.approx(0.3)
    assert d.loc[1, ("lambda", "image")] == 0.6
