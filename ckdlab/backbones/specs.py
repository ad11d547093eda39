"""From what a user writes for a backbone to its class, its name and its source hash.

A backbone is given as one of

* a registered name: a built-in ("VBPR", case-insensitive) or a class registered
  with ``@ckdlab.register_backbone("Name")`` in code imported in this process;
* ``"path/to/file.py:ClassName"``: the file is executed as a module of its own
  (again when its content changes);
* ``"package.module:ClassName"``: imported;
* the name of an entry point in group ``ckdlab.backbones`` of an installed
  distribution (``MyNet = mypkg.models:MyNet``).

A backbone that is not built in is keyed by its name and the sha256 of the
source file that defines its class (:class:`ResolvedBackbone`), so editing the
file invalidates its cached results; built-ins carry no hash, so their keys are
those of earlier versions. ``source`` is what another process (a spawned grid
worker) resolves the class from; a class defined in ``__main__`` of a notebook
cannot be found there.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path

from .base import Backbone
from .registry import available, bind, check_name, is_builtin, lookup

#: Entry-point group through which installed distributions provide backbones.
ENTRY_POINT_GROUP = "ckdlab.backbones"
_FILE_MODULE_PREFIX = "ckdlab_plugin_"


@dataclass(frozen=True)
class ResolvedBackbone:
    """A backbone class with what keys its results.

    Attributes
    ----------
    name : str
        The registered name (what results, tables and cache file names show).
    cls : type
        The :class:`~ckdlab.backbones.Backbone` subclass.
    source : str or None
        ``"/abs/path/file.py:Qualname"`` or ``"module:Qualname"``; None for a built-in.
    sha256 : str or None
        sha256 of the source file defining the class (of the class's own source
        text when it has no file, e.g. a notebook cell); None for a built-in.
    """

    name: str
    cls: type
    source: str | None
    sha256: str | None

    @property
    def builtin(self) -> bool:
        return self.source is None


#: Where each plug-in class came from, recorded when first seen: cls -> (source, sha256).
_ORIGINS: "weakref.WeakKeyDictionary[type, tuple[str, str]]" = weakref.WeakKeyDictionary()
#: Modules executed from files: absolute path -> (sha256 of the bytes executed, module).
_FILE_MODULES: dict[str, tuple[str, object]] = {}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_spec(text: str) -> bool:
    """``"file.py:Class"`` or ``"module:Class"`` rather than a plain name."""
    return ":" in text


def _split(spec: str) -> tuple[str, str]:
    target, _, qualname = spec.rpartition(":")
    if not target or not qualname or not all(p.isidentifier() for p in qualname.split(".")):
        raise ValueError(f"backbone spec {spec!r}: expected 'path/to/file.py:ClassName' or 'module:ClassName'")
    return target, qualname


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _attribute(module, qualname: str, spec: str):
    obj = module
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"backbone spec {spec!r}: {getattr(module, '__name__', module)!s} "
                                 f"has no {qualname!r}") from None
    return obj


def _check_class(obj, spec: str) -> type:
    if not (isinstance(obj, type) and issubclass(obj, Backbone)):
        raise TypeError(f"backbone spec {spec!r} names {obj!r}, which is not a subclass of "
                        f"ckdlab.backbones.Backbone")
    return obj


def _load_file(path: Path, qualname: str, spec: str) -> type:
    """The class ``qualname`` of the file, executed afresh when its bytes changed."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"backbone spec {spec!r}: no file {path}")
    data = path.read_bytes()
    sha = _sha256(data)
    known = _FILE_MODULES.get(str(path))
    if known is not None and known[0] == sha:
        module = known[1]
    else:
        name = _FILE_MODULE_PREFIX + _sha256(str(path).encode())[:12]
        module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path))
        sys.modules[name] = module  # dataclasses, pickle and decorators look the module up by name
        try:
            # execute the very bytes that were hashed (re-reading the file could see a newer version)
            exec(compile(data, str(path), "exec"), module.__dict__)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        _FILE_MODULES[str(path)] = (sha, module)
    cls = _check_class(_attribute(module, qualname, spec), spec)
    _ORIGINS[cls] = (f"{path}:{qualname}", sha)
    return cls


def _load_module(target: str, qualname: str, spec: str) -> type:
    try:
        module = importlib.import_module(target)
    except ImportError as exc:
        raise ImportError(f"backbone spec {spec!r}: cannot import {target!r} ({exc})") from exc
    try:
        obj = _attribute(module, qualname, spec)
    except AttributeError:
        if target == "__main__":
            raise LookupError(
                f"backbone {qualname!r} was defined in __main__ of another process (a notebook or an "
                f"interactive session), which this process (e.g. a spawned grid worker) cannot import. "
                f"Put the class in a file and pass 'path/to/file.py:{qualname}' or 'module:{qualname}', "
                f"or run the grid in the defining process (executor='inline').") from None
        raise
    return _check_class(obj, spec)


def load_spec(spec: str) -> type:
    """The class named by ``"path/to/file.py:ClassName"`` or ``"module:ClassName"`` (not yet registered)."""
    target, qualname = _split(spec)
    if _is_path(target):
        return _load_file(Path(target), qualname, spec)
    return _load_module(target, qualname, spec)


# -- source hashes --------------------------------------------------------------------------------

def _class_text(cls: type) -> str:
    """The source text of ``cls``'s methods, for a class without a file on disk (a notebook cell).

    Read through the methods' code objects: IPython keeps each cell's text under
    the cell's name, while ``inspect.getsource(cls)`` would search ``__main__``'s file.
    """
    parts = []
    for fn in _functions(cls):
        try:
            parts.append(inspect.getsource(fn))
        except (OSError, TypeError):
            pass
    if not parts:
        raise ValueError(f"cannot read the source of backbone class {cls.__qualname__} to key its results; "
                         f"define it in a file")
    return cls.__qualname__ + "\n" + "\n".join(parts)


def _functions(cls: type) -> list:
    return [f for f in (getattr(v, "__func__", getattr(v, "fget", v)) for v in vars(cls).values())
            if inspect.isfunction(f)]


def _source_file(cls: type) -> Path | None:
    """The file defining ``cls``: where its methods' code comes from (a notebook cell has none on disk)."""
    files = {f.__code__.co_filename for f in _functions(cls)}
    if not files:
        files = {getattr(sys.modules.get(cls.__module__), "__file__", None)}
    file = next(iter(files)) if len(files) == 1 else getattr(sys.modules.get(cls.__module__), "__file__", None)
    return Path(file) if file and Path(file).is_file() else None


def _origin(cls: type) -> tuple[str, str]:
    """``(source, sha256)`` of a plug-in class, recorded the first time it is seen."""
    known = _ORIGINS.get(cls)
    if known is None:
        file = _source_file(cls)
        sha = _sha256(file.read_bytes()) if file else _sha256(_class_text(cls).encode())
        known = (f"{cls.__module__}:{cls.__qualname__}", sha)
        _ORIGINS[cls] = known
    return known


def _current_sha256(cls: type, source: str) -> str | None:
    """sha256 of the file behind ``source`` as it is on disk now (None when it has no file)."""
    target, _ = _split(source)
    file = Path(target) if _is_path(target) else _source_file(cls)
    return _sha256(file.read_bytes()) if file is not None and file.is_file() else None


def check_current(name: str, source: str, sha256: str) -> None:
    """Raise RuntimeError unless ``name`` still builds the code whose hash is ``sha256``.

    Guards a configuration made before its backbone's file was edited (or before
    the name was bound to another version of the class): its key would describe
    other code than the one that trains.
    """
    cls = lookup(name)
    origin = _ORIGINS.get(cls) if cls is not None else None
    built = origin[1] if origin else None
    now = _current_sha256(cls, source) if cls is not None else None
    if (now is not None and now != sha256) or built != sha256:
        raise RuntimeError(f"backbone {name!r} ({source}) changed since this configuration was made "
                           f"(source sha256 {sha256[:12]}, now {(now or built or '?')[:12]}); make the "
                           f"configuration again (TrainConfig(...) or config.replace()) to load and key the "
                           f"current code")


# -- resolution -------------------------------------------------------------------------------------

def _entry_point(name: str):
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name.lower() == name.lower():
            return ep
    return None


def entry_point_names() -> list[str]:
    """Backbone names installed distributions provide (entry-point group ``ckdlab.backbones``)."""
    from importlib.metadata import entry_points

    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def _registered_name(cls: type) -> str | None:
    name = cls.__dict__.get("name")
    return name if isinstance(name, str) and lookup(name) is cls else None


def _resolved(cls: type, name: str | None = None) -> ResolvedBackbone:
    """Register ``cls`` (under ``name``, its decorator's name or its class name) and key it."""
    registered = _registered_name(cls)
    if registered is not None and name is not None and registered.lower() != name.lower():
        raise ValueError(f"entry point {name!r} names {cls.__qualname__}, which is registered as {registered!r}; "
                         f"use the same name for both")
    if registered is None:
        registered = check_name(name or cls.__name__)
        bind(registered, cls)
    if is_builtin(cls):
        return ResolvedBackbone(cls.name, cls, None, None)
    source, sha = _origin(cls)
    if not _is_path(_split(source)[0]):  # an imported module is not re-executed: a changed file is stale
        now = _current_sha256(cls, source)
        if now is not None and now != sha:
            raise RuntimeError(f"{source.split(':')[0]} changed on disk since it was imported; restart the "
                               f"interpreter or importlib.reload() it so that backbone {registered!r} runs the "
                               f"code its results are keyed by")
    return ResolvedBackbone(registered, cls, source, sha)


def resolve_backbone(backbone: str, source: str | None = None) -> ResolvedBackbone:
    """The class, name and source hash of ``backbone`` (a name or a spec, see the module docstring).

    ``source`` is where a configuration recorded its plug-in came from
    (:attr:`ResolvedBackbone.source`); it is tried first for a plain name, so a
    process that never imported the class (a spawned worker) finds it.
    """
    if is_spec(backbone):
        return _resolved(load_spec(backbone))
    cls = lookup(backbone)
    if cls is not None and is_builtin(cls):
        return ResolvedBackbone(cls.name, cls, None, None)
    if source is not None:
        try:
            loaded = load_spec(source)
        except Exception:
            if cls is None:
                raise
        else:
            found = _registered_name(loaded) or loaded.__name__
            if found.lower() == backbone.lower():
                return _resolved(loaded)
    if cls is not None:
        return _resolved(cls)
    ep = _entry_point(backbone)
    if ep is not None:
        return _resolved(load_spec(ep.value), name=ep.name)
    installed = entry_point_names()
    raise KeyError(f"unknown backbone {backbone!r}; registered: {', '.join(available())}"
                   + (f"; installed ({ENTRY_POINT_GROUP} entry points): {', '.join(installed)}" if installed else "")
                   + "; or give 'path/to/file.py:ClassName' or 'module:ClassName'")


def get_backbone_class(backbone: str) -> type:
    """The Backbone subclass ``backbone`` names (a registered name, entry point or spec)."""
    return resolve_backbone(backbone).cls


def build_backbone(backbone: str, dataset, **params) -> Backbone:
    """Construct ``backbone`` (a name or spec) for ``dataset`` with hyperparameters ``params``."""
    resolved = resolve_backbone(backbone)
    try:
        return resolved.cls(dataset, **params)
    except TypeError as exc:
        raise TypeError(f"bad parameters for backbone {resolved.name}: {exc}") from None
