"""``load``: one entry point for the synthetic dataset and both folder layouts."""
from __future__ import annotations

from pathlib import Path

from .dataset import Dataset
from .errors import DataError
from .normalize import DEFAULT, DEFAULT_NORMALIZE, normalize_dataset
from .readers import LATTICE_DIR, LATTICE_FILES, read_lattice, read_mmrec
from .synthetic import generate_synthetic

SYNTHETIC = "synthetic"
LAYOUTS = ("mmrec", "lattice")


def detect_layout(folder: str | Path) -> str:
    """``"mmrec"`` or ``"lattice"``, from the files present in ``folder``.

    Raises
    ------
    DataError
        When the folder is missing, matches neither layout, or matches both.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; expected {SYNTHETIC!r} or a dataset folder "
                        "in MMRec or LATTICE layout")
    is_lattice = (folder / LATTICE_DIR / LATTICE_FILES[0]).is_file()
    is_mmrec = any(p.is_file() for p in folder.glob("*.inter"))
    if is_lattice and is_mmrec:
        raise DataError(f"{folder}: holds both a '.inter' file and {LATTICE_DIR}/{LATTICE_FILES[0]}; "
                        "pass layout='mmrec' or layout='lattice'")
    if not (is_lattice or is_mmrec):
        raise DataError(f"{folder}: matches no known layout; expected either a '<name>.inter' file plus "
                        f"'<modality>_feat.npy' files (MMRec), or {LATTICE_DIR}/train.json, val.json, test.json "
                        "plus '<modality>_feat.npy' files (LATTICE)")
    return "lattice" if is_lattice else "mmrec"


def default_normalization(path_or_name: str | Path):
    """What ``load(path_or_name)`` normalises by default: nothing for ``"synthetic"`` (its features are
    drawn centred), :data:`~ckdlab.data.normalize.DEFAULT_NORMALIZE` for a folder."""
    return None if isinstance(path_or_name, str) and path_or_name == SYNTHETIC else DEFAULT_NORMALIZE


def load(path_or_name: str | Path, layout: str | None = None, normalize="default", **kw) -> Dataset:
    """Load a dataset by name or folder.

    Parameters
    ----------
    path_or_name : str or Path
        ``"synthetic"`` for the built-in generated dataset, otherwise a folder in
        MMRec or LATTICE layout (detected from its files).
    layout : {"mmrec", "lattice"}, optional
        Force a folder layout instead of detecting it.
    normalize : "default", None, "standardize", "l2" or dict, optional
        Item-feature normalisation, for every modality or per modality
        (``{"image": "standardize", "text": "l2"}``); see :mod:`ckdlab.data.normalize`.
        ``"default"``: :data:`~ckdlab.data.normalize.DEFAULT_NORMALIZE` for a folder
        (real features are often un-centred), the features as generated for
        ``"synthetic"`` (drawn centred by construction). None: features as read.
        Recorded in ``Dataset.normalization``, the fingerprint and ``summary()``.
    **kw
        For ``"synthetic"``: :class:`SyntheticConfig` field overrides
        (e.g. ``n_users=500, seed=3``). For folders: ``name=`` overrides the name.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        When the folder is missing, of unknown layout, or its content invalid.
    """
    if normalize == DEFAULT:
        normalize = default_normalization(path_or_name)
    if isinstance(path_or_name, str) and path_or_name == SYNTHETIC:
        return normalize_dataset(generate_synthetic(**kw), normalize)
    if layout is None:
        layout = detect_layout(path_or_name)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    reader = read_mmrec if layout == "mmrec" else read_lattice
    return normalize_dataset(reader(path_or_name, **kw), normalize)
