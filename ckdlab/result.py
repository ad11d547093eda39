"""The one result shape every run returns, and its JSON form.

``Result.to_json`` writes the plain export format (``ckdlab train --out``);
the result cache stores the same dictionary inside an integrity envelope
(:mod:`ckdlab.store`), which ``Result.from_json`` also reads.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import store
from .store import atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported: older imports)

#: Schema name of result entries in the cache (see :func:`ckdlab.store.write_json`).
RESULT_SCHEMA = "ckdlab.result"


@dataclass
class Result:
    """Outcome of one training run.

    ``valid``/``test`` map metric names ("recall@20", ...) to values at the best
    epoch; ``*_by_modality`` hold the same for each uni-modal channel;
    ``history`` has one entry per evaluation (``epoch``, ``loss``, ``valid``,
    ``valid_by_modality``, ``seconds`` and, for balancing methods, their own
    per-epoch values such as ``rho`` and ``lambda``). ``extras`` carries
    method-specific outputs (CKD's ``trace`` and ``teachers``). ``provenance``
    says which code and machine made the numbers (numbers-version, git commit,
    torch, device, CPU capability, threads: :func:`ckdlab.provenance.run_provenance`).
    """

    config: dict
    dataset: dict
    best_epoch: int
    epochs_run: int
    valid: dict[str, float]
    test: dict[str, float]
    valid_by_modality: dict[str, dict[str, float]] = field(default_factory=dict)
    test_by_modality: dict[str, dict[str, float]] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        extras = d.pop("extras")
        d.update(extras)  # trace / teachers / ... appear as top-level keys in the JSON
        return d

    def to_json(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, data: dict) -> "Result":
        names = {f.name for f in dataclasses.fields(cls)} - {"extras"}
        # ``provenance`` stays out of the extras even when absent (results made before it existed)
        known = {k: v for k, v in data.items() if k in names}
        extras = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extras=extras)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Result":
        """A Result from a plain JSON export or a cache entry (whose checksum is then verified).

        Raises :class:`ckdlab.store.CorruptEntry` for a cache entry that fails
        verification, and ``ValueError`` for a file that is not JSON.
        """
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict) and data.get("schema") == RESULT_SCHEMA:
            data = store.unwrap_json(data, path, schema=RESULT_SCHEMA)
        return cls.from_dict(data)

    def __getattr__(self, name: str):
        # result.trace / result.teachers read through to extras
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(name)
