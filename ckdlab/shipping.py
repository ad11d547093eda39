"""Whether a search's choice becomes a shipped tuned setting: only when it beats the package defaults.

A shipped entry replaces the defaults in ``ckdlab train``, the notebooks and the
reports (:mod:`ckdlab.tuned`), so it must be the better of the two on validation.
A search's budget (a few dozen epochs per trial) can favour settings that converge
fast over ones that end higher: the defaults, trained to early stopping with their
own epoch cap, are then the better choice, and the search's entry is not shipped
(an older entry for the same dataset, backbone and method is withdrawn). Both are
compared on validation Recall@20, with the search's seed; the test split is not read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig
from .experiments import run
from .tuned import entry_from_search, forget, record

METRIC = "recall@20"


@dataclass
class ShipDecision:
    shipped: bool
    search_valid: float
    defaults_valid: float
    table: Path | None
    entry: object

    def describe(self) -> str:
        if self.shipped:
            return (f"shipped {self.entry.describe()} to {self.table} (valid {METRIC} {self.search_valid:.4f}, "
                    f"the defaults {self.defaults_valid:.4f})")
        return (f"not shipped: the package defaults score {self.defaults_valid:.4f} valid {METRIC}, the search's "
                f"choice {self.search_valid:.4f}; `ckdlab train` keeps the defaults here")


def defaults_validation(data, backbone: str, method: str, *, seed: int = 0, cache_dir=None,
                        device: str = "auto") -> float:
    """Validation Recall@20 of what a user gets without tuned settings (trained to early stopping,
    the test split never read; cached like any run)."""
    config = TrainConfig(backbone=backbone, method=method, seed=seed, device=device, evaluate_test=False,
                         progress=False)
    return float(run(config, data, cache_dir=cache_dir).valid[METRIC])


def ship(result, raw, data, table=None, *, cache_dir=None, device: str = "auto") -> ShipDecision:
    """Record ``result``'s choice (a :class:`~ckdlab.tuning.TuneResult` on ``data``, the dataset ``raw``
    as read and normalised) in ``table`` when it beats the defaults on validation; else withdraw any
    entry of the same dataset, backbone and method."""
    entry = entry_from_search(result, raw)
    chosen = TrainConfig.from_dict(result.best["config"])
    defaults = defaults_validation(data, chosen.backbone, chosen.method, seed=chosen.seed, cache_dir=cache_dir,
                                   device=device)
    search = float(result.best["value"])
    if search > defaults:
        return ShipDecision(True, search, defaults, record(entry, table), entry)
    forget(entry, table)
    return ShipDecision(False, search, defaults, None, entry)
