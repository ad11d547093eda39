"""Balancing methods that wrap any backbone, selected by name."""
from .base import (Batch, BalanceMethod, TrainContext, available_methods, backbone_step, build_method,
                   register_method)

__all__ = ["Batch", "BalanceMethod", "TrainContext", "available_methods", "backbone_step", "build_method",
           "register_method"]
from . import ckd  # noqa: E402,F401  (registration)
from . import gb, ogm  # noqa: E402,F401  (registration)
