"""Backbones: the :class:`Backbone` contract, the built-ins and the name registry.

Importing this package registers every built-in, so ``build_backbone("vbpr", ds)``
works. A backbone of your own is given by name once registered
(``@register_backbone("MyNet")``), as ``"path/to/file.py:ClassName"`` or
``"module:ClassName"``, or through an installed entry point in group
``ckdlab.backbones`` (see :mod:`ckdlab.backbones.specs` and docs/backbones.md).
"""
from .base import Backbone
from .registry import available, register
from .specs import ENTRY_POINT_GROUP, ResolvedBackbone, build_backbone, get_backbone_class, resolve_backbone
from . import reference, vbpr, deepstyle, mmgcn, grcn, egogcn, mgcn  # noqa: F401  (registration side effect)
from . import lightgcn  # noqa: F401  (registration side effect)

#: ``@register_backbone("Name")``: the name ``ckdlab.register_backbone`` exports.
register_backbone = register

__all__ = ["Backbone", "ENTRY_POINT_GROUP", "ResolvedBackbone", "available", "build_backbone",
           "get_backbone_class", "register", "register_backbone", "resolve_backbone"]
