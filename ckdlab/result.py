"""The one result shape every run returns, with an atomic JSON writer."""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename: never half-written."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Result:
    """Outcome of one training run.

    ``valid``/``test`` map metric names ("recall@20", ...) to values at the best
    epoch; ``*_by_modality`` hold the same for each uni-modal channel;
    ``history`` has one entry per evaluation (``epoch``, ``loss``, ``valid``,
    ``valid_by_modality``, ``seconds`` and, for balancing methods, their own
    per-epoch values such as ``rho`` and ``lambda``). ``extras`` carries
    method-specific outputs (CKD's ``trace`` and ``teachers``).
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
        known = {k: v for k, v in data.items() if k in names}
        extras = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extras=extras)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Result":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __getattr__(self, name: str):
        # result.trace / result.teachers read through to extras
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(name)
