"""Experiment runner: ``run(config)`` -> Result, cached on disk by configuration and data.

Building blocks for the notebooks and reports:

``run(config, dataset)``
    One configuration, trained or read from the result cache.
``grid(configs, dataset)``
    Many configurations -> one :class:`pandas.DataFrame` row per run, with the
    metrics flattened into columns (see :func:`metric_column`). Runs missing
    from the cache train in parallel on local processes or on any
    :class:`concurrent.futures.Executor` (e.g. a Dask cluster's).
``make_config``, ``product``, ``seeds_product``, ``table_configs``, ``ablation_configs``
    Configuration lists for the paper's tables, built the same way everywhere so
    that the notebooks share cached runs.
``pilot(backbone, dataset)``
    The pilot study of Figure 1: a multimodal model and one uni-modal model per modality.
``setup(threads=1)``
    Single-threaded torch (identical numbers run to run on CPU) and the plot style.

Hyperparameter search (``ckdlab.tune`` / :func:`ckdlab.tuning.tune`) lives in
its own module, which builds on this one (never the reverse).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from pathlib import Path

from . import records, store
from .cache import resolve_cache_dir
from .config import TrainConfig
from .executors import INLINE
from .faults import TrainingDiverged
from .provenance import numbers_identity
from .result import RESULT_SCHEMA, Result
from .threads import ENV as THREADS_ENV

#: Bump when a change alters the numbers a cached result would hold (or how entries are stored).
#: 2: entries carry an integrity envelope (:func:`ckdlab.store.write_json`).
RESULT_FORMAT = 2

#: Schema name of failure records (``results/<key>.failed.json``).
FAILURE_SCHEMA = "ckdlab.failure"

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


def load_dataset(spec, normalize="default"):
    """A Dataset from a Dataset, a folder path, or ``"synthetic"``.

    ``normalize`` (``"default"``, None, ``"standardize"``, ``"l2"`` or
    ``{modality: method}``) is the loader's feature normalisation
    (:mod:`ckdlab.data.normalize`; ``"default"``: the loader's default for a
    folder); it is a property of the data, not of a TrainConfig. A Dataset passed
    in is used as it is unless a normalisation is named.
    """
    from .data import Dataset, load, normalize_dataset
    from .data.normalize import DEFAULT

    if isinstance(spec, Dataset):
        return normalize_dataset(spec, None if normalize == DEFAULT else normalize)
    return load(str(spec), normalize=normalize)


def _serves(result: Result | None, config: TrainConfig) -> bool:
    """A cached result answers ``config`` unless it lacks the channel curves ``config`` asks for."""
    if result is None:
        return False
    return not config.eval_by_modality or any(h.get("valid_by_modality") for h in result.history)


def result_key(config: TrainConfig, dataset) -> str:
    """Configuration identity, data fingerprint, format and :func:`~ckdlab.provenance.numbers_identity`."""
    return store.entry_key(config=config.identity(), data=dataset.fingerprint, format=RESULT_FORMAT,
                           **numbers_identity(config.device))


def entry_meta(config: TrainConfig, dataset) -> dict:
    """What ``ckdlab cache list`` shows of an entry: its numbers identity and which run it is."""
    return {**numbers_identity(config.device), "run": f"{config.backbone}/{config.method} seed {config.seed}",
            "dataset": dataset.name}


def result_path(config: TrainConfig, dataset, cache_dir=None) -> Path:
    return resolve_cache_dir(cache_dir) / "results" / f"{result_key(config, dataset)}.json"


def failure_path(config: TrainConfig, dataset, cache_dir=None) -> Path:
    """Where :func:`run` records a diverged run (next to the result entry it did not produce)."""
    return resolve_cache_dir(cache_dir) / "results" / f"{result_key(config, dataset)}.failed.json"


def read_result(path: Path, *, quarantine_bad: bool = True) -> Result | None:
    """The verified cached Result at ``path`` (marked ``cached``), or None when missing or bad.

    A bad entry is reported (``CacheWarning``) and moved aside when
    ``quarantine_bad``, which only :func:`run` does, holding the entry's lock.
    """
    payload = store.load_entry(store.read_json, path, quarantine_bad=quarantine_bad, schema=RESULT_SCHEMA,
                               format=RESULT_FORMAT)
    if payload is None:
        return None
    result = Result.from_dict(payload)
    result.extras["cached"] = True
    return result


def read_failure(path: Path, *, quarantine_bad: bool = False) -> dict | None:
    """The failure record at ``path`` (see :func:`failure_record`), or None."""
    return store.load_entry(store.read_json, path, quarantine_bad=quarantine_bad, schema=FAILURE_SCHEMA,
                            format=RESULT_FORMAT)


def failure_record(config: TrainConfig, dataset, exc: TrainingDiverged) -> dict:
    """Plain-data account of a diverged run: what ran, where it blew up, the last good checkpoint."""
    return {
        "key": result_key(config, dataset),
        "config": config.to_dict(),
        "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint, "source": dataset.source},
        "error": str(exc),
        "exception": type(exc).__name__,
        "epoch": exc.epoch,
        "step": exc.step,
        "terms": {str(k): _plain_number(v) for k, v in (exc.terms or {}).items()},
        "checkpoint": None if exc.checkpoint is None else str(exc.checkpoint),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def _plain_number(value):
    try:
        return float(value)  # tensors, numpy scalars; NaN/Inf stay floats (JSON NaN/Infinity)
    except (TypeError, ValueError):
        return str(value)


def run(config: TrainConfig, dataset="synthetic", *, cache_dir=None, use_cache: bool = True,
        on_evaluation=None) -> Result:
    """Train and evaluate one configuration, or read its cached Result.

    The cache key is a hash of every field of ``config`` that changes the
    numbers and of the dataset's content fingerprint. The entry is written
    atomically with a checksum (:mod:`ckdlab.store`): a killed run leaves no
    half-written file, and a damaged one is reported (``CacheWarning``), moved
    aside and recomputed. Training happens under the entry's lock, so two
    processes asking for the same configuration train it once and the second
    reads the first's result. A Result read from the cache has
    ``extras["cached"] = True``.

    A run that diverges (:class:`~ckdlab.faults.TrainingDiverged`) is recorded
    (with ``use_cache``) in ``results/<key>.failed.json`` (see :func:`failure_record`) and the error
    re-raised; :func:`grid` reports such runs without retraining them.

    ``on_evaluation(epoch, valid_metrics)`` is passed to :func:`~ckdlab.train.fit`
    (called after each validation while training; a cached result calls nothing).
    """
    from .train import fit

    dataset = load_dataset(dataset)
    if not use_cache:
        _refuse_if_records_only()
        return fit(dataset, config, cache_dir=cache_dir, on_evaluation=on_evaluation)
    key = result_key(config, dataset)
    recorded = _recorded(config, dataset, key)
    if recorded is not None:
        return recorded
    path = result_path(config, dataset, cache_dir)
    result = read_result(path, quarantine_bad=False)  # fast path: renames are atomic, no lock needed
    if _serves(result, config):
        return _keep_record(key, result, config, dataset)
    with store.locked(path):
        result = read_result(path)  # another process may have written it while we waited
        if _serves(result, config):
            return _keep_record(key, result, config, dataset)
        failed = failure_path(config, dataset, cache_dir)
        try:
            result = fit(dataset, config, cache_dir=cache_dir, on_evaluation=on_evaluation)
        except TrainingDiverged as exc:
            failure = failure_record(config, dataset, exc)
            store.write_json(failed, failure, schema=FAILURE_SCHEMA, format=RESULT_FORMAT,
                             meta=entry_meta(config, dataset))
            _keep_record(key, failure, config, dataset)
            raise
        store.write_json(path, result.to_dict(), schema=RESULT_SCHEMA, format=RESULT_FORMAT,
                         meta=entry_meta(config, dataset))
        failed.unlink(missing_ok=True)  # a retried run that now succeeds is no longer a failure
    return _keep_record(key, result, config, dataset)


def _refuse_if_records_only() -> None:
    """``use_cache=False`` always trains: an error where runs come from records only."""
    if records.records_only():
        raise ValueError(f"use_cache=False trains, but runs here come from records only ({records.ONLY_ENV}=1)")


def _record_keys(config: TrainConfig, dataset, key: str) -> list[str]:
    """The keys a run's record may have: its own, then the same run made on the other device type
    (a record made on a GPU serves a CPU machine and the reverse: records are evidence, reused as is)."""
    from .provenance import device_type

    other = "cpu" if device_type(config.device) == "cuda" else "cuda"
    return [key, result_key(config.replace(device=other), dataset)]


def _read_record(folder, config: TrainConfig, dataset, key: str) -> Result | None:
    for candidate in _record_keys(config, dataset, key):
        result = records.read_result(folder, candidate)
        if _serves(result, config):
            return result
    return None


def _recorded(config: TrainConfig, dataset, key: str) -> Result | None:
    """The run's record when this process keeps records (:mod:`ckdlab.records`) and it has one.

    Where runs come from records only, a run without one raises :class:`~ckdlab.records.MissingRecord`.
    """
    only = records.records_only()  # raises when asked for with no records folder named
    folder = records.records_dir()
    if folder is None:
        return None
    result = _read_record(folder, config, dataset, key)
    if result is not None:
        return result
    if only:
        raise records.MissingRecord(records.missing_message(config, key, folder))
    return None


def _keep_record(key: str, outcome: Result | dict, config: TrainConfig, dataset):
    """Write ``outcome``'s record (a Result or a failure record) when this process keeps records and
    the run has none yet (a result record also replaces a failure record); returns ``outcome``."""
    folder = records.records_dir()
    if folder is None:
        return outcome
    if isinstance(outcome, Result):
        if not records.result_record_path(folder, key).exists() or not _serves(records.read_result(folder, key),
                                                                               config):
            records.write_result(folder, key, outcome, meta=entry_meta(config, dataset))
    elif not records.has_record(folder, key):
        records.write_failure(folder, key, outcome, meta=entry_meta(config, dataset))
    return outcome


# -- session set-up ----------------------------------------------------------------------------

def setup(threads: int | None = 1, plot_style: bool = True) -> None:
    """Notebook/report set-up: ``torch.set_num_threads(threads)`` (also for grid workers, through
    ``CKDLAB_THREADS``) and the paper plot style.

    One thread gives identical numbers run to run on CPU (the notebooks' checked
    outputs rely on it) and does not oversubscribe a shared machine. ``None``
    leaves torch's default.
    """
    import warnings

    import torch

    if threads:
        torch.set_num_threads(int(threads))
        os.environ[THREADS_ENV] = str(int(threads))  # grid workers (and their children) use the same count
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
        from .backbones import available, resolve_backbone

        names = {n.lower() for n in available()}
        name = resolve_backbone(backbone).name.lower()  # a plug-in spec ("file.py:Class") by its name
        if {k.lower() for k in params} <= names | {name}:
            return dict({k.lower(): v for k, v in params.items()}.get(name, {}))
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
        cfg = base.template()  # lr None unless given: each backbone its own default
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


def tuned_config(backbone: str, method: str, tuned=None, *, seed: int = 0, device: str = "auto",
                 **kw) -> TrainConfig:
    """The shipped tuned settings of ``backbone`` + ``method`` on dataset ``tuned`` (:mod:`ckdlab.tuned`)
    when the table has them for that data (same content, same feature normalisation), else
    :func:`make_config` with ``kw``. ``tuned=None``: always ``make_config``.

    A tuned entry replaces every other setting (learning rate, L2, epoch caps, method
    options): it is the configuration its search chose, reproduced.
    """
    if tuned is not None:
        from .tuned import lookup, settings_config

        entry = lookup(tuned, backbone, method)
        if entry is not None:  # what only changes the evaluation (channel curves) still follows the caller
            evaluation = {k: kw[k] for k in ("eval_by_modality",) if k in kw}
            return settings_config(make_config(backbone, method, seed=seed, device=device, **evaluation),
                                   entry.settings)
    return make_config(backbone, method, seed=seed, device=device, **kw)


def table_configs(backbones: str | Iterable[str] = ("VBPR",), methods: Iterable[str] = METHODS,
                  seeds: Iterable[int] = (0,), tuned=None, **kw) -> list[TrainConfig]:
    """Tables 1 and 2: every backbone x method x seed (``kw`` go to :func:`make_config`; with
    ``tuned`` a dataset, runs the shipped tuned settings cover use them, see :func:`tuned_config`)."""
    backbones = [backbones] if isinstance(backbones, str) else list(backbones)
    return [tuned_config(b, m, tuned, seed=s, **kw) for b in backbones for m in methods for s in seeds]


def reference_configs(references: Iterable[str] = ("Pop", "MF", "LightGCN"), seeds: Iterable[int] = (0,),
                      tuned=None, **kw) -> list[TrainConfig]:
    """Table 1's reference rows: each ID-only model once per seed, trained like a backbone without a method."""
    return [tuned_config(r, "none", tuned, seed=s, **kw) for r in references for s in seeds]


def ablation_configs(backbones: str | Iterable[str] = ("VBPR",), seeds: Iterable[int] = (0,),
                     variants: Mapping[str, dict] | None = None, method_params: dict | None = None,
                     tuned=None, **kw) -> list[tuple[str, TrainConfig]]:
    """Table 3: ``(variant label, config)`` for every backbone x CKD variant x seed.

    ``variants`` defaults to :data:`ABLATION_VARIANTS`; each variant's options are
    applied over the CKD options ``method_params`` (plain, or keyed by method name
    as for :func:`make_config`). The ``"CKD"`` variant is the same configuration as
    Table 1's CKD run, so the two share the cached result. ``tuned``: as for
    :func:`table_configs` (the variants change only their own options of the tuned CKD run).
    """
    ckd_params = _select(method_params, "ckd", METHODS)
    backbones = [backbones] if isinstance(backbones, str) else list(backbones)
    variants = ABLATION_VARIANTS if variants is None else variants
    out = []
    for b in backbones:
        for label, options in variants.items():
            for s in seeds:
                base = tuned_config(b, "ckd", tuned, seed=s, method_params=ckd_params, **kw)
                out.append((label, base.replace(method_params={**base.method_params, **options})))
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


def _identity_row(config: Mapping, dataset_name, key, variant, cached: bool, status: str) -> dict:
    return {
        "dataset": dataset_name,
        "backbone": config.get("backbone"),
        "method": config.get("method"),
        "variant": variant if variant is not None else "",
        "seed": config.get("seed"),
        "ablate": ",".join(config.get("ablate") or ()),
        "key": key,
        "cached": cached,
        "status": status,
    }


def result_row(result: Result, *, key: str | None = None, variant: str | None = None) -> dict:
    """One flat row: identity, bookkeeping (``status="ok"``) and every metric of ``result``."""
    row = _identity_row(result.config, result.dataset.get("name"), key, variant,
                        bool(result.extras.get("cached", False)), "ok")
    row.update({
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        # ended at its epoch cap (early stopping did not end it); untrained models (Pop) never do
        "reached_cap": bool(result.epochs_run > 0 and result.epochs_run >= result.config.get("max_epochs", math.inf)),
        "sec_per_epoch": result.timing.get("train_seconds_per_epoch"),
        "eval_seconds": result.timing.get("eval_seconds"),
        "train_seconds": result.timing.get("total_train_seconds"),
        "device": result.timing.get("device"),
        "error": None,
        **provenance_columns(result.provenance),
    })
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


#: Grid columns that say which code and machine made a row (from ``Result.provenance``).
PROVENANCE_COLUMNS = ("numbers_version", "git_commit", "torch", "threads", "cpu_capability")


def provenance_columns(provenance: Mapping | None) -> dict:
    """The :data:`PROVENANCE_COLUMNS` of a result's provenance (None where it recorded none)."""
    provenance = provenance or {}
    return {name: provenance.get(name) for name in PROVENANCE_COLUMNS}


def failure_row(record: Mapping, *, key: str | None = None, variant: str | None = None) -> dict:
    """The row of a diverged run: its identity, ``status="failed"``, the ``error`` and no metrics (NaN)."""
    nan = float("nan")
    row = _identity_row(record["config"], record["dataset"].get("name"), key, variant,
                        bool(record.get("cached", False)), "failed")
    row.update({"best_epoch": nan, "epochs_run": nan, "sec_per_epoch": nan, "eval_seconds": nan,
                "train_seconds": nan, "device": record["config"].get("device"), "error": record.get("error")})
    return row


def _progress(total: int, enabled: bool, desc: str):
    """A tqdm bar over ``total`` runs: widgets in a notebook when ipywidgets is installed, else text."""
    try:
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm
    return tqdm(total=total, desc=desc, unit="run", disable=not enabled, file=sys.stderr,
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
         return_results: bool = False, executor: Executor | str | None = None, workers: int | None = None,
         retry_failed: bool = False):
    """Run (or read from cache) every configuration; one DataFrame row per run.

    Cached runs are read here; only the missing ones are trained, in parallel
    when there are several (see ``executor``). Rows come back in the order of
    ``configs`` whatever the order the runs finish in, with the same numbers as
    training them one after the other in this process.

    Parameters
    ----------
    configs
        A TrainConfig; a list of TrainConfig or ``(label, TrainConfig)`` pairs
        (the label fills the ``variant`` column, e.g. Table 3's variants); a dict
        ``{label: TrainConfig or list}``; or a product spec dict
        ``{"base": TrainConfig or dict, field: value or [values], ...}`` (see :func:`product`).
    dataset
        Dataset, folder or ``"synthetic"``; loaded once (and once per worker process).
    cache_dir
        Result/teacher cache (default ``$CKDLAB_CACHE`` or ``~/.cache/ckdlab``).
        With a cluster, a folder every worker sees at the same path.
    progress
        A tqdm bar over runs, advancing as runs complete.
    return_results
        Also return the list of Result objects (same order as the rows; None for a failed run).
    executor
        Where missing runs train. None: in this process when at most one run
        is missing or ``workers == 1``, else a local process pool ('spawn'
        start method) of ``workers`` processes, by default as many as the CPUs
        allow at this process's torch thread count. ``"inline"``: in this
        process, one after the other. Any :class:`concurrent.futures.Executor`
        (e.g. ``dask.distributed.Client(...).get_executor()``): used as is,
        not shut down. Workers use this process's ``torch.get_num_threads()``.
    workers
        Size of the local pool (``executor=None`` only).
    retry_failed
        Retrain runs recorded as diverged; by default they are reported as
        failed again from their record.

    Returns
    -------
    DataFrame (or ``(DataFrame, [Result])``)
        Columns: ``dataset, backbone, method, variant, seed, ablate, key, cached,
        status, best_epoch, epochs_run, sec_per_epoch, eval_seconds, train_seconds,
        device, error``, then every metric as ``valid_<metric>``, ``test_<metric>``,
        ``<split>_<modality>_<metric>`` (uni-modal channels) and, for CKD runs,
        ``teacher_<split>_<modality>_<metric>`` and ``teacher_<modality>_best_epoch``.
        ``status`` is ``"ok"``, or ``"failed"`` for a run that diverged
        (:class:`~ckdlab.faults.TrainingDiverged`): its metrics are NaN and
        ``error`` says what happened. Any other error in a run propagates.
    """
    import pandas as pd

    if not (executor is None or executor == INLINE or isinstance(executor, Executor)):
        raise ValueError(f"executor must be None, {INLINE!r} or a concurrent.futures.Executor, got {executor!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    items = _normalise_configs(configs)
    if not use_cache:
        _refuse_if_records_only()
    data = load_dataset(dataset)
    keys = [result_key(config, data) for _, config in items]
    outcomes: list[Result | dict | None] = [None] * len(items)
    bar = _progress(len(items), progress, desc=f"runs on {data.name}")
    if use_cache:
        for i, ((_, config), key) in enumerate(zip(items, keys)):
            outcomes[i] = _lookup(config, data, cache_dir, retry_failed, key)
        _require_records(items, keys, outcomes)
    tasks, first_of = [], {}  # with the cache, a configuration listed twice trains once
    for i, key in enumerate(keys):
        if outcomes[i] is None and not (use_cache and key in first_of):
            first_of[key] = i
            tasks.append((i, items[i][1]))
    bar.update(len(items) - len(tasks))

    def show(i: int) -> None:
        label, config = items[i]
        bar.set_postfix_str(f"{config.backbone}/{config.method}{'/' + label if label else ''} seed {config.seed}")

    def done(i: int, outcome: Result | dict) -> None:
        outcomes[i] = _keep_record(keys[i], outcome, items[i][1], data) if use_cache else outcome
        show(i)  # in parallel: the run that finished last
        bar.update(1)

    try:
        _train_missing(tasks, dataset, data, cache_dir, executor, workers, use_cache, done, show)
    finally:
        bar.close()
    for i, key in enumerate(keys):
        if outcomes[i] is None:  # a repeat of a configuration trained above: what the cache now holds
            outcomes[i] = _as_cached(outcomes[first_of[key]])
    rows, results = [], []
    for (label, _), key, outcome in zip(items, keys, outcomes):
        if isinstance(outcome, Result):  # a record made on another device has its own key
            rows.append(result_row(outcome, key=outcome.extras.get("record_key", key), variant=label))
            results.append(outcome)
        else:
            rows.append(failure_row(outcome, key=key, variant=label))
            results.append(None)
    _warn_failed(rows)
    frame = pd.DataFrame(rows)
    return (frame, results) if return_results else frame


def _lookup(config: TrainConfig, data, cache_dir, retry_failed: bool, key: str) -> Result | dict | None:
    """The recorded or cached Result or (unless ``retry_failed``) failure record of ``config``; None: train it.

    Records (:mod:`ckdlab.records`) come first; a run found only in the cache gets its record written.
    Bad cache entries count as missing here; :func:`run` reports and replaces them under their lock.
    """
    folder = records.records_dir()
    if folder is not None:
        result = _read_record(folder, config, data, key)
        if result is not None:
            return result
        failure = None if retry_failed else records.read_failure(folder, key)
        if failure is not None or records.records_only():
            return failure
    result = read_result(result_path(config, data, cache_dir), quarantine_bad=False)
    if _serves(result, config):
        return _keep_record(key, result, config, data)
    if result is not None or retry_failed:  # lacks the channel curves asked for: train it again
        return None
    record = read_failure(failure_path(config, data, cache_dir))
    return None if record is None else _keep_record(key, {**record, "cached": True}, config, data)


def _require_records(items, keys, outcomes) -> None:
    """Where runs come from records only, every run must have been found: else one error naming the missing."""
    if not records.records_only():
        return
    missing = [(config, key) for (_, config), key, outcome in zip(items, keys, outcomes) if outcome is None]
    if missing:
        config, key = missing[0]
        more = f" ({len(missing)} of {len(items)} runs have none; this is the first)" if len(missing) > 1 else ""
        raise records.MissingRecord(records.missing_message(config, key, records.records_dir()) + more)


def _as_cached(outcome: Result | dict) -> Result | dict:
    if isinstance(outcome, Result):
        copy = Result.from_dict(json.loads(json.dumps(outcome.to_dict())))
        copy.extras["cached"] = True
        return copy
    return {**outcome, "cached": True}


def _train_missing(tasks, dataset, data, cache_dir, executor, workers, use_cache, done, starting) -> None:
    """Train ``tasks`` (``(index, config)``), calling ``done(index, Result or failure record)`` for each.

    In this process when asked to (``"inline"``), when a local pool would not
    pay for its start-up (one run, one worker) or could not start (a program
    read from stdin); an Executor passed in is always used.
    """
    if not tasks:
        return
    from .executors import can_spawn, run_many

    if executor == INLINE or (executor is None and (len(tasks) == 1 or workers == 1 or not can_spawn())):
        for i, config in tasks:
            starting(i)  # in this process: the run in progress
            try:
                outcome = run(config, data, cache_dir=cache_dir, use_cache=use_cache)
            except TrainingDiverged as exc:
                outcome = failure_record(config, data, exc)
            done(i, outcome)
        return

    def decode(i: int, outcome: dict) -> None:
        done(i, Result.from_dict(outcome["result"]) if outcome["status"] == "ok" else outcome["failure"])

    run_many(run_task, tasks, dataset, data, cache_dir, executor=executor, workers=workers, use_cache=use_cache,
             on_done=decode)


def run_task(config: dict, dataset, cache_dir: str, threads: int, use_cache: bool = True) -> dict:
    """Train (or read from the cache) one configuration in a worker process: the task of :func:`grid`.

    ``dataset`` is a :class:`~ckdlab.executors.DataSpec` or a Dataset. Returns
    ``{"status": "ok", "result": Result.to_dict()}`` or, for a diverged run,
    ``{"status": "failed", "failure": record}`` (see :func:`failure_record`).
    Any other exception propagates.
    """
    import torch

    from .executors import worker_dataset

    torch.set_num_threads(int(threads))
    data = worker_dataset(dataset)
    cfg = TrainConfig.from_dict(config)
    try:
        result = run(cfg, data, cache_dir=cache_dir, use_cache=use_cache)
    except TrainingDiverged as exc:
        return {"status": "failed", "failure": failure_record(cfg, data, exc)}
    return {"status": "ok", "result": result.to_dict()}


def _warn_failed(rows: list[dict]) -> None:
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        first = failed[0]
        warnings.warn(f"{len(failed)} of {len(rows)} runs failed (status 'failed', metrics NaN), e.g. "
                      f"{first['backbone']}/{first['method']} seed {first['seed']}: {first['error']}",
                      RuntimeWarning, stacklevel=3)


def cache_status(runs) -> str:
    """One line, ``"cached runs: k/n"``: how many runs were read from the cache (the notebooks print it).

    ``runs`` is a :func:`grid` frame or a list of Results. When some runs
    failed, ``" (f failed)"`` follows.
    """
    if hasattr(runs, "columns"):
        flags = [bool(v) for v in runs["cached"]] if len(runs) else []
        failed = int((runs["status"] == "failed").sum()) if "status" in runs.columns else 0
    else:
        flags = [r is not None and bool(r.extras.get("cached", False)) for r in runs]
        failed = sum(r is None for r in runs)
    return f"cached runs: {sum(flags)}/{len(flags)}" + (f" ({failed} failed)" if failed else "")


def load_results(frame, cache_dir=None) -> list[Result | None]:
    """The cached Result behind each row of a :func:`grid` frame (by its ``key`` column); None for failed runs."""
    root = resolve_cache_dir(cache_dir) / "results"
    folder = records.records_dir()
    failed = frame["status"].eq("failed").tolist() if "status" in frame.columns else [False] * len(frame)

    def load(key: str) -> Result:
        recorded = None if folder is None else records.read_result(folder, key)
        if recorded is None and records.records_only():
            raise records.MissingRecord(f"no run record {key} in {folder.name}/ (runs come from records only)")
        return recorded if recorded is not None else Result.from_json(root / f"{key}.json")

    return [None if bad else load(k) for k, bad in zip(frame["key"], failed)]


# -- the pilot study (paper section 2.3, Figure 1) ------------------------------------------------

def pilot_configs(backbone: str, modalities: Iterable[str], *, seed: int = 0, max_epochs: int = 50, tuned=None,
                  **kw) -> tuple[TrainConfig, dict[str, TrainConfig]]:
    """The multimodal configuration and, per modality m, the uni-modal one (every other modality ablated)."""
    modalities = list(modalities)
    multimodal = tuned_config(backbone, "none", tuned, seed=seed, max_epochs=max_epochs, **kw).replace(
        eval_by_modality=True)
    unimodal = {m: multimodal.replace(ablate=tuple(o for o in modalities if o != m), eval_by_modality=False)
                for m in modalities}
    return multimodal, unimodal


def pilot(backbone: str = "VBPR", dataset="synthetic", seed: int = 0, max_epochs: int = 50, cache_dir=None,
          *, use_cache: bool = True, progress: bool = True, executor=None, workers: int | None = None,
          tuned: bool = False, **kw) -> tuple[Result, dict[str, Result]]:
    """Figure 1's runs: the multimodal model and one uni-modal model per modality.

    The multimodal model is trained on every modality and evaluated each epoch
    overall and per uni-modal channel (``eval_by_modality``). The uni-modal model
    of m is the same backbone trained and evaluated with every other modality
    mean-ablated. All use early stopping, so their curves end at different epochs.

    ``executor`` and ``workers`` are passed to :func:`grid`; ``tuned``: the plain backbone's
    shipped tuned settings on this data when the table has them (:func:`tuned_config`).

    Returns
    -------
    (multimodal Result, {modality: uni-modal Result}); a run that diverged is None.
    """
    data = load_dataset(dataset)
    multimodal, unimodal = pilot_configs(backbone, data.modalities, seed=seed, max_epochs=max_epochs,
                                         tuned=data if tuned else None, **kw)
    configs = [("multimodal", multimodal)] + [(m, c) for m, c in unimodal.items()]
    _, results = grid(configs, data, cache_dir, progress, use_cache=use_cache, return_results=True,
                      executor=executor, workers=workers)
    return results[0], dict(zip(unimodal, results[1:]))

