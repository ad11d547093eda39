"""Item-feature normalisation applied by the loader (``load(path, normalize=...)``).

Two ways, chosen per modality:

``"standardize"``
    Per column (feature dimension): subtract the mean over items, divide by the
    standard deviation (population, ``ddof=0``). A column that is constant up to
    float32 precision is only centred: it becomes all zeros instead of 0/0.
``"l2"``
    Per row (item): divide by the row's Euclidean norm; an all-zero row stays zero.

A spec is ``None`` (features as read), one of the two names (every modality),
or ``{modality: name}`` (the modalities it names; others stay as read). The
resolved ``{modality: name}`` is kept in :attr:`Dataset.normalization`, so it
enters the dataset fingerprint (every cache key) and ``summary()``.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

import numpy as np

from .dataset import Dataset

NORMALIZATIONS = ("standardize", "l2")
#: What the loader applies to a dataset read from a folder unless told otherwise (``normalize="default"``),
#: and ``ckdlab train`` / ``tune`` when neither ``--normalize`` nor a tuned entry says. Chosen on
#: validation across TikTok and Baby (``benchmarks/normalize_choice.py``, README "Feature normalisation"):
#: per column, so that un-centred features (TikTok's image features: mean 2.7) reach a linear
#: projection centred and on one scale.
DEFAULT_NORMALIZE = "standardize"
#: The ``normalize`` argument that stands for :data:`DEFAULT_NORMALIZE`.
DEFAULT = "default"


def standardize_columns(x: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per column in float64, returned as float32; near-constant columns become 0."""
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=0)
    std = x64.std(axis=0)
    constant = std <= np.finfo(np.float32).eps * (1.0 + np.abs(mean))
    return ((x64 - mean) / np.where(constant, 1.0, std) * ~constant).astype(np.float32)


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Each row divided by its Euclidean norm (float64 arithmetic, float32 result); zero rows stay zero."""
    x64 = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x64, axis=1, keepdims=True)
    return (x64 / np.where(norm > 0, norm, 1.0)).astype(np.float32)


_FUNCTIONS = {"standardize": standardize_columns, "l2": l2_rows}


def resolve_normalization(spec, modalities) -> dict[str, str] | None:
    """``{modality: "standardize" | "l2"}`` for ``spec`` over ``modalities``, or None for no normalisation.

    Raises ``ValueError`` for an unknown method or a modality the dataset lacks.
    """
    if spec is None:
        return None
    if isinstance(spec, str) and spec == DEFAULT:
        return resolve_normalization(DEFAULT_NORMALIZE, modalities)
    modalities = tuple(modalities)
    if isinstance(spec, str):
        spec = {m: spec for m in modalities}
    if not isinstance(spec, Mapping):
        raise ValueError(f"normalize must be None, one of {NORMALIZATIONS} or {{modality: method}}, got {spec!r}")
    unknown = sorted(set(spec) - set(modalities))
    if unknown:
        raise ValueError(f"normalize names modalities {unknown} the dataset lacks; it has {list(modalities)}")
    resolved = {}
    for m in modalities:  # the dataset's modality order
        method = spec.get(m)
        if method is None:
            continue
        if method not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {method!r} for {m!r}; expected one of {NORMALIZATIONS}")
        resolved[m] = method
    return resolved or None


def normalize_dataset(dataset: Dataset, spec) -> Dataset:
    """A copy of ``dataset`` with normalised features and ``normalization`` recorded (itself when ``spec`` is None).

    Raises ``ValueError`` when ``dataset`` was normalised already (a second
    normalisation would not be recorded faithfully).
    """
    resolved = resolve_normalization(spec, dataset.modalities)
    if resolved is None:
        return dataset
    if dataset.normalization:
        raise ValueError(f"dataset {dataset.name!r} is normalised already ({dataset.normalization}); "
                         "load it again with the normalisation wanted")
    features = {m: _FUNCTIONS[resolved[m]](f) if m in resolved else f for m, f in dataset.features.items()}
    return dataclasses.replace(dataset, features=features, normalization=resolved,
                               as_read_fingerprint=dataset.fingerprint)


def parse_normalize(text: str | None):
    """The CLI form of a spec: ``standardize``, ``l2``, ``none``, ``default``, ``image=standardize,text=l2``
    or JSON."""
    if text is None or text.strip().lower() in ("", "none"):
        return None
    text = text.strip()
    if text.lower() == DEFAULT:
        return DEFAULT
    if text.startswith("{"):
        return json.loads(text)
    if "=" not in text:
        return text
    spec = {}
    for part in text.split(","):
        name, sep, method = part.partition("=")
        if not sep or not name.strip() or not method.strip():
            raise ValueError(f"--normalize expects METHOD or MODALITY=METHOD[,...], got {text!r}")
        spec[name.strip()] = method.strip()
    return spec
