"""Experiment runner: ``run(config)`` -> Result, cached on disk by configuration and data."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .cache import resolve_cache_dir
from .config import TrainConfig
from .result import Result

#: Bump when a change alters the numbers a cached result would hold.
RESULT_FORMAT = 1


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
    atomically, so a killed run leaves no half-written file.
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
