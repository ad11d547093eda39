"""The paper's tables from :func:`ckdlab.experiments.grid` frames.

Every function here is pure: a DataFrame (one row per run, columns as named by
:func:`ckdlab.experiments.metric_column`) in, a DataFrame out; ``style_*``
functions return a :class:`pandas.io.formats.style.Styler` for display.

Numeric tables (for code and tests)
    :func:`aggregate`, :func:`table1`, :func:`improvement`, :func:`table2`,
    :func:`table3`, :func:`pilot_summary`, :func:`dynamics_summary`.
Display tables (strings ``"mean ± std"``, paper layout) and their stylers
    :func:`format_table1` / :func:`style_table1`, :func:`format_table2` /
    :func:`style_table2`, :func:`format_table3` / :func:`style_table3`.

Statistics: mean and sample standard deviation (ddof=1) over seeds; the std is
NaN, and not shown, for a single seed. CKD's improvement is tested with a
paired t-test over seeds (``scipy.stats.ttest_rel``, runs paired by seed);
with fewer than two paired seeds the p-value is NaN and the ``note`` column says why.
Its 95% confidence interval is the t-interval of the mean paired difference
(n - 1 degrees of freedom) divided by the backbone's mean, so it is on the same
scale as the improvement itself; p-values are also given Holm-corrected across
the backbones of a dataset and metric (:func:`holm`), the family a reader of the
whole table scans.

Failed runs (grid rows with ``status == "failed"``, NaN metrics) never enter a
statistic: they are dropped with a warning that counts them, and
:func:`aggregate` (hence :func:`table1`, :func:`table3`) adds an ``n_failed``
stat per column when there were any, so ``n`` is not mistaken for the seeds asked for.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .experiments import ABLATION_VARIANTS, METHODS, metric_column

TABLE1_METRICS = ("recall@20", "ndcg@20", "precision@20")
METRIC_LABELS = {"recall@20": "R@20", "ndcg@20": "NDCG@20", "precision@20": "P@20",
                 "recall@10": "R@10", "ndcg@10": "NDCG@10", "precision@10": "P@10",
                 "recall@50": "R@50", "ndcg@50": "NDCG@50", "precision@50": "P@50"}
METHOD_LABELS = {"none": None, "gb": "+GB", "ogm": "+OGM", "ckd": "+CKD"}  # None: the backbone's own name
TABLE2_ROWS = ("backbone", "uni-teacher", "GB", "OGM", "CKD")
TABLE2_SOURCES = {"backbone": "none", "GB": "gb", "OGM": "ogm", "CKD": "ckd"}
IMPROV_LABEL = "Δ Improv."
CI_LABEL = "95% CI"
PVALUE_LABEL = "p-value"
HOLM_LABEL = "p (Holm)"
#: ID-only recommenders shown in Table 1 as their own block, above the backbones.
REFERENCE_MODELS = ("Pop", "MF", "LightGCN")
#: Appended to a Table 1 cell when one of its runs ended at its epoch cap, not by early stopping.
CAP_MARK = " †"
BOLD = "font-weight: bold"
STATS = ("mean", "std", "n")


# -- helpers ---------------------------------------------------------------------------------------

def _failed(frame: pd.DataFrame) -> pd.Series:
    """True for the rows of runs that failed (``status == "failed"``; frames without ``status`` have none)."""
    if "status" not in frame.columns:
        return pd.Series(False, index=frame.index)
    return frame["status"].eq("failed")


def _warn_failed(failed: pd.Series) -> None:
    if failed.any():
        warnings.warn(f"{int(failed.sum())} failed run(s) left out of the statistics (see the frame's "
                      "status and error columns)", RuntimeWarning, stacklevel=4)


def _completed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without its failed runs, warning how many were dropped."""
    failed = _failed(frame)
    _warn_failed(failed)
    return frame[~failed]


def completed_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of runs that finished (failed runs dropped, with the warning that counts them)."""
    return _completed(frame)


def _ordered(values: Iterable, order: Sequence) -> list:
    """``values`` (unique) in ``order`` first, then the rest in first-seen order."""
    seen = list(dict.fromkeys(values))
    return [v for v in order if v in seen] + [v for v in seen if v not in order]


def _sort_index(table: pd.DataFrame, orders: Mapping[str, Sequence]) -> pd.DataFrame:
    """Rows of ``table`` sorted level by level in the given orders (stable)."""
    keys = [tuple(orders[name].index(v) for name, v in zip(table.index.names, idx)) for idx in table.index]
    return table.iloc[sorted(range(len(keys)), key=keys.__getitem__)]


def aggregate(frame: pd.DataFrame, by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Mean, std (ddof=1) and count of ``columns`` per group of ``by``, over the runs that did not fail.

    Returns a frame indexed by ``by`` with MultiIndex columns ``(column, stat)``,
    stat in ``("mean", "std", "n")``, plus ``"n_failed"`` when some runs failed;
    groups keep their first-seen order.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the frame (have: {sorted(frame.columns)[:20]}...)")
    failed = _failed(frame)
    data = frame[list(columns)].where(~failed, np.nan)  # failed runs keep their group, not their values
    grouped = data.groupby([frame[b] for b in by], sort=False, dropna=False)
    stats = {"mean": grouped.mean(), "std": grouped.std(ddof=1), "n": grouped.count()}
    names = STATS
    if failed.any():
        _warn_failed(failed)
        n_failed = failed.groupby([frame[b] for b in by], sort=False, dropna=False).sum()
        stats["n_failed"] = pd.DataFrame({c: n_failed for c in columns})
        names = STATS + ("n_failed",)
    out = pd.concat(stats, axis=1)  # columns (stat, column)
    out = out.swaplevel(0, 1, axis=1)
    ordered_cols = pd.MultiIndex.from_tuples([(c, s) for c in columns for s in names], names=["column", "stat"])
    return out.reindex(columns=ordered_cols)


def format_mean_std(mean: float, std: float = float("nan"), n: int | float = 1, digits: int = 4) -> str:
    """``"0.1234 ± 0.0056"``; just the mean for one seed; ``"–"`` when there is no value."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if n is not None and not (isinstance(n, float) and math.isnan(n)) and n >= 2 and not math.isnan(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def _format_block(means: pd.DataFrame, stds: pd.DataFrame, ns: pd.DataFrame, digits: int) -> pd.DataFrame:
    out = pd.DataFrame(index=means.index, columns=means.columns, dtype=object)
    for r in means.index:
        for c in means.columns:
            out.loc[r, c] = format_mean_std(means.loc[r, c], stds.loc[r, c], ns.loc[r, c], digits)
    return out


def _bold_styles(mask: pd.DataFrame) -> pd.DataFrame:
    return mask.replace({True: BOLD, False: ""}).astype(object).where(mask, "")


def provenance_line(frame: pd.DataFrame) -> str:
    """Which code and machine made the runs of ``frame``: ``runs: numbers v2, commit abc1234, ...``.

    Lists every distinct value per column, so a table mixing code versions or
    thread counts says so instead of hiding it.
    """
    if frame is None or not len(frame) or "numbers_version" not in frame:
        return "runs: provenance not recorded"
    parts = []
    for column, label in (("numbers_version", "numbers v"), ("git_commit", "commit "), ("torch", "torch "),
                          ("cpu_capability", "cpu "), ("threads", "threads ")):
        if column not in frame:
            continue
        values = sorted({_short(v) for v in frame[column].tolist()})
        parts.append(label + "/".join(values))
    return "runs: " + ", ".join(parts)


def _short(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "?"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    if len(text) >= 40 and all(c in "0123456789abcdef-dirty" for c in text):  # a git sha
        return text[:7] + ("-dirty" if text.endswith("-dirty") else "")
    return text


def _style(display: pd.DataFrame, mask: pd.DataFrame, uuid: str, caption: str | None,
           frame: pd.DataFrame | None = None):
    styler = display.style.apply(lambda _: _bold_styles(mask), axis=None).set_uuid(uuid)
    if frame is not None:  # every table says which code and machine made its runs
        caption = f"{caption} ({provenance_line(frame)})" if caption else provenance_line(frame)
    if caption:
        styler = styler.set_caption(caption)
    return styler


def _best_in_blocks(values: pd.DataFrame, block_level: str | int) -> pd.DataFrame:
    """True where a value is the maximum of its column within its ``block_level`` group (ties all bold)."""
    mask = pd.DataFrame(False, index=values.index, columns=values.columns)
    for _, block in values.groupby(level=block_level, sort=False):
        for c in values.columns:
            col = block[c].astype(float)
            if col.notna().any():
                best = col.max()
                mask.loc[col.index[np.isclose(col.to_numpy(), best, rtol=0, atol=1e-12)], c] = True
    return mask


# -- Table 1: overall performance ----------------------------------------------------------------

def table1(frame: pd.DataFrame, metrics: Sequence[str] = TABLE1_METRICS, split: str = "test",
           methods: Sequence[str] = METHODS) -> pd.DataFrame:
    """Mean/std/n over seeds of overall ``metrics`` per (dataset, backbone, method).

    Returns a frame indexed by ``(dataset, backbone, method)`` (methods in
    ``methods`` order, others after) with columns ``(metric, stat)``.
    """
    cols = [metric_column(split, m) for m in metrics]
    agg = aggregate(frame, ["dataset", "backbone", "method"], cols)
    agg.columns = pd.MultiIndex.from_tuples([(metrics[cols.index(c)], s) for c, s in agg.columns],
                                            names=["metric", "stat"])
    return _sort_index(agg, {"dataset": list(dict.fromkeys(frame["dataset"])),
                             "backbone": list(dict.fromkeys(frame["backbone"])),
                             "method": _ordered(frame["method"], methods)})


def paired_ttest(treatment: Sequence[float], baseline: Sequence[float]) -> tuple[float, float, str]:
    """``(t, p, note)`` of ``scipy.stats.ttest_rel(treatment, baseline)`` (two-sided).

    Fewer than two pairs: ``(nan, nan, "n=1 paired seed: no t-test")``. All
    differences equal (to 1e-12): t is undefined (0/0) when they are zero and
    infinite (or a rounding artefact) otherwise; the note says so.
    """
    from scipy import stats

    a, b = np.asarray(treatment, float), np.asarray(baseline, float)
    n = len(a)
    if n < 2:
        return float("nan"), float("nan"), f"n={n} paired seed{'s' if n != 1 else ''}: no t-test (needs >= 2)"
    diff = a - b
    note = ""
    if np.allclose(diff, diff[0], rtol=0, atol=1e-12):
        note = ("identical results: no test" if abs(diff[0]) <= 1e-12 else
                "constant difference over seeds: t infinite or meaningless")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(a, b)
    return float(res.statistic), float(res.pvalue), note


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given; NaN stays NaN and
    is not counted in the family."""
    p = np.asarray(pvalues, float)
    out = np.full(len(p), np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def _relative_interval(diffs: np.ndarray, base_mean: float, level: float = 0.95) -> tuple[float, float]:
    """The t-interval of the mean paired difference, in percent of ``base_mean``; NaN below two pairs."""
    from scipy import stats

    n = len(diffs)
    if n < 2 or not base_mean:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, n - 1) * np.std(diffs, ddof=1) / math.sqrt(n)
    mean = float(np.mean(diffs))
    return 100.0 * (mean - half) / base_mean, 100.0 * (mean + half) / base_mean


def improvement(frame: pd.DataFrame, metrics: Sequence[str] = TABLE1_METRICS, split: str = "test",
                baseline: str = "none", treatment: str = "ckd") -> pd.DataFrame:
    """Relative improvement of ``treatment`` over ``baseline`` per (dataset, backbone, metric).

    Every column is computed on the ``n_pairs`` seeds both methods finished (with
    no failed run, every seed): ``baseline_mean, treatment_mean, improv_pct`` (100
    * (treatment - baseline) / baseline, on those means), ``diff_mean`` (mean paired
    difference), ``ci_low_pct, ci_high_pct`` (95% t-interval of the paired
    difference, in percent of the baseline mean), ``t, p_value`` (paired t-test),
    ``p_holm`` (Holm-corrected across the backbones of the same dataset and metric;
    NaN where ``note`` flags the test), ``n_pairs`` and ``note``.
    """
    rows = []
    for (dataset, backbone), block in _completed(frame).groupby(["dataset", "backbone"], sort=False):
        base = block[block["method"] == baseline]
        treat = block[block["method"] == treatment]
        if base.empty or treat.empty:
            continue
        for metric in metrics:
            col = metric_column(split, metric)
            paired = pd.merge(base[["seed", col]], treat[["seed", col]], on="seed", suffixes=("_b", "_t"))
            t, p, note = paired_ttest(paired[f"{col}_t"], paired[f"{col}_b"])
            # every statistic on the seeds both methods finished, so the improvement, its interval
            # and its test describe the same runs (a seed that failed on one side drops out of all)
            b_mean, t_mean = float(paired[f"{col}_b"].mean()), float(paired[f"{col}_t"].mean())
            diffs = (paired[f"{col}_t"] - paired[f"{col}_b"]).to_numpy(float)
            low, high = _relative_interval(diffs, b_mean)
            rows.append({"dataset": dataset, "backbone": backbone, "metric": metric,
                         "baseline_mean": b_mean, "treatment_mean": t_mean,
                         "improv_pct": 100.0 * (t_mean - b_mean) / b_mean if b_mean else float("nan"),
                         "diff_mean": float(diffs.mean()) if len(diffs) else float("nan"),
                         "ci_low_pct": low, "ci_high_pct": high,
                         "t": t, "p_value": p, "n_pairs": int(len(paired)), "note": note})
    cols = ["dataset", "backbone", "metric", "baseline_mean", "treatment_mean", "improv_pct", "diff_mean",
            "ci_low_pct", "ci_high_pct", "t", "p_value", "p_holm", "n_pairs", "note"]
    out = pd.DataFrame(rows, columns=[c for c in cols if c != "p_holm"])
    out["p_holm"] = np.nan
    # a test flagged by its note (identical runs, a constant difference) has no meaningful p: it stays
    # out of the family rather than lending it a p of 0
    testable = out["note"].eq("") & out["p_value"].notna()
    for _, family in out[testable].groupby(["dataset", "metric"], sort=False):
        out.loc[family.index, "p_holm"] = holm(family["p_value"].tolist())
    return out[cols].set_index(["dataset", "backbone", "metric"])


def redundant_precision(frame: pd.DataFrame, metrics: Sequence[str] = TABLE1_METRICS, split: str = "test"
                        ) -> list[str]:
    """The ``precision@K`` among ``metrics`` that equal ``recall@K / K`` in every run of ``frame``.

    That holds by construction when every evaluated user has exactly one held-out
    item (TikTok's test split): such a column repeats Recall@K and Table 1 drops it.
    """
    out = []
    runs = _completed(frame)
    for metric in metrics:
        if not metric.startswith("precision@"):
            continue
        k = int(metric.split("@")[1])
        p_col, r_col = metric_column(split, metric), metric_column(split, f"recall@{k}")
        if len(runs) and {p_col, r_col} <= set(runs.columns):
            p, r = runs[p_col].to_numpy(float), runs[r_col].to_numpy(float)
            if np.allclose(p, r / k, rtol=1e-5, atol=1e-9):  # float32 metrics: equal to rounding
                out.append(metric)
    return out


def _method_label(method: str, backbone: str) -> str:
    label = METHOD_LABELS.get(method, f"+{method}")
    return backbone if label is None else label


def capped_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The finished runs that ended at their epoch cap instead of by early stopping (none without a
    ``reached_cap`` column)."""
    runs = _completed(frame)
    if "reached_cap" not in runs.columns:
        return runs.iloc[0:0]
    return runs[runs["reached_cap"].fillna(False).astype(bool)]


def _capped(frame: pd.DataFrame) -> set[tuple]:
    """``(dataset, backbone, method)`` of the blocks where some run ended at its epoch cap."""
    hit = capped_runs(frame)
    return set(zip(hit["dataset"], hit["backbone"], hit["method"]))


def table1_metrics(frame: pd.DataFrame, metrics: Sequence[str] = TABLE1_METRICS, split: str = "test") -> list[str]:
    """``metrics`` without a precision that only repeats recall (see :func:`redundant_precision`)."""
    dropped = set(redundant_precision(frame, metrics, split))
    return [m for m in metrics if m not in dropped]


def format_table1(frame: pd.DataFrame, metrics: Sequence[str] = TABLE1_METRICS, split: str = "test",
                  digits: int = 4, references: Sequence[str] = REFERENCE_MODELS,
                  drop_redundant: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paper layout of Table 1 and its bold mask.

    Rows ``(backbone, row)`` with row in the backbone's name, ``+GB``, ``+OGM``,
    ``+CKD``, ``Δ Improv.``, ``95% CI``, ``p-value`` and ``p (Holm)``; the
    ``references`` present in ``frame`` (ID-only models) come first, as rows of a
    ``"reference"`` block. Columns ``(dataset, metric label)``; with
    ``drop_redundant`` a precision column that equals recall / K in every run is
    left out (:func:`redundant_precision`). Cells are ``"mean ± std"`` strings,
    with :data:`CAP_MARK` where a run ended at its epoch cap instead of by early
    stopping. The mask marks, per block and column, the best mean among the model rows.
    """
    if drop_redundant:
        metrics = table1_metrics(frame, metrics, split)
    t1 = table1(frame, metrics, split)
    imp = improvement(frame, metrics, split)
    capped = _capped(frame)
    datasets = list(dict.fromkeys(t1.index.get_level_values("dataset")))
    present = list(dict.fromkeys(t1.index.get_level_values("backbone")))
    refs = [b for b in present if b in set(references)]
    backbones = [b for b in present if b not in set(refs)]
    col_index = pd.MultiIndex.from_tuples([(d, METRIC_LABELS.get(m, m)) for d in datasets for m in metrics],
                                          names=["dataset", "metric"])
    row_tuples, cells, means = [], [], []

    def model_row(block: str, label: str, b: str, m: str) -> None:
        row_tuples.append((block, label))
        row_cells, row_means = [], []
        for d in datasets:
            for metric in metrics:
                key = (d, b, m)
                if key in t1.index:
                    stat = t1.loc[key, metric]
                    mark = CAP_MARK if key in capped else ""
                    row_cells.append(format_mean_std(stat["mean"], stat["std"], stat["n"], digits) + mark)
                    row_means.append(stat["mean"])
                else:
                    row_cells.append("–")
                    row_means.append(np.nan)
        cells.append(row_cells)
        means.append(row_means)

    def stat_rows(b: str) -> None:
        labels = (IMPROV_LABEL, CI_LABEL, PVALUE_LABEL, HOLM_LABEL)
        block = {label: [] for label in labels}
        for d in datasets:
            for metric in metrics:
                if (d, b, metric) not in imp.index:
                    for label in labels:
                        block[label].append("–")
                    continue
                r = imp.loc[(d, b, metric)]
                block[IMPROV_LABEL].append(f"{r['improv_pct']:+.2f}%")
                block[CI_LABEL].append("n/a" if math.isnan(r["ci_low_pct"]) else
                                       f"[{r['ci_low_pct']:+.1f}%, {r['ci_high_pct']:+.1f}%]")
                block[PVALUE_LABEL].append("n/a" if math.isnan(r["p_value"]) else f"{r['p_value']:.3g}")
                block[HOLM_LABEL].append("n/a" if math.isnan(r["p_holm"]) else f"{r['p_holm']:.3g}")
        for label in labels:
            row_tuples.append((b, label))
            cells.append(block[label])
            means.append([np.nan] * len(block[label]))

    for b in refs:
        for m in dict.fromkeys(t1.xs(b, level="backbone").index.get_level_values("method")):
            model_row("reference", b if m == "none" else f"{b} {_method_label(m, b)}", b, m)
    for b in backbones:
        for m in dict.fromkeys(t1.xs(b, level="backbone").index.get_level_values("method")):
            model_row(b, _method_label(m, b), b, m)
        if any((d, b, metric) in imp.index for d in datasets for metric in metrics):
            stat_rows(b)
    index = pd.MultiIndex.from_tuples(row_tuples, names=["backbone", "model"])
    display = pd.DataFrame(cells, index=index, columns=col_index, dtype=object)
    values = pd.DataFrame(means, index=index, columns=col_index, dtype=float)
    mask = _best_in_blocks(values, "backbone")
    return display, mask


def style_table1(frame: pd.DataFrame, metrics: Sequence[str] = TABLE1_METRICS, split: str = "test",
                 digits: int = 4, caption: str | None = None):
    """Table 1 as a Styler: mean ± std over seeds, the best mean per backbone in bold; the caption says
    which column was left out as redundant and what the cap mark means."""
    display, mask = format_table1(frame, metrics, split, digits)
    return _style(display, mask, "table1", "; ".join([caption or ""] + table1_notes(frame, metrics, split)).strip("; "),
                  frame)


def table1_notes(frame: pd.DataFrame, metrics: Sequence[str] = TABLE1_METRICS, split: str = "test") -> list[str]:
    """What a reader of Table 1 needs told: a left-out precision column, runs that hit their epoch cap."""
    notes = [f"{METRIC_LABELS.get(m, m)} left out: it equals {METRIC_LABELS.get('recall@' + m.split('@')[1])}/"
             f"{m.split('@')[1]} in every run (one held-out item per user)"
             for m in redundant_precision(frame, metrics, split)]
    if _capped(frame):
        notes.append(f"{CAP_MARK.strip()}: some run of the cell ended at its epoch cap, not by early stopping")
    return notes


# -- Table 2: per-modality Recall@20 --------------------------------------------------------------

def _modalities(frame: pd.DataFrame, split: str, metric: str) -> list[str]:
    prefix, suffix = f"{split}_", f"_{metric}"
    mods = []
    for c in frame.columns:
        if c.startswith(prefix) and c.endswith(suffix) and not c.startswith("teacher_"):
            middle = c[len(prefix):-len(suffix)]
            if middle:
                mods.append(middle)
    return mods


def table2(frame: pd.DataFrame, metric: str = "recall@20", split: str = "test",
           rows: Sequence[str] = TABLE2_ROWS) -> pd.DataFrame:
    """Per-modality ``metric`` of each model's uni-modal channels (paper Table 2).

    Rows ``(dataset, backbone, row)`` with row in ``rows``: ``backbone`` (plain
    BPR, method "none"), ``uni-teacher`` (CKD's uni-modal teachers, read from the
    CKD runs), ``GB``, ``OGM``, ``CKD``; columns ``(modality, stat)``. Rows whose
    runs are absent are left out.
    """
    mods = _modalities(frame, split, metric)
    pieces = []
    for (dataset, backbone), block in _completed(frame).groupby(["dataset", "backbone"], sort=False):
        for row in rows:
            if row == "uni-teacher":
                src = block[block["method"] == "ckd"]
                cols = {m: metric_column(split, metric, m, teacher=True) for m in mods}
            else:
                src = block[block["method"] == TABLE2_SOURCES.get(row, row)]
                cols = {m: metric_column(split, metric, m) for m in mods}
            cols = {m: c for m, c in cols.items() if c in src.columns and src[c].notna().any()}
            if src.empty or not cols:
                continue
            entry = {}
            for m, c in cols.items():
                vals = src[c].dropna().astype(float)
                entry[(m, "mean")] = float(vals.mean())
                entry[(m, "std")] = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
                entry[(m, "n")] = int(len(vals))
            pieces.append(pd.Series(entry, name=(dataset, backbone, row)))
    if not pieces:
        return pd.DataFrame()
    out = pd.DataFrame(pieces)
    out.index = pd.MultiIndex.from_tuples(out.index, names=["dataset", "backbone", "model"])
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["modality", "stat"])
    ordered = pd.MultiIndex.from_tuples([(m, s) for m in dict.fromkeys(out.columns.get_level_values(0))
                                         for s in STATS], names=["modality", "stat"])
    out = out.reindex(columns=ordered)
    for m in ordered.get_level_values(0).unique():
        out[(m, "n")] = out[(m, "n")].astype("Int64")
    return out


def _display_from_stats(table: pd.DataFrame, row_levels: tuple[str, str], col_levels: Sequence[str],
                        digits: int, label_row=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pivot a stats table indexed (dataset, block, row) with columns (col, stat) to (block,row) x (dataset,col)."""
    datasets = list(dict.fromkeys(table.index.get_level_values("dataset")))
    cols = list(col_levels)
    row_tuples = list(dict.fromkeys((b, r) for _, b, r in table.index))
    col_index = pd.MultiIndex.from_tuples([(d, c) for d in datasets for c in cols], names=["dataset", ""])
    index = pd.MultiIndex.from_tuples([(b, label_row(b, r) if label_row else r) for b, r in row_tuples],
                                      names=list(row_levels))
    display = pd.DataFrame("–", index=index, columns=col_index, dtype=object)
    values = pd.DataFrame(np.nan, index=index, columns=col_index, dtype=float)
    for (b, r), idx in zip(row_tuples, index):
        for d in datasets:
            key = (d, b, r)
            if key not in table.index:
                continue
            for c in cols:
                if (c, "mean") not in table.columns:
                    continue
                mean, std, n = (table.loc[key, (c, s)] for s in STATS)
                if pd.isna(mean):
                    continue
                display.loc[idx, (d, c)] = format_mean_std(float(mean), float(std), n, digits)
                values.loc[idx, (d, c)] = float(mean)
    return display, values


def format_table2(frame: pd.DataFrame, metric: str = "recall@20", split: str = "test",
                  digits: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paper layout of Table 2 (rows (backbone, model), columns (dataset, modality)) and its bold mask."""
    t2 = table2(frame, metric, split)
    if t2.empty:
        return pd.DataFrame(), pd.DataFrame()
    mods = list(dict.fromkeys(t2.columns.get_level_values("modality")))
    display, values = _display_from_stats(t2, ("backbone", "model"), mods, digits,
                                          label_row=lambda b, r: b if r == "backbone" else r)
    return display, _best_in_blocks(values, "backbone")


def style_table2(frame: pd.DataFrame, metric: str = "recall@20", split: str = "test", digits: int = 4,
                 caption: str | None = None):
    """Table 2 as a Styler: per-modality channel performance, best per backbone and column in bold."""
    display, mask = format_table2(frame, metric, split, digits)
    return _style(display, mask, "table2", caption, frame)


# -- Table 3: CKD ablation ------------------------------------------------------------------------

def table3(frame: pd.DataFrame, metric: str = "recall@20", split: str = "test",
           variants: Sequence[str] = tuple(ABLATION_VARIANTS), full: str = "CKD") -> pd.DataFrame:
    """``metric`` of each CKD variant (the frame's ``variant`` column) per (dataset, backbone).

    Returns a frame indexed ``(dataset, backbone, variant)`` with columns
    ``mean, std, n`` and ``delta_pct`` (relative change of the mean against the
    ``full`` variant of the same dataset and backbone, in percent).
    """
    col = metric_column(split, metric)
    agg = aggregate(frame, ["dataset", "backbone", "variant"], [col])[col]
    agg.columns.name = None
    agg = _sort_index(agg, {"dataset": list(dict.fromkeys(frame["dataset"])),
                            "backbone": list(dict.fromkeys(frame["backbone"])),
                            "variant": _ordered(frame["variant"], variants)})
    full_means = agg.xs(full, level="variant")["mean"] if full in agg.index.get_level_values("variant") else None
    deltas = []
    for (d, b, _), row in agg.iterrows():
        ref = full_means.get((d, b), np.nan) if full_means is not None else np.nan
        deltas.append(100.0 * (row["mean"] - ref) / ref if ref and not np.isnan(ref) else np.nan)
    agg["delta_pct"] = deltas
    agg["n"] = agg["n"].astype(int)
    return agg


def format_table3(frame: pd.DataFrame, metric: str = "recall@20", split: str = "test", digits: int = 4,
                  full: str = "CKD") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paper layout of Table 3 (rows (backbone, variant), columns dataset) and its bold mask."""
    t3 = table3(frame, metric, split, full=full)
    stats = t3[list(STATS)].copy()
    stats.columns = pd.MultiIndex.from_tuples([(METRIC_LABELS.get(metric, metric), s) for s in STATS])
    display, values = _display_from_stats(stats, ("backbone", "variant"), [METRIC_LABELS.get(metric, metric)],
                                          digits,
                                          label_row=lambda b, r: f"{b} + CKD" if r == full else r)
    display.columns = display.columns.droplevel(1)
    values.columns = values.columns.droplevel(1)
    return display, _best_in_blocks(values, "backbone")


def style_table3(frame: pd.DataFrame, metric: str = "recall@20", split: str = "test", digits: int = 4,
                 caption: str | None = None):
    """Table 3 as a Styler: each CKD variant's ``metric``, the best per backbone and dataset in bold."""
    display, mask = format_table3(frame, metric, split, digits)
    return _style(display, mask, "table3", caption, frame)


# -- pilot study and training dynamics ---------------------------------------------------------

def _get(result, name):
    return result[name] if isinstance(result, Mapping) else getattr(result, name)


def pilot_summary(multimodal, unimodal: Mapping, metric: str = "recall@20", split: str = "test") -> pd.DataFrame:
    """The pilot study's numbers: each channel of the multimodal model against its uni-modal model.

    One row per modality plus ``all modalities`` (the multimodal model itself),
    columns: ``multimodal model`` (the channel's ``metric`` inside the
    multimodal model, or the model overall), ``uni-modal model`` (the model
    trained on that modality alone), ``gap`` (uni-modal minus channel),
    ``gap_pct`` (gap relative to the uni-modal model), ``best_epoch`` of the
    multimodal and of the uni-modal model.
    """
    mm_split = _get(multimodal, split)
    mm_by = _get(multimodal, f"{split}_by_modality")
    rows = {"all modalities": {"multimodal model": mm_split.get(metric, np.nan), "uni-modal model": np.nan,
                               "gap": np.nan, "gap_pct": np.nan,
                               "multimodal best_epoch": _get(multimodal, "best_epoch"),
                               "uni-modal best_epoch": np.nan}}
    for m, res in unimodal.items():
        channel = mm_by.get(m, {}).get(metric, np.nan)
        alone = _get(res, split).get(metric, np.nan)
        rows[m] = {"multimodal model": channel, "uni-modal model": alone, "gap": alone - channel,
                   "gap_pct": 100.0 * (alone - channel) / alone if alone else np.nan,
                   "multimodal best_epoch": _get(multimodal, "best_epoch"),
                   "uni-modal best_epoch": _get(res, "best_epoch")}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = f"{split} {metric}"
    return out


def pilot_findings(summary: pd.DataFrame, tolerance: float = 0.0) -> str:
    """Plain-language reading of :func:`pilot_summary` against the paper's three observations.

    Each line states what *this* run measured: whether each channel falls short
    of its uni-modal model (observation 1), whether a uni-modal model beats the
    multimodal one (observation 2), and which modality has the larger relative
    gap (observation 3: the weaker modality should be the more under-optimised).
    """
    col = summary.index.name or "metric"
    mods = [m for m in summary.index if m != "all modalities"]
    overall = summary.loc["all modalities", "multimodal model"]
    lines = [f"{col}: multimodal model {overall:.4f}"]
    for m in mods:
        r = summary.loc[m]
        verdict = ("below its uni-modal model (under-optimised)" if r["gap"] > tolerance
                   else "not below its uni-modal model")
        lines.append(f"(1) {m}: channel {r['multimodal model']:.4f} vs {m}-only model {r['uni-modal model']:.4f}, "
                     f"gap {r['gap']:+.4f} ({r['gap_pct']:+.1f}%): {verdict}")
    for m in mods:
        alone = summary.loc[m, "uni-modal model"]
        relation = "beats" if alone > overall else "does not beat"
        lines.append(f"(2) {m}-only model {alone:.4f} {relation} the multimodal model {overall:.4f}")
    if len(mods) >= 2:
        weakest = min(mods, key=lambda m: summary.loc[m, "uni-modal model"])
        largest = max(mods, key=lambda m: summary.loc[m, "gap_pct"])
        agree = "as the paper observes" if weakest == largest else "unlike the paper's observation"
        lines.append(f"(3) weakest modality (lowest uni-modal score): {weakest}; largest relative gap: {largest} "
                     f"({agree})")
    return "\n".join(lines)


def dynamics_summary(ckd_result, metric: str = "recall@20", every: int = 1) -> pd.DataFrame:
    """Per evaluated epoch of a CKD run: mean rho and lambda per modality and validation ``metric`` per channel.

    Columns are ``(quantity, modality)`` with quantity in ``rho``, ``lambda``,
    ``valid`` (the channel's ``metric``) and ``valid``/``all`` for the full model.
    """
    history = _get(ckd_result, "history")
    rows = {}
    for h in history[::max(int(every), 1)]:
        row = {}
        for q in ("rho", "lambda"):
            for m, v in (h.get(q) or {}).items():
                row[(q, m)] = v
        for m, v in (h.get("valid_by_modality") or {}).items():
            row[("valid", m)] = v.get(metric, np.nan)
        row[("valid", "all")] = (h.get("valid") or {}).get(metric, np.nan)
        rows[h["epoch"]] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    if not out.empty:
        out.columns = pd.MultiIndex.from_tuples(out.columns, names=["quantity", "modality"])
    out.index.name = "epoch"
    return out


def runs_overview(frame: pd.DataFrame, metric: str = "recall@20", split: str = "test") -> pd.DataFrame:
    """A compact view of a grid frame: identity, epochs and ``metric`` overall and per channel.

    Deterministic for a given configuration (no timings, no cache flag), so the
    notebooks check it against their stored outputs.
    """
    mods = _modalities(frame, split, metric)
    cols = [c for c in ("dataset", "backbone", "method", "variant", "seed", "best_epoch", "epochs_run")
            if c in frame.columns and (c != "variant" or frame[c].astype(bool).any())]
    metric_cols = [metric_column(split, metric)] + [metric_column(split, metric, m) for m in mods]
    return frame[cols + [c for c in metric_cols if c in frame.columns]]


def numeric_round(frame: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """``frame`` with floats rounded to ``digits`` (stable text for checked notebook outputs)."""
    return frame.round(digits)


# -- the summary page's input ------------------------------------------------------------------------

def improvement_summary(frame: pd.DataFrame, metric: str = "recall@20", split: str = "test") -> dict:
    """CKD's improvement per backbone as plain data (what ``reports/index.html`` shows per report):
    ``{"metric", "backbones": {name: {improv_pct, ci_low_pct, ci_high_pct, p_value, p_holm, n_pairs,
    baseline_mean, treatment_mean, capped}}, "provenance"}``. JSON-ready: NaN becomes None."""
    imp = improvement(frame, [metric], split)
    capped = _capped(frame)

    def plain(value):
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    backbones = {}
    for (dataset, backbone, _), r in imp.iterrows():
        fields = ("improv_pct", "ci_low_pct", "ci_high_pct", "p_value", "p_holm", "baseline_mean", "treatment_mean")
        backbones[backbone] = {name: plain(float(r[name])) for name in fields}
        backbones[backbone]["n_pairs"] = int(r["n_pairs"])
        backbones[backbone]["capped"] = any((dataset, backbone, m) in capped for m in ("none", "ckd"))
    return {"metric": metric, "split": split, "backbones": backbones, "provenance": provenance_line(frame)}
