"""Training checkpoints: where they live, how they are written, and how damage is detected.

A run's checkpoint is keyed like its cached result (configuration identity +
dataset fingerprint + format), so re-running the same configuration with the
same cache folder finds it, whatever the device or progress settings. It lives
at ``<cache_dir>/checkpoints/<backbone>-<key>.pt``.

The file is a :mod:`ckdlab.store` binary entry: a JSON header line with the
schema, format, size and sha256 of the payload, then the payload
(``torch.save`` bytes), written atomically. The digest catches a file damaged
afterwards (truncated copy, full disk, bit rot): such a file is never
unpickled but quarantined (``<path>.corrupt``, with a
:class:`~ckdlab.faults.CacheWarning` naming it), and the run starts afresh.
"""
from __future__ import annotations

import io
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from .cache import resolve_cache_dir
from .faults import CacheWarning
from .provenance import numbers_identity
from .store import CorruptEntry, entry_key, load_entry, locked, quarantine, read_blob, write_blob

#: Bump when the checkpoint's content changes in a way older checkpoints cannot be resumed from.
CHECKPOINT_FORMAT = 1
SCHEMA = "ckdlab.checkpoint"


def checkpoint_key(config, dataset) -> str:
    """sha256 of the configuration identity, the dataset fingerprint, the format and the numbers identity.

    The numbers identity (:func:`ckdlab.provenance.numbers_identity`) keeps a run
    from resuming a checkpoint written by code that computes other numbers, by
    another torch or at another thread count.
    """
    return entry_key(config=config.identity(), data=dataset.fingerprint, format=CHECKPOINT_FORMAT,
                     **numbers_identity(config.device))


def checkpoint_path(config, dataset, cache_dir=None) -> Path:
    """``<cache_dir>/checkpoints/<backbone lower>-<key>.pt``."""
    name = f"{config.backbone.lower()}-{checkpoint_key(config, dataset)}.pt"
    return resolve_cache_dir(cache_dir) / "checkpoints" / name


def save_checkpoint(path: str | os.PathLike, state: dict, meta: dict | None = None) -> None:
    """Write ``state`` atomically: an interrupted write leaves the previous checkpoint intact.

    ``meta`` (the run's numbers identity and name) goes into the entry's header for ``ckdlab cache list``.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_blob(path, buffer.getvalue(), schema=SCHEMA, format=CHECKPOINT_FORMAT, meta=meta)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The state saved at ``path``; FileNotFoundError, or CorruptEntry when it does not verify or load."""
    payload = read_blob(path, schema=SCHEMA, format=CHECKPOINT_FORMAT)
    try:
        # Our own file, verified above; it holds numpy RNG states and floats, so not weights-only.
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as exc:  # a verified payload that still fails: written by an incompatible version
        raise CorruptEntry(path, f"payload does not load ({type(exc).__name__}: {exc})") from None


def load_checkpoint(path: str | os.PathLike) -> dict | None:
    """The state saved at ``path``; None when absent or damaged (then warned about and quarantined)."""
    if not Path(path).exists():  # the usual case: nothing to resume, so no lock file (or folder) either
        return None
    with locked(path):
        return load_entry(read_checkpoint, path)


def set_aside(path: str | os.PathLike, reason: str) -> Path:
    """Quarantine a checkpoint that verifies but does not fit the run (e.g. the backbone changed)."""
    with locked(path):
        return quarantine(path, reason)


def discard_checkpoint(path: str | os.PathLike) -> None:
    """Remove a finished run's checkpoint (its result cache entry now holds the outcome).

    A checkpoint that cannot be removed is only warned about: the run it belongs to is complete.
    """
    try:
        Path(path).unlink()
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:
        warnings.warn(CacheWarning(f"cannot remove the finished run's checkpoint {path} ({exc})"), stacklevel=2)


# -- random number generators -----------------------------------------------------------------

def capture_rng_states(device: torch.device) -> dict:
    """The global RNG states a run draws from: python, numpy, torch CPU and (on CUDA) torch CUDA."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    """Inverse of :func:`capture_rng_states` (CUDA states only when CUDA is available here)."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
