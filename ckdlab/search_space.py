"""What a hyperparameter search tries, per (backbone, method): one table.

The shared grids are the paper's (section 4.1.4: "grid search on the validation
set"): learning rate, L2 coefficient, and the dropout ratio for backbones that
have dropout. On top come each backbone's own hyperparameters (its constructor
parameters that its paper or released code tunes) and each balancing method's.
Every value is a discrete choice, so the same table drives a grid, random or
TPE search.

Parameter names say where a value goes in a :class:`~ckdlab.config.TrainConfig`:
``lr`` / ``reg_weight`` are fields, ``backbone.NAME`` a backbone hyperparameter,
``method.NAME`` one of the balancing method (as ``ckdlab train --set`` spells them).
"""
from __future__ import annotations

import math

from .config import TrainConfig

#: Paper grids shared by every trainable backbone (section 4.1.4).
LEARNING_RATES = (1e-4, 5e-4, 1e-3, 5e-3)
L2_WEIGHTS = (1e-5, 1e-4, 1e-3, 1e-2)
DROPOUTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

#: Backbone -> its own hyperparameters (``backbone_params`` names -> values).
#: Dropout appears where the backbone has it (GRCN's edge dropout, capped below 1 by its constructor).
BACKBONE_SPACE: dict[str, dict[str, tuple]] = {
    "VBPR": {},
    "DeepStyle": {},
    "MMGCN": {"n_layers": (1, 2, 3)},
    "GRCN": {"edge_dropout": DROPOUTS, "routing_rounds": (1, 2, 3)},
    "EgoGCN": {"n_layers": (1, 2, 3)},
    "MGCN": {"knn_k": (5, 10, 20), "cl_weight": (1e-3, 1e-2, 1e-1)},  # MMRec's MGCN grid: cl_loss
    "LightGCN": {"n_layers": (1, 2, 3, 4)},
    "MF": {},
    "Pop": {},  # nothing to train
}

#: Balancing method -> its hyperparameters (``method_params`` names -> values).
METHOD_SPACE: dict[str, dict[str, tuple]] = {
    "none": {},
    "ckd": {"lambda_g": (0.1, 0.5, 1.0, 5.0), "lambda_kd": (1e-3, 1e-2, 1e-1, 5e-1)},  # the paper's grids
    "gb": {"super_epoch": (1, 2, 5, 10)},  # epochs between re-estimates of the blending weights
    "ogm": {"alpha": (0.1, 0.3, 0.5, 0.8, 1.0)},  # modulation strength
}

#: Backbones with nothing to train: no learning rate or L2 to search.
UNTRAINED = ("Pop",)


def _canonical(name: str, table: dict) -> str:
    for key in table:
        if key.lower() == name.lower():
            return key
    raise KeyError(f"no search space for {name!r}; known: {', '.join(table)} "
                   f"(add it to ckdlab.search_space)")


def backbone_space(backbone: str) -> tuple[str, dict[str, tuple]]:
    """``(name, {backbone param: values})``: the table's entry, or a plug-in's own ``search_space``.

    A backbone from outside the package (a name it registered, ``file.py:Class``,
    ``module:Class``) gets the shared grids plus whatever its class declares in a
    ``search_space = {"param": (values, ...)}`` attribute (nothing when absent).
    """
    for key in BACKBONE_SPACE:
        if key.lower() == backbone.lower():
            return key, BACKBONE_SPACE[key]
    from .backbones import resolve_backbone  # only plug-ins need the class

    resolved = resolve_backbone(backbone)
    return resolved.name, dict(getattr(resolved.cls, "search_space", {}) or {})


def search_space(backbone: str, method: str = "none", *, max_epochs: int | None = None) -> dict[str, tuple]:
    """``{parameter: values}`` searched for ``backbone`` with ``method``.

    ``max_epochs`` drops GB super-epochs longer than a trial (they would never
    re-estimate the weights). An untrained backbone's space is empty.
    """
    b, own = backbone_space(backbone)
    m = _canonical(method, METHOD_SPACE)
    space: dict[str, tuple] = {}
    if b not in UNTRAINED:
        space["lr"] = LEARNING_RATES
        space["reg_weight"] = L2_WEIGHTS
        space.update({f"backbone.{k}": tuple(v) for k, v in own.items()})
    space.update({f"method.{k}": v for k, v in METHOD_SPACE[m].items()})
    if max_epochs is not None and "method.super_epoch" in space:
        space["method.super_epoch"] = tuple(v for v in space["method.super_epoch"] if v <= max_epochs) or (1,)
    return space


def grid_size(space: dict[str, tuple]) -> int:
    """Number of points of the full grid."""
    return math.prod(len(v) for v in space.values())


def apply_params(base: TrainConfig, params: dict) -> TrainConfig:
    """``base`` with ``params`` (``lr``, ``backbone.NAME``, ``method.NAME``) set."""
    cfg = base.to_dict()
    cfg["backbone_params"] = dict(cfg["backbone_params"])
    cfg["method_params"] = dict(cfg["method_params"])
    for name, value in params.items():
        if name.startswith("backbone."):
            cfg["backbone_params"][name[len("backbone."):]] = value
        elif name.startswith("method."):
            cfg["method_params"][name[len("method."):]] = value
        elif name in cfg:
            cfg[name] = value
        else:
            raise ValueError(f"unknown search parameter {name!r}")
    return TrainConfig.from_dict(cfg)


def space_table(backbones=None, methods=None):
    """The whole table as a DataFrame: one row per (backbone, method) with its parameters and grid size."""
    import pandas as pd

    rows = []
    for b in backbones or BACKBONE_SPACE:
        for m in methods or METHOD_SPACE:
            space = search_space(b, m)
            rows.append({"backbone": b, "method": m, "grid_points": grid_size(space),
                         "parameters": "; ".join(f"{k} {list(v)}" for k, v in space.items())})
    return pd.DataFrame(rows)
