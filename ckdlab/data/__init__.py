"""Datasets: reading MMRec / LATTICE folders, the synthetic default, samplers.

Public API
----------
load(path_or_name, **kw)
    ``"synthetic"`` or a dataset folder (layout detected) -> :class:`Dataset`.
read_mmrec(folder), read_lattice(folder)
    The two folder readers.
normalize_dataset(dataset, spec), parse_normalize(text), default_normalization(path_or_name)
    Item-feature normalisation (``load(..., normalize=...)``; folders are standardised by default).
generate_synthetic(config=None, **overrides), SyntheticConfig
    The built-in synthetic dataset.
BPRSampler(train_matrix, seed), uniform_triples(n_users, n_items, n, rng)
    Training-triple samplers.
DataError
    Raised for any missing, malformed or inconsistent input.
"""
from .dataset import Dataset
from .errors import DataError, DataWarning
from .loader import default_normalization, detect_layout, load
from .normalize import normalize_dataset, parse_normalize
from .readers import read_lattice, read_mmrec
from .samplers import BPRSampler, uniform_triples
from .synthetic import SyntheticConfig, generate_synthetic

__all__ = [
    "Dataset", "DataError", "DataWarning", "load", "detect_layout", "generate_synthetic", "SyntheticConfig",
    "BPRSampler", "uniform_triples", "read_mmrec", "read_lattice", "normalize_dataset", "parse_normalize",
    "default_normalization",
]
