"""Figures: the pilot study (paper Figure 1) and CKD's training dynamics.

Every function takes :class:`ckdlab.result.Result` objects (or their dict
form, as stored in the result cache) and returns a matplotlib Figure sized for
a paper column (3.5 in) or the full page width (7.2 in), with labelled axes.

``use_paper_style()``
    Font sizes and line widths readable at paper size (called by ``experiments.setup``).
``pilot_figure(multimodal_result, unimodal_results)``
    Validation metric over epochs: the multimodal model (black, solid), its
    uni-modal channels (dashed) and the uni-modal models (solid, one colour per
    modality), the gap between a channel and its uni-modal model shaded.
``dynamics_figure(ckd_result)``
    rho and lambda per modality over training (per-epoch means and the per-step
    trace) next to the per-modality validation curves.
``save_figure(fig, stem, directory=".")``
    Writes ``stem.png`` and ``stem.svg``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

COLUMN_WIDTH = 3.5  # inches, one column of a two-column paper
PAGE_WIDTH = 7.2
MULTIMODAL_COLOR = "black"
METRIC_NAMES = {"recall": "Recall", "ndcg": "NDCG", "precision": "Precision"}

PAPER_RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 6.5,
    "legend.frameon": False,
    "lines.linewidth": 1.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "figure.dpi": 130,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "svg.hashsalt": "ckdlab",  # stable SVG ids
    "svg.fonttype": "none",  # text stays text in the SVG
}


def use_paper_style() -> None:
    """Apply :data:`PAPER_RC` (fonts 7-8 pt: readable when the figure is printed at column width)."""
    plt.rcParams.update(PAPER_RC)


def metric_label(metric: str) -> str:
    """``"recall@20"`` -> ``"Recall@20"``."""
    name, _, k = metric.partition("@")
    return f"{METRIC_NAMES.get(name, name)}@{k}" if k else METRIC_NAMES.get(name, name)


def modality_colors(modalities: Sequence[str]) -> dict[str, tuple]:
    """A colour per modality (colour-blind-safe palette, stable for a given modality order)."""
    import seaborn as sns

    palette = sns.color_palette("colorblind", max(len(modalities), 3))
    return {m: palette[i] for i, m in enumerate(modalities)}


def _get(result, name, default=None):
    if isinstance(result, Mapping):
        return result.get(name, default)
    if name in ("trace", "teachers"):
        return getattr(result, "extras", {}).get(name, default)
    return getattr(result, name, default)


def curve(result, metric: str = "recall@20", modality: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)`` of the validation ``metric`` from a result's history.

    ``modality=None``: the model itself; else its uni-modal channel (history
    ``valid_by_modality``; empty when the run did not evaluate channels).
    """
    xs, ys = [], []
    for h in _get(result, "history", []) or []:
        if modality is None:
            value = (h.get("valid") or {}).get(metric)
        else:
            value = ((h.get("valid_by_modality") or {}).get(modality) or {}).get(metric)
        if value is not None:
            xs.append(h["epoch"])
            ys.append(value)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _title(result) -> str:
    cfg = _get(result, "config", {}) or {}
    data = (_get(result, "dataset", {}) or {}).get("name", "")
    return f"{cfg.get('backbone', '')} on {data}".strip()


def pilot_figure(multimodal_result, unimodal_results: Mapping, metric: str = "recall@20", ax=None,
                 title: str | None = None, figsize: tuple[float, float] = (COLUMN_WIDTH, 3.1), shade: bool = True):
    """Paper Figure 1: under-optimisation of each modality inside the multimodal model.

    Parameters
    ----------
    multimodal_result : Result
        The model trained on every modality, evaluated per channel every epoch.
    unimodal_results : {modality: Result}
        The same backbone trained with every other modality mean-ablated.
    metric : str
        Validation metric on the y axis.
    ax : matplotlib Axes, optional
        Draw into this axes instead of a new figure.
    shade : bool
        Shade the gap between each channel (dashed) and its uni-modal model (solid).

    Returns
    -------
    matplotlib Figure
    """
    own_figure = ax is None
    if own_figure:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    else:
        fig = ax.figure
    modalities = list(unimodal_results)
    colors = modality_colors(modalities)
    x, y = curve(multimodal_result, metric)
    ax.plot(x, y, color=MULTIMODAL_COLOR, label="multimodal model")
    for m in modalities:
        c = colors[m]
        xc, yc = curve(multimodal_result, metric, m)
        xu, yu = curve(unimodal_results[m], metric)
        ax.plot(xu, yu, color=c, label=f"{m}-only model")
        if len(xc):
            ax.plot(xc, yc, color=c, linestyle="--", label=f"{m} channel of multimodal")
        if shade and len(xc) and len(xu):
            common = np.intersect1d(xc, xu)
            if len(common) > 1:
                lo = yc[np.isin(xc, common)]
                hi = yu[np.isin(xu, common)]
                ax.fill_between(common, lo, hi, color=c, alpha=0.18, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric_label(metric)}")
    ax.set_title(title if title is not None else f"Pilot study: {_title(multimodal_result)}")
    ax.set_xlim(left=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if own_figure:
        fig.legend(loc="outside lower center", ncol=2, handlelength=2.4, columnspacing=1.2)
    else:
        ax.legend(loc="lower right", handlelength=2.4)
    return fig


def _steps_per_epoch(result) -> float | None:
    cfg = _get(result, "config", {}) or {}
    n_train = ((_get(result, "dataset", {}) or {}).get("interactions") or {}).get("train")
    if n_train and cfg.get("batch_size"):
        return float(math.ceil(n_train / cfg["batch_size"]))
    trace = _get(result, "trace", []) or []
    first = [t["step"] for t in trace if t.get("epoch") == 1]
    return float(max(first)) if first else None


def dynamics_figure(ckd_result, metric: str = "recall@20", figsize: tuple[float, float] = (PAGE_WIDTH, 2.6),
                    show_trace: bool = True, show_teachers: bool = True):
    """CKD's counterfactual weights over training, next to the per-modality validation curves.

    Panels: (a) rho^m (the modality's conditional learning speed, eq. 17), (b)
    lambda_m (its distillation weight, eq. 18), (c) validation ``metric`` of the
    model and of each uni-modal channel, with each teacher's validation score
    (dotted). In (a) and (b) markers are per-epoch means (history, drawn at the
    middle of the epoch) and the thin line is the per-step trace (every
    ``trace_every`` steps, x = step / steps per epoch).

    Returns
    -------
    matplotlib Figure
    """
    history = _get(ckd_result, "history", []) or []
    modalities = list(dict.fromkeys(m for h in history for m in (h.get("rho") or {})))
    if not modalities:
        modalities = list(((_get(ckd_result, "dataset", {}) or {}).get("modalities") or {}))
    colors = modality_colors(modalities)
    fig, axes = plt.subplots(1, 3, figsize=figsize, layout="constrained")
    trace = _get(ckd_result, "trace", []) or []
    spe = _steps_per_epoch(ckd_result)
    for ax, key, ylabel in ((axes[0], "rho", "ρ (conditional learning speed)"),
                            (axes[1], "lambda", "λ (distillation weight)")):
        for m in modalities:
            c = colors[m]
            if show_trace and trace and spe:
                tx = np.asarray([t["step"] / spe for t in trace if m in (t.get(key) or {})])
                ty = np.asarray([t[key][m] for t in trace if m in (t.get(key) or {})])
                ax.plot(tx, ty, color=c, linewidth=0.6, alpha=0.55)
            ex = np.asarray([h["epoch"] - 0.5 for h in history if m in (h.get(key) or {})])
            ey = np.asarray([h[key][m] for h in history if m in (h.get(key) or {})])
            ax.plot(ex, ey, color=c, marker="o", markersize=2.5, linewidth=1.0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_xlim(left=0)
    axes[0].axhline(0.0, color="grey", linewidth=0.6)
    ax = axes[2]
    x, y = curve(ckd_result, metric)
    ax.plot(x, y, color=MULTIMODAL_COLOR)
    teachers = _get(ckd_result, "teachers", {}) or {}
    for m in modalities:
        xc, yc = curve(ckd_result, metric, m)
        if len(xc):
            ax.plot(xc, yc, color=colors[m], linestyle="--")
        tv = ((teachers.get(m) or {}).get("valid") or {}).get(metric)
        if show_teachers and tv is not None:
            ax.axhline(tv, color=colors[m], linestyle=":", linewidth=1.0)
    best = _get(ckd_result, "best_epoch")
    if best:
        ax.axvline(best, color="grey", linewidth=0.6, linestyle="-.")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric_label(metric)}")
    ax.set_xlim(left=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for label, a in zip("abc", axes):
        a.set_title(f"({label})", loc="left")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[m], linewidth=2.0, label=m) for m in modalities]
    handles += [Line2D([], [], color="grey", marker="o", markersize=2.5, linewidth=1.0, label="per-epoch mean"),
                Line2D([], [], color="grey", linewidth=0.6, alpha=0.7, label="per-step trace"),
                Line2D([], [], color=MULTIMODAL_COLOR, label="student, all modalities"),
                Line2D([], [], color="grey", linestyle="--", label="student's uni-modal channel"),
                Line2D([], [], color="grey", linestyle=":", label="uni-modal teacher"),
                Line2D([], [], color="grey", linestyle="-.", linewidth=0.6, label="best epoch")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8), handlelength=2.2,
               columnspacing=1.0)
    fig.suptitle(f"CKD training dynamics: {_title(ckd_result)}")
    return fig


def save_figure(fig, stem: str | Path, directory: str | Path | None = ".", formats: Sequence[str] = ("png", "svg"),
                dpi: int = 300) -> list[Path]:
    """Write ``fig`` as ``<directory>/<stem>.<fmt>`` for each format; returns the paths.

    ``directory=None`` writes nothing and returns ``[]`` (the notebooks' default:
    figures are saved only when a report asks for them). Timestamps are left
    out of the files' metadata, so the same figure gives the same bytes.
    """
    if directory is None:
        return []
    base = Path(directory) / stem
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = base.with_name(f"{base.name}.{fmt}")
        metadata = {"Date": None} if fmt == "svg" else ({"Software": None} if fmt == "png" else None)
        fig.savefig(path, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    return paths
