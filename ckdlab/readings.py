"""The short readings under Tables 1-3, computed from the numbers (never written in advance).

Each function takes the same grid frame as its table and returns plain sentences:
what held, what did not, where CKD's premise (teachers stronger than the
backbone's own channels) was not met, where popularity beats the modalities.
Comparisons are of means over seeds; "interval" is the 95% t-interval of
:func:`ckdlab.tables.improvement`, and better or worse "with Holm-corrected p <= alpha" is the
paired test's verdict after the correction across backbones, in the direction of the mean change.
What the paper claims is said in the notebooks' text, not here: these sentences hold any data.
"""
from __future__ import annotations

import math

import pandas as pd

from . import tables
from .experiments import metric_column

_METHOD_NAMES = {"gb": "GB", "ogm": "OGM", "ckd": "CKD"}


def _names(items) -> str:
    items = list(items)
    return ", ".join(items) if items else "none"


def table1_reading(frame: pd.DataFrame, metric: str = "recall@20", split: str = "test", alpha: float = 0.05,
                   references=tables.REFERENCE_MODELS) -> list[str]:
    """Per dataset: how many backbones CKD, GB and OGM lift, which intervals exclude zero, which
    improvements survive the Holm correction, and which backbones popularity (or an ID-only model) beats."""
    runs = tables.completed_runs(frame)
    col = metric_column(split, metric)
    imp = tables.improvement(runs, [metric], split)
    lines = []
    for dataset, block in runs.groupby("dataset", sort=False):
        means = block.groupby(["backbone", "method"], sort=False)[col].mean()
        backbones = [b for b in dict.fromkeys(block["backbone"]) if b not in set(references)]
        label = tables.METRIC_LABELS.get(metric, metric)
        plain = {b: means.get((b, "none"), math.nan) for b in backbones}
        for method in ("ckd", "gb", "ogm"):
            ran = [b for b in backbones if (b, method) in means.index and not math.isnan(plain[b])]
            if not ran:
                continue
            up = [b for b in ran if means[(b, method)] > plain[b]]
            lines.append(f"{dataset}: {_METHOD_NAMES[method]} raises the mean {label} of {len(up)} of {len(ran)} "
                         f"backbones ({_names(up)}).")
        rows = imp.xs(dataset, level="dataset") if dataset in imp.index.get_level_values("dataset") else None
        if rows is not None and len(rows):
            rows = rows.xs(metric, level="metric")
            lines.append(f"{dataset}: CKD's improvement of the mean {label} averages {rows['improv_pct'].mean():+.1f}% "
                         f"over {len(rows)} backbone(s).")
            with_interval = rows[rows["ci_low_pct"].notna()]
            if len(with_interval):
                above = [b for b, r in with_interval.iterrows() if r["ci_low_pct"] > 0]
                below = [b for b, r in with_interval.iterrows() if r["ci_high_pct"] < 0]
                lines.append(f"{dataset}: its 95% interval lies above zero for {_names(above)}, below zero for "
                             f"{_names(below)}, and contains zero for the other "
                             f"{len(with_interval) - len(above) - len(below)} of {len(with_interval)}.")
                tested = rows[rows["p_holm"].notna()]
                gains = [b for b, r in tested.iterrows() if r["p_holm"] <= alpha and r["improv_pct"] > 0]
                losses = [b for b, r in tested.iterrows() if r["p_holm"] <= alpha and r["improv_pct"] < 0]
                lines.append(f"{dataset}: with Holm-corrected p <= {alpha:g} ({len(tested)} backbone(s) tested), "
                             f"CKD is better for {_names(gains)} and worse for {_names(losses)}.")
            else:
                lines.append(f"{dataset}: no interval and no paired test (fewer than two seeds per backbone).")
        for ref in [r for r in references if (r, "none") in means.index]:
            beaten = [b for b in backbones if not math.isnan(plain[b]) and means[(ref, "none")] > plain[b]]
            if beaten:
                lines.append(f"{dataset}: the plain {_names(beaten)} score(s) below {ref} on {label}.")
        capped = tables.capped_runs(block)
        if len(capped):
            which = sorted({f"{b}/{m}" for b, m in zip(capped["backbone"], capped["method"])})
            lines.append(f"{dataset}: {len(capped)} run(s) ended at their epoch cap, not by early stopping "
                         f"({_names(which)}); their scores may still have been rising.")
    return lines


def table2_reading(frame: pd.DataFrame, metric: str = "recall@20", split: str = "test") -> list[str]:
    """Where each uni-modal teacher is weaker than the backbone's own channel of that modality (CKD's
    premise not met), and whether CKD's channels end above the backbone's."""
    t2 = tables.table2(frame, metric, split)
    if t2.empty:
        return []
    means = t2.xs("mean", axis=1, level="stat")
    lines = []
    for (dataset, backbone), block in means.groupby(level=["dataset", "backbone"], sort=False):
        block = block.droplevel(["dataset", "backbone"])
        if "backbone" not in block.index:
            continue
        own = block.loc["backbone"]
        if "uni-teacher" in block.index:
            weaker = [m for m in own.index if block.loc["uni-teacher", m] < own[m]]
            if weaker:
                lines.append(f"{dataset}/{backbone}: the uni-modal teacher of {_names(weaker)} scores below the "
                             f"backbone's own channel: CKD's premise (a stronger teacher to learn from) is not met "
                             f"there.")
            else:
                lines.append(f"{dataset}/{backbone}: every uni-modal teacher scores above the backbone's own "
                             f"channel of its modality (CKD's premise holds).")
        if "CKD" in block.index:
            lifted = [m for m in own.index if block.loc["CKD", m] > own[m]]
            lines.append(f"{dataset}/{backbone}: CKD's channels end above the backbone's for {len(lifted)} of "
                         f"{len(own)} modalities ({_names(lifted)}).")
    return lines


def table3_reading(frame: pd.DataFrame, metric: str = "recall@20", split: str = "test",
                   full: str = "CKD") -> list[str]:
    """Per backbone: whether full CKD beats each ablated variant."""
    t3 = tables.table3(frame, metric, split, full=full)
    lines = []
    for (dataset, backbone), block in t3.groupby(level=["dataset", "backbone"], sort=False):
        block = block.droplevel(["dataset", "backbone"])
        if full not in block.index:
            continue
        better = [f"{v} ({row['delta_pct']:+.1f}%)" for v, row in block.iterrows()
                  if v != full and row["mean"] > block.loc[full, "mean"]]
        lines.append(f"{dataset}/{backbone}: full CKD is " + (f"beaten by {_names(better)}." if better else
                                                               "the best variant."))
    return lines
