"""Where the caches live: ``results/`` (results and failure records), ``teachers/``, ``checkpoints/``.

Graphs (kNN item graphs, normalised adjacency) are rebuilt in memory by each
run and never cached on disk. How entries are written, verified and locked:
:mod:`ckdlab.store`.
"""
from __future__ import annotations

import os
from pathlib import Path


def resolve_cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` if given, else ``$CKDLAB_CACHE``, else ``~/.cache/ckdlab``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("CKDLAB_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ckdlab"
