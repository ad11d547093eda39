"""Backbones, registered by (case-insensitive) name.

Importing this package registers every backbone, so ``build_backbone("vbpr", ds)`` works.
"""
from .base import Backbone, available, build_backbone, get_backbone_class, register
from . import reference, vbpr, deepstyle, mmgcn, grcn, egogcn, mgcn  # noqa: F401  (registration side effect)

__all__ = ["Backbone", "available", "build_backbone", "get_backbone_class", "register"]
