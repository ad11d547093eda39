"""Tuned settings the package ships: (dataset, backbone, method) -> settings chosen by ``ckdlab tune``.

The table lives next to this module (``tuned_settings.json``). Each entry names
the dataset by name *and* content fingerprint (so it applies only to the same
data, normalisation included), the backbone and the method, the settings the
search chose on validation Recall@20 (``lr``, ``reg_weight``, ``backbone.NAME``,
``method.NAME``, and the epoch cap the search used), and where they came from
(study, budget, validation score, numbers-version, commit).

Precedence when a run is configured: package defaults < tuned entry < what
the caller sets explicitly (``--set``, ``--epochs``, keyword arguments).
``ckdlab train --no-tuned`` (``tuned=False`` in Python) ignores the table.
Entries are written by ``ckdlab tune ... --ship`` (or :func:`record`); a
search never reads the test split, so neither does an entry.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import TrainConfig

#: The shipped table (package data).
TABLE_PATH = Path(__file__).with_name("tuned_settings.json")
FORMAT = 1


@dataclass(frozen=True)
class TunedEntry:
    """One row of the table: settings for ``backbone`` + ``method`` on the dataset with ``fingerprint``."""

    dataset: str
    fingerprint: str
    backbone: str
    method: str
    settings: dict
    source: dict = field(default_factory=dict)
    #: Feature normalisation the search ran with (``{modality: method}`` or None); ``fingerprint`` is the
    #: dataset's *as read*, so an entry is found before normalising and says how to normalise.
    normalize: dict | None = None

    def matches(self, fingerprint: str, backbone: str, method: str) -> bool:
        return (self.fingerprint == fingerprint and self.backbone.lower() == backbone.lower()
                and self.method.lower() == method.lower())

    def describe(self) -> str:
        """``tiktok/VBPR/ckd: lr=0.005, ... (study S: 20 trials x <= 30 epochs, valid recall@20 0.0612)``."""
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in self.settings.items())
        s = self.source
        score = s.get("valid_recall@20")
        origin = (f"study {s['study']}: {s.get('trials')} trials x <= {s.get('epochs_per_trial')} epochs"
                  + (f", valid recall@20 {score:.4f}" if score is not None else "")) if "study" in s \
            else "origin not recorded"
        features = f", features {json.dumps(self.normalize)}" if self.normalize else ""
        return f"{self.dataset}/{self.backbone}/{self.method}: {shown}{features} ({origin})"


def load_table(path=None) -> list[TunedEntry]:
    """Every entry of the table at ``path`` (default the shipped one); an absent file is an empty table."""
    path = Path(path) if path is not None else TABLE_PATH
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
        return [TunedEntry(**row) for row in data["entries"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a tuned-settings table ({exc})") from exc


def lookup(dataset, backbone: str, method: str = "none", table=None) -> TunedEntry | None:
    """The entry for ``dataset``, ``backbone`` and ``method``, or None.

    Entries are keyed by the fingerprint of the features *as read*
    (``Dataset.raw_fingerprint``). For data as read, the entry is returned and
    says how to normalise (:func:`resolve` does it); for normalised data, only an
    entry tuned with that same normalisation matches.
    """
    entries = load_table() if table is None else table
    fingerprint = dataset.raw_fingerprint
    entry = next((e for e in entries if e.matches(fingerprint, backbone, method)), None)
    if entry is not None and dataset.normalization and entry.normalize != dataset.normalization:
        return None
    return entry


def resolve(raw, config: TrainConfig, normalize_given: bool, normalize, *, default=None, use_table: bool = True,
            table=None):
    """``(dataset, config, entry)`` for a run on ``raw`` (the dataset as read).

    Precedence: package defaults (``default``: the loader's default normalisation
    for this data, :func:`ckdlab.data.default_normalization`) < the table's entry
    < what the caller gave. A normalisation given (``normalize_given``) that
    differs from the entry's means another dataset than the one tuned: the entry
    is not used.
    """
    from .data import normalize_dataset
    from .data.normalize import resolve_normalization

    if raw.normalization:
        raise ValueError(f"resolve() takes the dataset as read, not normalised ({raw.normalization})")
    entry = lookup(raw, config.backbone, config.method, table) if use_table else None
    wanted = resolve_normalization(normalize if normalize_given else default, raw.modalities)
    if entry is not None and normalize_given and wanted != entry.normalize:
        entry = None
    if entry is not None:
        wanted = entry.normalize
        config = settings_config(config, entry.settings)
    return normalize_dataset(raw, wanted), config, entry


def settings_config(base: TrainConfig, settings: dict) -> TrainConfig:
    """``base`` with a settings dict (``lr``, ``max_epochs``, ``backbone.NAME``, ``method.NAME``) applied."""
    from .search_space import apply_params

    return apply_params(base, settings)


def apply_tuned(config: TrainConfig, dataset, *, table=None) -> tuple[TrainConfig, TunedEntry | None]:
    """``config`` with the matching entry's settings applied (or unchanged, None, when there is none).

    Apply it to a config built from defaults, *before* the caller's explicit settings.
    """
    entry = lookup(dataset, config.backbone, config.method, table)
    return (config, None) if entry is None else (settings_config(config, entry.settings), entry)


#: Fields a search sets for its own bookkeeping; they do not change what a model learns.
_BOOKKEEPING = ("backbone", "method", "seed", "device", "progress", "evaluate_test", "eval_by_modality",
                "select_metric", "backbone_source", "backbone_sha256", "checkpoint_every")


def changed_settings(config: TrainConfig) -> dict:
    """What ``config`` sets differently from the defaults, as settings (``lr``, ``backbone.X``, ``method.X``)."""
    defaults = TrainConfig(backbone=config.backbone, method=config.method).to_dict()
    out = {}
    for name, value in config.to_dict().items():
        if name in _BOOKKEEPING:
            continue
        if name in ("backbone_params", "method_params"):
            prefix = name.split("_")[0]
            out.update({f"{prefix}.{k}": v for k, v in value.items() if defaults[name].get(k) != v})
        elif value != defaults[name]:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def entry_from_search(result, raw) -> TunedEntry:
    """The entry a finished search on ``raw`` (the dataset as read, normalised as ``result.normalize``)
    ships: every setting its chosen trial ran with that is not a default (the searched ones, the epoch
    caps, fixed ``--set`` values), so ``ckdlab train`` reproduces its final run."""
    if result.best is None:
        raise ValueError(f"study {result.study_name} has no completed trial: nothing to ship")
    chosen = TrainConfig.from_dict(result.best["config"])
    settings = changed_settings(chosen)
    from .provenance import NUMBERS_VERSION, git_commit

    source = {"study": result.study_name, "trials": result.budget["trials"],
              "epochs_per_trial": result.budget["epochs_per_trial"], "sampler": result.budget["sampler"],
              "pruner": result.budget["pruner"], "seed": result.budget["seed"],
              "trials_spent": result.spent["trials"], "epochs_spent": result.spent["epochs"],
              "valid_recall@20": float(result.best["value"]), "numbers_version": NUMBERS_VERSION,
              "commit": git_commit()}
    normalize = result.normalize if hasattr(result, "normalize") else None
    return TunedEntry(raw.name, raw.fingerprint, chosen.backbone, chosen.method, settings, source,
                      dict(normalize) if normalize else None)


def _write_table(path: Path, rows: list[TunedEntry]) -> None:
    """Write ``rows`` as the table at ``path``, atomically, sorted."""
    from .store import atomic_write_text

    rows = sorted(rows, key=lambda e: (e.dataset, e.fingerprint, e.backbone.lower(), e.method))
    atomic_write_text(path, json.dumps({"format": FORMAT, "entries": [asdict(e) for e in rows]}, indent=1) + "\n")


def _other_rows(entry: TunedEntry, rows: list[TunedEntry]) -> list[TunedEntry]:
    return [e for e in rows if not e.matches(entry.fingerprint, entry.backbone, entry.method)]


def record(entry: TunedEntry, path=None) -> Path:
    """Add ``entry`` to the table at ``path`` (default the shipped one), replacing the same
    dataset/backbone/method; written atomically, rows sorted."""
    path = Path(path) if path is not None else TABLE_PATH
    _write_table(path, _other_rows(entry, load_table(path)) + [entry])
    return path


def forget(entry: TunedEntry, path=None) -> Path:
    """Remove the row of ``entry``'s dataset, backbone and method from the table at ``path`` (if it has one)."""
    path = Path(path) if path is not None else TABLE_PATH
    rows = load_table(path)
    kept = _other_rows(entry, rows)
    if len(kept) != len(rows):  # the table is rewritten only when it had the row
        _write_table(path, kept)
    return path


def table_frame(table=None):
    """The table as a DataFrame (one row per entry, settings as text) for ``ckdlab tuned`` and the README."""
    import pandas as pd

    rows = [{"dataset": e.dataset, "backbone": e.backbone, "method": e.method,
             "features": ",".join(sorted(set(e.normalize.values()))) if e.normalize else "as read",
             "settings": ", ".join(f"{k}={json.dumps(v)}" for k, v in e.settings.items()),
             "valid_recall@20": e.source.get("valid_recall@20"), "study": e.source.get("study", ""),
             "commit": e.source.get("commit", "")}
            for e in (load_table() if table is None else table)]
    return pd.DataFrame(rows, columns=["dataset", "backbone", "method", "features", "settings", "valid_recall@20", "study",
                                       "commit"])
