"""Readers for the two on-disk dataset layouts.

MMRec layout (``read_mmrec``)
    ``<name>.inter``: tab-separated with a header holding at least ``userID``,
    ``itemID`` and ``x_label`` (0 = train, 1 = valid, 2 = test); other columns
    such as ``rating`` or ``timestamp`` are ignored. Plus ``<modality>_feat.npy``
    and optionally ``item_category.npy``.
LATTICE layout (``read_lattice``, also used by the released CKD code)
    ``5-core/train.json``, ``5-core/val.json``, ``5-core/test.json``: a JSON
    object mapping a user id (key) to its list of item ids. Features as above,
    in the folder root.

Both return a validated :class:`~ckdlab.data.Dataset` or raise
:class:`~ckdlab.data.DataError` naming the file, the row and the value.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .assemble import RawInteractions, build_dataset
from .dataset import Dataset
from .errors import DataError

INTER_COLUMNS = ("userID", "itemID", "x_label")
LATTICE_DIR = "5-core"
LATTICE_FILES = ("train.json", "val.json", "test.json")  # split codes 0, 1, 2
_NON_NEGATIVE_INT = re.compile(r"\d+")


def _require_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; expected a dataset folder (MMRec or LATTICE layout)")
    return folder


# --------------------------------------------------------------------- MMRec

def find_inter_file(folder: Path) -> Path:
    """The single ``<name>.inter`` file of an MMRec folder."""
    found = sorted(p for p in folder.glob("*.inter") if p.is_file())
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise DataError(f"{folder}: expected exactly one '<name>.inter' interaction file, found {what}")
    return found[0]


def _read_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as fh:
        header = fh.readline()
    if not header.strip():
        raise DataError(f"{path.name}: empty file; expected a tab-separated header with columns "
                        f"{', '.join(INTER_COLUMNS)}")
    return [c.strip() for c in header.rstrip("\r\n").split("\t")]


def _int_column(values: pd.Series, column: str, lines: np.ndarray, path: Path) -> np.ndarray:
    """A column as non-negative int64, or a DataError naming the first bad line."""
    if values.dtype.kind in "iu":
        out = values.to_numpy(dtype=np.int64)
    else:
        # Mixed / float column: find the first cell that is not an integer.
        numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numeric) | (numeric != np.round(numeric))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            cell = values.iloc[k]
            shown = "an empty cell" if pd.isna(cell) else repr(str(cell))
            raise DataError(f"{path.name} line {lines[k]}: {column} is {shown}; expected a non-negative integer")
        out = numeric.astype(np.int64)
    negative = np.flatnonzero(out < 0)
    if len(negative):
        k = int(negative[0])
        raise DataError(f"{path.name} line {lines[k]}: {column} {int(out[k])} is negative; "
                        "expected a non-negative integer")
    return out


def _read_inter(path: Path) -> RawInteractions:
    """Parse and type-check an ``.inter`` file (ranges are checked later, against the features)."""
    header = _read_header(path)
    missing = [c for c in INTER_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path.name}: missing column(s) {', '.join(missing)}; the header has "
                        f"{', '.join(header)} but {', '.join(INTER_COLUMNS)} are required")
    try:
        frame = pd.read_csv(path, sep="\t", header=0, names=header, usecols=list(INTER_COLUMNS),
                            skip_blank_lines=False, quoting=csv.QUOTE_NONE, engine="c")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path.name}: cannot be parsed as tab-separated text ({exc})") from None
    # Blank lines are kept as all-NaN rows so that row k stays line k + 2; drop them now.
    blank = frame.isna().all(axis=1).to_numpy()
    lines = np.flatnonzero(~blank) + 2
    frame = frame[~blank]

    users = _int_column(frame["userID"], "userID", lines, path)
    items = _int_column(frame["itemID"], "itemID", lines, path)
    labels = _int_column(frame["x_label"], "x_label", lines, path)
    bad = np.flatnonzero(labels > 2)
    if len(bad):
        k = int(bad[0])
        raise DataError(f"{path.name} line {lines[k]}: x_label {int(labels[k])} is not one of "
                        "0 (train), 1 (valid), 2 (test)")
    return RawInteractions(users, items, labels.astype(np.int8),
                           where=lambda k: f"{path.name} line {lines[k]}", item_label="itemID")


def read_mmrec(folder: str | Path, name: str | None = None) -> Dataset:
    """Read a dataset folder in MMRec layout.

    Parameters
    ----------
    folder : str or Path
        Folder holding exactly one ``<name>.inter`` and ``<modality>_feat.npy`` files.
    name : str, optional
        Dataset name; defaults to the ``.inter`` file's stem.

    Returns
    -------
    Dataset
        Modalities in sorted name order, features as float32.

    Raises
    ------
    DataError
        On any missing, malformed or inconsistent input (see :mod:`ckdlab.data`).
    """
    folder = _require_folder(folder)
    path = find_inter_file(folder)
    return build_dataset(name or path.stem, folder, _read_inter(path), path.name)


# ------------------------------------------------------------------- LATTICE

def _as_item_ids(items: list) -> np.ndarray | None:
    """A JSON list of item ids as int64, or ``None`` when it holds anything but integers."""
    if not items:
        return np.zeros(0, dtype=np.int64)
    try:
        arr = np.asarray(items)
    except ValueError:  # ragged nested lists
        return None
    # Floats, strings and nested lists give another dtype or shape. (A list mixing
    # JSON booleans into integers would pass as 0/1; not worth a per-item loop.)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        return None
    return arr.astype(np.int64)


def _read_json_split(path: Path, rel: str) -> tuple[list[str], list[int], list[np.ndarray]]:
    """One LATTICE split: user keys, parsed user ids and per-user item arrays."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{rel}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{rel}: not UTF-8 text ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{rel}: holds a JSON {type(data).__name__}; expected an object mapping user id -> item ids")

    keys, user_ids, item_lists = [], [], []
    for key, items in data.items():  # one iteration per user, never per interaction
        if not _NON_NEGATIVE_INT.fullmatch(key.strip()):
            raise DataError(f"{rel}: user key {key!r} is not a non-negative integer")
        if not isinstance(items, list):
            raise DataError(f"{rel} user {key!r}: holds {json.dumps(items)[:40]}; expected a list of item ids")
        arr = _as_item_ids(items)
        if arr is None:
            # Error path only: find the offending element to name it.
            bad = next((x for x in items if isinstance(x, bool) or not isinstance(x, int)), None)
            what = f"item {bad!r} is not a non-negative integer" if bad is not None else "an item id exceeds int64"
            raise DataError(f"{rel} user {key!r}: {what}")
        if len(arr) and arr.min() < 0:
            raise DataError(f"{rel} user {key!r}: item {int(arr.min())} is negative; expected a non-negative integer")
        keys.append(key)
        user_ids.append(int(key))
        item_lists.append(arr)
    return keys, user_ids, item_lists


def read_lattice(folder: str | Path, name: str | None = None) -> Dataset:
    """Read a dataset folder in LATTICE layout (the released CKD code's format).

    Parameters
    ----------
    folder : str or Path
        Folder holding ``5-core/{train,val,test}.json`` and ``<modality>_feat.npy``.
    name : str, optional
        Dataset name; defaults to the folder name.

    Returns
    -------
    Dataset
        Modalities in sorted name order, features as float32.

    Raises
    ------
    DataError
        On any missing, malformed or inconsistent input (see :mod:`ckdlab.data`).
    """
    folder = _require_folder(folder)
    rels = [f"{LATTICE_DIR}/{f}" for f in LATTICE_FILES]
    missing = [r for r in rels if not (folder / r).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}; the LATTICE layout needs "
                        f"{', '.join(rels)} and '<modality>_feat.npy' files")

    row_file, row_key, users, items, split = [], [], [], [], []
    for code, rel in enumerate(rels):
        keys, user_ids, item_lists = _read_json_split(folder / rel, rel)
        counts = np.fromiter((len(a) for a in item_lists), dtype=np.int64, count=len(item_lists))
        users.append(np.repeat(np.asarray(user_ids, dtype=np.int64), counts))
        items.append(np.concatenate(item_lists) if item_lists else np.zeros(0, dtype=np.int64))
        split.append(np.full(int(counts.sum()), code, dtype=np.int8))
        # For error messages: which file and which user key each row came from.
        row_file.append(np.full(int(counts.sum()), code, dtype=np.int8))
        row_key.append(np.repeat(np.asarray(keys, dtype=object), counts))
    row_file, row_key = np.concatenate(row_file), np.concatenate(row_key)
    raw = RawInteractions(np.concatenate(users), np.concatenate(items), np.concatenate(split),
                          where=lambda k: f"{rels[row_file[k]]} user {row_key[k]!r}", item_label="item")
    return build_dataset(name or folder.name, folder, raw, f"{LATTICE_DIR}/*.json", train_file=rels[0])
