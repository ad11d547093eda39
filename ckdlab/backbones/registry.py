"""Backbone names: the table from a (case-insensitive) name to its class.

Built-in backbones (the modules of :mod:`ckdlab.backbones`) register here when
imported; user code registers with :func:`register` (exported as
``ckdlab.register_backbone``). Turning a *spec* (``"file.py:Class"``,
``"module:Class"``, an entry point) into a registered class is
:mod:`ckdlab.backbones.specs`' job.
"""
from __future__ import annotations

import re
import warnings
from typing import Callable

#: Names end up in cache file names (``teachers/<name>-...``), so they are path-safe.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]*$")
_BUILTIN_PACKAGE = "ckdlab.backbones."

_REGISTRY: dict[str, type] = {}


def is_builtin(cls: type) -> bool:
    """Whether ``cls`` is one of ckdlab's own backbones (their cache keys carry no source hash)."""
    return cls.__module__.startswith(_BUILTIN_PACKAGE)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"backbone name {name!r} must start with a letter and use only letters, digits "
                         f"and _ . + - (it becomes part of cache file names)")
    return name


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a backbone constructible by (case-insensitive) ``name``.

    Sets ``cls.name = name``. A built-in name cannot be taken. Registering the
    same class again, or a new version of it (same module and qualified name: a
    reloaded file, a re-run notebook cell), replaces the entry silently; a
    different class under a name already in use replaces it with a warning.
    """
    check_name(name)

    def deco(cls: type) -> type:
        bind(name, cls)
        return cls

    return deco


def bind(name: str, cls: type) -> None:
    """Register ``cls`` under ``name`` (see :func:`register` for the rules)."""
    check_name(name)
    key = name.lower()
    old = _REGISTRY.get(key)
    if old is not None and old is not cls:
        if is_builtin(old) or is_builtin(cls):
            raise ValueError(f"backbone name {name!r} is taken by {old.__module__}.{old.__qualname__}; "
                             f"{cls.__module__}.{cls.__qualname__} needs another name")
        if (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            warnings.warn(f"backbone name {name!r} now means {cls.__module__}.{cls.__qualname__} "
                          f"(was {old.__module__}.{old.__qualname__})", stacklevel=3)
    _REGISTRY[key] = cls
    cls.name = name


def lookup(name: str) -> type | None:
    """The class registered under ``name`` (case-insensitive), or None."""
    return _REGISTRY.get(name.lower())


def available() -> list[str]:
    """Names registered in this process: the built-ins and any plug-in loaded so far."""
    return sorted(cls.name for cls in _REGISTRY.values())
