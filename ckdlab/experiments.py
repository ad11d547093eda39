"""Experiment runner: ``run(config)`` -> Result, cached on disk by configuration and data.

Building blocks for the notebooks and reports:

``run(config, dataset)``
    One configuration, trained or read from the result cache.
``grid(configs, dataset)``
    Many configurations -> one :class:`pandas.DataFrame` row per run, with the
    metrics flattened into columns (see :func:`metric_column`).
``make_config``, ``product``, ``seeds_product``, ``table_configs``, ``ablation_configs``
    Configuration lists for the paper's tables, built the same way everywhere so
    that the notebooks share cached runs.
``pilot(backbone, dataset)``
    The pilot study of Figure 1: a multimodal model and one uni-modal model per modality.
``setup(threads=1)``
    Single-threaded torch (identical numbers run to run on CPU) and the plot style.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from .cache import resolve_cache_dir
from .config import TrainConfig
from .result import Result

#: Bump when a change alters the numbers a cached result would hold.
RESULT_FORMAT = 1

#: Table 3's CKD variants: label -> CKD option overrides.
ABLATION_VARIANTS: dict[str, dict] = {
    "CKD": {},
    "w/o generic": {"generic": False},
    "w/o re-weight": {"reweight": "none"},
    "repl. KL": {"specific": "kl"},
    "repl. MSE": {"specific": "mse"},
}

#: Balancing methods in the order of the paper's tables.
METHODS = ("none", "gb", "ogm", "ckd")


def load_dataset(spec):
    """A Dataset from a Dataset, a folder path, or ``"synthetic"``."""
    from .data import Dataset, load

    return spec if isinstance(spec, Dataset) else load(str(spec))


def result_key(config: TrainConfig, dataset) -> str:
    payload = json.dumps({"config": config.identity(), "data": dataset.fingerprint, "format": RESULT_FORMAT},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def result_path(config: TrainConfig, dataset, cache_dir=None) -> Path:
    return resolve_cache_dir(cache_dir) / "results" / f"{result_key(config, dataset)}.json"


def run(config: TrainConfig, dataset="synthetic", *, cache_dir=None, use_cache: bool = True) -> Result:
    """Train and evaluate one configuration, or read its cached Result.

    The cache key is a hash of every field of ``config`` that changes the
    numbers and of the dataset's content fingerprint; the result is written
    atomically, so a killed run leaves no half-written file. A Result read from
    the cache has ``extras["cached"] = True``.
    """
    from .train import fit

    dataset = load_dataset(dataset)
    path = result_path(config, dataset, cache_dir)
    if use_cache and path.exists():
        result = Result.from_json(path)
        result.extras["cached"] = True
        return result
    result = fit(dataset, config, cache_dir=cache_dir)
    if use_cache:
        result.to_json(path)
    return result


# -- session set-up ----------------------------------------------------------------------------

def setup(threads: int | None = 1, plot_style: bool = True) -> None:
    """Notebook/report set-up: ``torch.set_num_threads(threads)`` and the paper plot style.

    One thread gives identical numbers run to run on CPU (the notebooks' checked
    outputs rely on it) and does not oversubscribe a shared machine. ``None``
    leaves torch's default.
    """
    import warnings

    import torch

    if threads:
        torch.set_num_threads(int(threads))
    # tqdm.auto without ipywidgets falls back to text bars (fine) but warns on every import
    warnings.filterwarnings("ignore", message="IProgress not found")
    if plot_style:
        from .plots import use_paper_style

        use_paper_style()


# -- building configurations -------------------------------------------------------------------

def make_config(backbone: str = "VBPR", method: str = "none", *, seed: int = 0, max_epochs: int = 200,
                teacher_epochs: int | None = None, device: str = "auto", backbone_params: dict | None = None,
                method_params: dict | None = None, **fields) -> TrainConfig:
    """One TrainConfig, built the same way by every notebook (so they share cached runs).

    Parameters
    ----------
    teacher_epochs : int, optional
        For ``method="ckd"``: ``max_epochs`` of the uni-modal teachers
        (``method_params["teacher"]["max_epochs"]``); None: the student's.
    method_params : dict, optional
        Options of ``method``; may also be keyed by method name
        (``{"ckd": {...}, "gb": {...}}``), in which case only ``method``'s entry is used.
    backbone_params : dict, optional
        Backbone hyperparameters; may also be keyed by backbone name (case-insensitive).
    **fields
        Any other TrainConfig field (``lr``, ``patience``, ``progress``, ...).
    """
    params = _select(method_params, method, METHODS)
    if method == "ckd" and teacher_epochs is not None:
        teacher = dict(params.get("teacher", {}))
        teacher.setdefault("max_epochs", int(teacher_epochs))
        params = {**params, "teacher": teacher}
    bparams = _select_backbone(backbone_params, backbone)
    return TrainConfig(backbone=backbone, method=method, seed=int(seed), max_epochs=int(max_epochs),
                       device=device, backbone_params=bparams, method_params=params, **fields)


def _select(params: dict | None, key: str, keys: Iterable[str]) -> dict:
    params = dict(params or {})
    if params and set(params) <= set(keys):
        return dict(params.get(key, {}))
    return params


def _select_backbone(params: dict | None, backbone: str) -> dict:
    params = dict(params or {})
    if params and all(isinstance(v, Mapping) for v in params.values()):
        from .backbones import available

        names = {n.lower() for n in available()}
        if {k.lower() for k in params} <= names:
            return dict({k.lower(): v for k, v in params.items()}.get(backbone.lower(), {}))
    return params


def product(base: TrainConfig | Mapping | None = None, **axes) -> list[TrainConfig]:
    """The Cartesian product of ``axes`` over ``base``.

    Each axis is a TrainConfig field (``seed=[0, 1]``, ``method=["none", "ckd"]``)
    or a hyperparameter ``backbone.NAME`` / ``method.NAME`` (pass those through a
    dict: ``product(base, **{"method.lambda_kd": [0.01, 0.1]})``). A list is an
    axis; any other value (including a tuple, e.g. ``ablate=("image",)``) is set as is.
    """
    if base is None:
        base = TrainConfig()
    elif isinstance(base, Mapping):
        base = TrainConfig.from_dict(dict(base))
    names = list(axes)
    values = [v if isinstance(v, list) else [v] for v in axes.values()]
    out = []
    for combo in itertools.product(*values):
        cfg = base.to_dict()
        cfg["backbone_params"] = dict(cfg["backbone_params"])
        cfg["method_params"] = dict(cfg["method_params"])
        for name, value in zip(names, combo):
            if name.startswith("backbone."):
                cfg["backbone_params"][name[len("backbone."):]] = value
            elif name.startswith("method."):
                cfg["method_params"][name[len("method."):]] = value
            else:
                cfg[name] = value
        out.append(TrainConfig.from_dict(cfg))
    return out


def seeds_product(configs: TrainConfig | Iterable[TrainConfig], seeds: Iterable[int]) -> list[TrainConfig]:
    """Every config once per seed (config-major order)."""
    configs = [configs] if isinstance(configs, TrainConfig) else list(configs)
    return [c.replace(seed=int(s)) for c in configs for s in seeds]


def table_configs(backbones: str | Iterable[str] = ("VBPR",), methods: Iterable[str] = METHODS,
                  seeds: Iterable[int] = (0,), **kw) -> list[TrainConfig]:
    """Tables 1 and 2: every backbone x method x seed (``kw`` go to :func:`make_config`)."""
    backbones = [backbones] if isinstance(backbones, str) else list(backbones)
    return [make_config(b, m, seed=s, **kw) for b in backbones for m in methods for s in seeds]


def ablation_configs(backbones: str | Iterable[str] = ("VBPR",), seeds: Iterable[int] = (0,),
                     variants: Mapping[str, dict] | None = None, method_params: dict | None = None,
                     **kw) -> list[tuple[str, TrainConfig]]:
    """Table 3: ``(variant label, config)`` for every backbone x CKD variant x seed.

    ``variants`` defaults to :data:`ABLATION_VARIANTS`; each variant's options are
    applied over the CKD options ``method_params`` (plain, or keyed by method name
    as for :func:`make_config`). The ``"CKD"`` variant is the same configuration as
    Table 1's CKD run, so the two share the cached result.
    """
    ckd_params = _select(method_params, "ckd", METHODS)
    backbones = [backbones] if isinstance(backbones, str) else list(backbones)
    variants = ABLATION_VARIANTS if variants is None else variants
    out = []
    for b in backbones:
        for label, options in variants.items():
            for s in seeds:
                out.append((label, make_config(b, "ckd", seed=s, method_params={**(ckd_params or {}), **options},
                                               **kw)))
    return out


# -- running many configurations ----------------------------------------------------------------

def metric_column(split: str, metric: str, modality: str | None = None, teacher: bool = False) -> str:
    """Column name of a flattened metric in a :func:`grid` frame.

    ``metric_column("test", "recall@20")`` -> ``"test_recall@20"``;
    with ``modality="image"`` -> ``"test_image_recall@20"`` (the image channel of
    the model); with ``teacher=True`` -> ``"teacher_test_image_recall@20"`` (CKD's
    uni-modal teacher of that modality).
    """
    name = f"{split}_{modality}_{metric}" if modality else f"{split}_{metric}"
    return f"teacher_{name}" if teacher else name


def result_row(result: Result, *, key: str | None = None, variant: str | None = None) -> dict:
    """One flat row: identity, bookkeeping and every metric of ``result``."""
    cfg = result.config
    row = {
        "dataset": result.dataset.get("name"),
        "backbone": cfg.get("backbone"),
        "method": cfg.get("method"),
        "variant": variant if variant is not None else "",
        "seed": cfg.get("seed"),
        "ablate": ",".join(cfg.get("ablate") or ()),
        "key": key,
        "cached": bool(result.extras.get("cached", False)),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "sec_per_epoch": result.timing.get("train_seconds_per_epoch"),
        "eval_seconds": result.timing.get("eval_seconds"),
        "train_seconds": result.timing.get("total_train_seconds"),
        "device": result.timing.get("device"),
    }
    for split in ("valid", "test"):
        for metric, value in getattr(result, split).items():
            row[metric_column(split, metric)] = value
        for m, metrics in getattr(result, f"{split}_by_modality").items():
            for metric, value in metrics.items():
                row[metric_column(split, metric, m)] = value
    for m, teacher in (result.extras.get("teachers") or {}).items():
        for split in ("valid", "test"):
            for metric, value in (teacher.get(split) or {}).items():
                row[metric_column(split, metric, m, teacher=True)] = value
        row[f"teacher_{m}_best_epoch"] = teacher.get("best_epoch")
    return row


def _progress(iterable, total: int, enabled: bool, desc: str):
    """tqdm over ``iterable``: widgets in a notebook when ipywidgets is installed, else text."""
    try:
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="run", disable=not enabled, file=sys.stderr,
                mininterval=1.0, dynamic_ncols=True)


def _normalise_configs(configs) -> list[tuple[str | None, TrainConfig]]:
    if isinstance(configs, TrainConfig):
        return [(None, configs)]
    if isinstance(configs, Mapping):
        if all(isinstance(v, (TrainConfig, list, tuple)) for v in configs.values()) and configs:
            out = []
            for label, value in configs.items():
                items = [value] if isinstance(value, TrainConfig) else list(value)
                out += [(str(label), c) for c in items]
            return out
        spec = dict(configs)  # product spec: {"backbone": [...], "seed": [...], "max_epochs": 10, ...}
        base = spec.pop("base", None)
        return [(None, c) for c in product(base, **spec)]
    out = []
    for item in configs:
        if isinstance(item, TrainConfig):
            out.append((None, item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], TrainConfig):
            out.append((str(item[0]), item[1]))
        else:
            raise TypeError(f"grid expects TrainConfig or (label, TrainConfig) items, got {type(item).__name__}")
    return out


def grid(configs, dataset="synthetic", cache_dir=None, progress: bool = True, *, use_cache: bool = True,
         return_results: bool = False):
    """Run (or read from cache) every configuration; one DataFrame row per run.

    Parameters
    ----------
    configs
        A TrainConfig; a list of TrainConfig or ``(label, TrainConfig)`` pairs
        (the label fills the ``variant`` column, e.g. Table 3's variants); a dict
        ``{label: TrainConfig or list}``; or a product spec dict
        ``{"base": TrainConfig or dict, field: value or [values], ...}`` (see :func:`product`).
    dataset
        Dataset, folder or ``"synthetic"``; loaded once.
    cache_dir
        Result/teacher cache (default ``$CKDLAB_CACHE`` or ``~/.cache/ckdlab``).
    progress
        A tqdm bar over runs.
    return_results
        Also return the list of Result objects (same order as the rows).

    Returns
    -------
    DataFrame (or ``(DataFrame, [Result])``)
        Columns: ``dataset, backbone, method, variant, seed, ablate, key, cached,
        best_epoch, epochs_run, sec_per_epoch, eval_seconds, train_seconds, device``,
        then every metric as ``valid_<metric>``, ``test_<metric>``,
        ``<split>_<modality>_<metric>`` (uni-modal channels) and, for CKD runs,
        ``teacher_<split>_<modality>_<metric>`` and ``teacher_<modality>_best_epoch``.
    """
    import pandas as pd

    items = _normalise_configs(configs)
    data = load_dataset(dataset)
    rows, results = [], []
    bar = _progress(items, len(items), progress, desc=f"runs on {data.name}")
    for label, config in bar:
        bar.set_postfix_str(f"{config.backbone}/{config.method}{'/' + label if label else ''} seed {config.seed}")
        result = run(config, data, cache_dir=cache_dir, use_cache=use_cache)
        rows.append(result_row(result, key=result_key(config, data), variant=label))
        results.append(result)
    bar.close()
    frame = pd.DataFrame(rows)
    return (frame, results) if return_results else frame


def cache_status(runs) -> str:
    """One line, ``"cached runs: k/n"``: how many runs were read from the cache (the notebooks print it).

    ``runs`` is a :func:`grid` frame or a list of Results.
    """
    if hasattr(runs, "columns"):
        flags = [bool(v) for v in runs["cached"]] if len(runs) else []
    else:
        flags = [bool(r.extras.get("cached", False)) for r in runs]
    return f"cached runs: {sum(flags)}/{len(flags)}"


def load_results(frame, cache_dir=None) -> list[Result]:
    """The cached Result behind each row of a :func:`grid` frame (by its ``key`` column)."""
    root = resolve_cache_dir(cache_dir) / "results"
    return [Result.from_json(root / f"{k}.json") for k in frame["key"]]


# -- the pilot study (paper section 2.3, Figure 1) ------------------------------------------------

def pilot_configs(backbone: str, modalities: Iterable[str], *, seed: int = 0, max_epochs: int = 50,
                  **kw) -> tuple[TrainConfig, dict[str, TrainConfig]]:
    """The multimodal configuration and, per modality m, the uni-modal one (every other modality ablated)."""
    modalities = list(modalities)
    multimodal = make_config(backbone, "none", seed=seed, max_epochs=max_epochs, eval_by_modality=True, **kw)
    unimodal = {m: multimodal.replace(ablate=tuple(o for o in modalities if o != m), eval_by_modality=False)
                for m in modalities}
    return multimodal, unimodal


def pilot(backbone: str = "VBPR", dataset="synthetic", seed: int = 0, max_epochs: int = 50, cache_dir=None,
          *, use_cache: bool = True, progress: bool = True, **kw) -> tuple[Result, dict[str, Result]]:
    """Figure 1's runs: the multimodal model and one uni-modal model per modality.

    The multimodal model is trained on every modality and evaluated each epoch
    overall and per uni-modal channel (``eval_by_modality``). The uni-modal model
    of m is the same backbone trained and evaluated with every other modality
    mean-ablated. All use early stopping, so their curves end at different epochs.

    Returns
    -------
    (multimodal Result, {modality: uni-modal Result})
    """
    data = load_dataset(dataset)
    multimodal, unimodal = pilot_configs(backbone, data.modalities, seed=seed, max_epochs=max_epochs, **kw)
    configs = [("multimodal", multimodal)] + [(m, c) for m, c in unimodal.items()]
    _, results = grid(configs, data, cache_dir, progress, use_cache=use_cache, return_results=True)
    return results[0], dict(zip(unimodal, results[1:]))
