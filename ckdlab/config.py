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
#: Fields that do not change what a run learns or scores. ``eval_by_modality`` only adds validation
#: curves of the channels: a cached run without them does not satisfy a run that asks for them
#: (``experiments.run`` trains it again), one with them serves both.
_NOT_IDENTITY = ("progress", "device", "checkpoint_every", "eval_by_modality")
#: The learning rate of a backbone that does not set its own ``default_lr``.
DEFAULT_LR = 1e-3


@dataclass
class TrainConfig:
    """Everything that determines one training run (besides the dataset).

    Parameters
    ----------
    backbone : str
        Registered backbone name, case-insensitive ("VBPR", "MGCN", "MF", "Pop", ...),
        or a backbone of your own: ``"path/to/file.py:ClassName"``,
        ``"module:ClassName"``, a name registered with ``@ckdlab.register_backbone``
        or an installed ``ckdlab.backbones`` entry point (docs/backbones.md). Such
        a plug-in is replaced by its registered name, and ``backbone_source`` /
        ``backbone_sha256`` record where it came from and what its code was.
    method : str
        Balancing method: "none" (plain BPR), "ckd", "gb" or "ogm".
    max_epochs : int
        Upper bound on training epochs; early stopping usually ends sooner.
    batch_size : int
        BPR triples per step (paper code: 2048).
    lr : float or None
        Adam learning rate (paper grid: 1e-4, 5e-4, 1e-3, 5e-3). None (the default): the
        backbone's own default (its class attribute ``default_lr``, set where a backbone's
        validation runs chose another rate, see the README's "Defaults for a dataset without
        tuned settings"), else :data:`DEFAULT_LR`. Resolved when the config is made, so the
        stored value, and every cache key, is always a number.
    reg_weight : float
        L2 coefficient of the backbone's regularisation (paper grid: 1e-5 ... 1e-2).
        The default 1e-2 (with lr 1e-3) was chosen on validation Recall@20 only, across the six
        backbones on TikTok and Baby, against 1e-3 (and the former 1e-4): README, "Defaults for a
        dataset without tuned settings"; ``benchmarks/defaults_choice.py``.
    patience : int
        Stop after this many evaluations without a better validation ``select_metric``
        (paper: 10 epochs).
    eval_every : int
        Evaluate on validation every this many epochs.
    eval_by_modality : bool
        Also evaluate each uni-modal channel on validation at every evaluation:
        one extra evaluation per modality, so off by default; the pilot study and
        the dynamics notebook, which plot those curves, turn it on. The test split's
        channel metrics (Table 2) are computed either way, once per run.
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
    evaluate_test : bool
        Score the test split at the end (default). False: the run never reads
        the test split (``result.test`` and ``result.test_by_modality`` stay
        empty, the dataset summary leaves the test split out): what a
        hyperparameter search on validation uses (:mod:`ckdlab.tuning`).
        Enters the cache key only when False, so keys of ordinary runs are unchanged.
    backbone_source : str or None
        Filled in for a plug-in backbone: ``"/abs/path/file.py:ClassName"`` or
        ``"module:ClassName"``, what another process (a spawned grid worker)
        loads the class from. Not part of the cache key (moving the file keeps
        its results). None for a built-in.
    backbone_sha256 : str or None
        Derived, not set: sha256 of the plug-in's source file, part of the cache
        key (editing the file invalidates its results). None for a built-in,
        whose keys are unchanged from earlier versions.
    """

    backbone: str = "VBPR"
    method: str = "none"
    max_epochs: int = 200
    batch_size: int = 2048
    lr: float | None = None
    reg_weight: float = 1e-2
    patience: int = 10
    eval_every: int = 1
    eval_by_modality: bool = False
    ks: tuple[int, ...] = (10, 20, 50)
    select_metric: str = "recall@20"
    ablate: tuple[str, ...] = ()
    seed: int = 0
    device: str = "auto"
    backbone_params: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, Any] = field(default_factory=dict)
    progress: bool | None = None
    checkpoint_every: int = 5
    evaluate_test: bool = True
    backbone_source: str | None = None
    backbone_sha256: str | None = field(default=None, init=False)

    def __post_init__(self):
        #: whether the caller chose ``lr``; if not, a config built from this one for another
        #: backbone gets that backbone's default (:meth:`template`)
        self._lr_given = self.lr is not None
        resolved = self._resolve_backbone()
        if self.lr is None:
            self.lr = getattr(resolved.cls, "default_lr", None) or DEFAULT_LR
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

    def _resolve_backbone(self):
        """Load a plug-in backbone (file, module, entry point) and record its name, source and hash."""
        from .backbones.specs import resolve_backbone  # imports torch: only when a config is made

        resolved = resolve_backbone(self.backbone, self.backbone_source)
        if not resolved.builtin:
            self.backbone = resolved.name  # built-ins keep the spelling given: it is in their keys
        self.backbone_source, self.backbone_sha256 = resolved.source, resolved.sha256
        return resolved

    def uses_default_lr(self) -> bool:
        """Whether ``lr`` was left to the backbone's default (not given by the caller)."""
        return not self._lr_given

    def template(self) -> dict:
        """:meth:`to_dict` for building other configs from this one: ``lr`` is None unless it was
        given, so the built config's backbone decides its default."""
        d = self.to_dict()
        if self.uses_default_lr():
            d["lr"] = None
        return d

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["backbone_source"] is None:  # a built-in: the same dict as before plug-ins existed
            del d["backbone_source"], d["backbone_sha256"]
        return d

    def identity(self) -> dict:
        """The fields that change the numbers (used for cache keys): not device, progress, checkpoint_every
        or eval_by_modality.

        ``evaluate_test`` appears only when False (a run without test metrics is another entry).
        """
        d = self.to_dict()
        for name in _NOT_IDENTITY:
            d.pop(name)
        if d["evaluate_test"]:  # the default: keys of runs made before the field existed stay valid
            d.pop("evaluate_test")
        # a plug-in backbone is keyed by its name and backbone_sha256, not by where its file lies
        if d.pop("backbone_source", None) is not None:
            from .backbones.specs import check_current

            check_current(self.backbone, self.backbone_source, self.backbone_sha256)
        return d

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes``; the learning rate stays the backbone's default unless it was given."""
        if self.uses_default_lr():
            changes.setdefault("lr", None)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; a plug-in whose source no longer has the recorded hash is an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}; known: {sorted(names)}")
        data = dict(data)
        expected = data.pop("backbone_sha256", None)
        config = cls(**data)
        if expected is not None and config.backbone_source == data.get("backbone_source") \
                and config.backbone_sha256 != expected:
            raise ValueError(f"backbone {config.backbone!r}: {config.backbone_source} changed since this "
                             f"configuration was made (source sha256 {expected[:12]}, now "
                             f"{str(config.backbone_sha256)[:12]})")
        return config

    def with_settings(self, settings: list[str]) -> "TrainConfig":
        """Apply ``name=value`` strings (CLI ``--set``).

        ``lr=0.005`` sets a field; ``backbone.n_layers=3`` / ``method.lambda_kd=0.1``
        set a backbone or method hyperparameter. Values are parsed as JSON when
        possible (numbers, true/false, lists), otherwise kept as strings.
        """
        cfg = self.template()
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
        if cfg["backbone"] != self.backbone:  # another backbone: resolve it afresh
            cfg.pop("backbone_source", None)
            cfg.pop("backbone_sha256", None)
        return TrainConfig.from_dict(cfg)
