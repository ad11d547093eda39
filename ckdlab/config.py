"""Training configuration: one dataclass, one place for every default."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


def parse_setting(item: str, flag: str = "--set") -> tuple[str, Any]:
    """``"name=value"`` with the value parsed as JSON when possible (``seeds=[0,1]``), else a string."""
    if "=" not in item:
        raise ValueError(f"{flag} expects name=value, got {item!r}")
    name, raw = item.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name.strip(), value


#: TrainConfig fields that do not change a run's numbers, left out of cache keys.
_NOT_IDENTITY = ("progress", "device", "checkpoint_every")


@dataclass
class TrainConfig:
    """Everything that determines one training run (besides the dataset).

    Parameters
    ----------
    backbone : str
        Registered backbone name, case-insensitive ("VBPR", "MGCN", "MF", "Pop", ...).
    method : str
        Balancing method: "none" (plain BPR), "ckd", "gb" or "ogm".
    max_epochs : int
        Upper bound on training epochs; early stopping usually ends sooner.
    batch_size : int
        BPR triples per step (paper code: 2048).
    lr : float
        Adam learning rate (paper grid: 1e-4, 5e-4, 1e-3, 5e-3).
    reg_weight : float
        L2 coefficient of the backbone's regularisation (paper grid: 1e-5 ... 1e-2).
    patience : int
        Stop after this many evaluations without a better validation ``select_metric``
        (paper: 10 epochs).
    eval_every : int
        Evaluate on validation every this many epochs.
    eval_by_modality : bool
        Also evaluate each uni-modal channel on validation at every evaluation
        (needed for the pilot-study curves; costs one extra evaluation per modality).
    ks : tuple of int
        Cut-offs for Recall/NDCG/Precision.
    select_metric : str
        Validation metric for early stopping and model selection.
    ablate : tuple of str
        Modalities mean-ablated for the whole run (training and evaluation): a
        uni-modal model of modality m is trained with every other modality here.
    seed : int
        Seeds torch and the samplers; same seed, same numbers on CPU.
    device : str
        "auto" (CUDA when available), "cpu" or "cuda".
    backbone_params, method_params : dict
        Hyperparameters passed to the backbone and balancing-method constructors.
    progress : bool or None
        tqdm bar over epochs; None shows it only when stderr is a terminal.
    checkpoint_every : int
        Write a resumable checkpoint every this many epochs (0: only when
        interrupted by SIGINT/SIGTERM). Does not change the numbers, so it is
        not part of the cache key.
    """

    backbone: str = "VBPR"
    method: str = "none"
    max_epochs: int = 200
    batch_size: int = 2048
    lr: float = 1e-3
    reg_weight: float = 1e-4
    patience: int = 10
    eval_every: int = 1
    eval_by_modality: bool = True
    ks: tuple[int, ...] = (10, 20, 50)
    select_metric: str = "recall@20"
    ablate: tuple[str, ...] = ()
    seed: int = 0
    device: str = "auto"
    backbone_params: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, Any] = field(default_factory=dict)
    progress: bool | None = None
    checkpoint_every: int = 5

    def __post_init__(self):
        self.ks = tuple(int(k) for k in self.ks)
        self.ablate = tuple(sorted(self.ablate))
        if self.select_metric not in {f"{m}@{k}" for m in ("recall", "ndcg", "precision") for k in self.ks}:
            raise ValueError(f"select_metric {self.select_metric!r} is not computed for ks={self.ks}")
        for name in ("max_epochs", "batch_size", "patience", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0 disables periodic checkpoints), "
                             f"got {self.checkpoint_every}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """The fields that change the numbers (used for cache keys): not device, progress or checkpoint_every."""
        d = self.to_dict()
        for name in _NOT_IDENTITY:
            d.pop(name)
        return d

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}; known: {sorted(names)}")
        return cls(**data)

    def with_settings(self, settings: list[str]) -> "TrainConfig":
        """Apply ``name=value`` strings (CLI ``--set``).

        ``lr=0.005`` sets a field; ``backbone.n_layers=3`` / ``method.lambda_kd=0.1``
        set a backbone or method hyperparameter. Values are parsed as JSON when
        possible (numbers, true/false, lists), otherwise kept as strings.
        """
        cfg = self.to_dict()
        for item in settings:
            name, value = parse_setting(item)
            if name.startswith("backbone."):
                cfg["backbone_params"][name[len("backbone."):]] = value
            elif name.startswith("method."):
                cfg["method_params"][name[len("method."):]] = value
            elif name in cfg:
                cfg[name] = value
            else:
                raise ValueError(f"unknown setting {name!r}; use a TrainConfig field "
                                 f"({', '.join(sorted(cfg))}) or backbone.NAME / method.NAME")
        return TrainConfig.from_dict(cfg)
