"""Reading and validating the ``.npy`` side of a dataset folder.

Both on-disk layouts keep item features as ``<modality>_feat.npy`` files (row
``i`` = item ``i``) and, optionally, ``item_category.npy`` in the folder root.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError

FEATURE_SUFFIX = "_feat.npy"
CATEGORY_FILE = "item_category.npy"


def find_feature_files(folder: Path) -> dict[str, Path]:
    """``{modality: path}`` of every ``<modality>_feat.npy`` in ``folder``, sorted by name.

    Raises
    ------
    DataError
        When the folder holds no feature file at all.
    """
    files = sorted(p for p in folder.glob(f"*{FEATURE_SUFFIX}") if p.is_file())
    if not files:
        raise DataError(f"{folder}: no item feature files found; expected at least one "
                        f"'<modality>{FEATURE_SUFFIX}' (e.g. image{FEATURE_SUFFIX}, text{FEATURE_SUFFIX})")
    return {p.name[: -len(FEATURE_SUFFIX)]: p for p in files}


def _load_array(path: Path) -> np.ndarray:
    """``np.load`` of a plain ``.npy`` file, every way of failing turned into a :class:`DataError`."""
    with open(path, "rb") as fh:
        magic = fh.read(len(np.lib.format.MAGIC_PREFIX))
    if magic != np.lib.format.MAGIC_PREFIX:  # e.g. text, a pickle or an .npz archive
        raise DataError(f"{path.name}: not a readable .npy array (no NumPy .npy header)")
    try:
        # allow_pickle=False: object arrays are not features, and unpickling is unsafe.
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise DataError(f"{path.name}: holds an object array; expected a numeric array") from None
        raise DataError(f"{path.name}: not a readable .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path.name}: not a readable .npy array ({exc})") from None


def read_feature_matrix(path: Path) -> np.ndarray:
    """One modality's features as a finite float32 ``(n_items, d)`` matrix.

    Raises
    ------
    DataError
        When the file is not a 2-D real-valued numeric array with at least one
        row and column, or holds NaN / Inf (the message gives the first bad row).
    """
    arr = _load_array(path)
    if arr.dtype.kind not in "iuf":
        raise DataError(f"{path.name}: dtype {arr.dtype} is not numeric; expected float (or integer) features")
    if arr.ndim != 2:
        raise DataError(f"{path.name}: has shape {arr.shape}; expected a 2-D (n_items, dim) matrix")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{path.name}: has shape {arr.shape}; expected at least one row and one column")
    # Convert first: float64 values beyond float32's range become inf and must be caught too.
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite_rows = np.isfinite(out).all(axis=1)
    if not finite_rows.all():
        row = int(np.flatnonzero(~finite_rows)[0])
        col = int(np.flatnonzero(~np.isfinite(out[row]))[0])
        raise DataError(f"{path.name}: row {row} holds a non-finite value {float(arr[row, col])!r} (column {col}); "
                        f"{int((~finite_rows).sum())} row(s) affected")
    return out


def read_features(folder: Path) -> dict[str, np.ndarray]:
    """Every modality's features in ``folder``; all must have the same row count."""
    paths = find_feature_files(folder)
    features = {m: read_feature_matrix(p) for m, p in paths.items()}
    rows = {paths[m].name: f.shape[0] for m, f in features.items()}
    if len(set(rows.values())) > 1:
        listing = ", ".join(f"{name} has {n}" for name, n in rows.items())
        raise DataError(f"{folder}: feature files disagree on the number of items (rows): {listing}")
    return features


def read_item_category(folder: Path, n_items: int) -> np.ndarray | None:
    """``item_category.npy`` as int64 of length ``n_items``, or ``None`` when absent."""
    path = folder / CATEGORY_FILE
    if not path.exists():
        return None
    arr = _load_array(path)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise DataError(f"{path.name}: has shape {arr.shape} and dtype {arr.dtype}; "
                        "expected a 1-D integer array, one category per item")
    if len(arr) != n_items:
        raise DataError(f"{path.name}: has {len(arr)} entries; expected one per item ({n_items})")
    if len(arr) and arr.min() < 0:
        row = int(np.flatnonzero(arr < 0)[0])
        raise DataError(f"{path.name}: row {row} holds a negative category {int(arr[row])}")
    return arr.astype(np.int64)
