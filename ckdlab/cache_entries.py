"""``ckdlab cache list | prune``: what the cache folder holds, and which entries are stale.

An entry is *current* when its header says it was made with this code's
:data:`~ckdlab.provenance.NUMBERS_VERSION`, this torch and this entry format;
such an entry can still be read by a run with the same thread count and device
(the rest of the numbers identity is in the key). Anything else is *stale*
(made by other numbers-code or another torch, or by a ckdlab that recorded no
provenance) or *corrupt* (quarantined ``*.corrupt`` files). Stale entries are
never read by a run (their keys differ) but they are kept until asked:
``prune`` deletes stale and corrupt entries, nothing else.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from . import provenance, store
from .balance.teachers import TEACHER_FORMAT, TEACHER_SCHEMA
from .cache import resolve_cache_dir
from .checkpoint import CHECKPOINT_FORMAT, SCHEMA as CHECKPOINT_SCHEMA
from .experiments import FAILURE_SCHEMA, RESULT_FORMAT
from .result import RESULT_SCHEMA

#: Sub-folder -> (file pattern, {schema: format}) of the entries it holds.
_KINDS = {
    "results": ("*.json", {RESULT_SCHEMA: RESULT_FORMAT, FAILURE_SCHEMA: RESULT_FORMAT}),
    "teachers": ("*.pt", {TEACHER_SCHEMA: TEACHER_FORMAT}),
    "checkpoints": ("*.pt", {CHECKPOINT_SCHEMA: CHECKPOINT_FORMAT}),
}


@dataclass
class Entry:
    """One file of the cache, as ``ckdlab cache list`` shows it."""

    kind: str
    name: str
    bytes: int
    status: str  # "current", "stale: <why>" or "corrupt"
    numbers_version: int | None
    torch: str | None
    device: str | None
    threads: int | None
    run: str | None
    dataset: str | None
    path: Path

    @property
    def current(self) -> bool:
        return self.status == "current"


def _status(header: dict | None, formats: dict[str, int]) -> str:
    if header is None or header.get("schema") not in formats:
        return "stale: not a ckdlab entry of a known schema"
    if header.get("format") != formats[header["schema"]]:
        return f"stale: entry format {header.get('format')}, this code writes {formats[header['schema']]}"
    meta = header.get("meta")
    if not isinstance(meta, dict):
        return "stale: no provenance (made before numbers-version 2)"
    if meta.get("numbers_version") != provenance.NUMBERS_VERSION:
        return f"stale: numbers v{meta.get('numbers_version')}, this code is v{provenance.NUMBERS_VERSION}"
    if meta.get("torch") != provenance.torch_version():
        return f"stale: torch {meta.get('torch')}, this is {provenance.torch_version()}"
    return "current"


def list_entries(cache_dir=None) -> list[Entry]:
    """Every result, failure record, teacher and checkpoint under ``cache_dir``, sorted by kind and name."""
    root = resolve_cache_dir(cache_dir)
    entries = []
    for kind, (pattern, formats) in _KINDS.items():
        folder = root / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(pattern)) + sorted(folder.glob(pattern + ".corrupt")):
            if path.name.startswith("."):
                continue  # a write in progress (atomic_write_bytes' temporary file)
            header = store.read_header(path) if not path.name.endswith(".corrupt") else None
            meta = (header or {}).get("meta") or {}
            status = "corrupt" if path.name.endswith(".corrupt") else _status(header, formats)
            entries.append(Entry(kind, path.name, path.stat().st_size, status, meta.get("numbers_version"),
                                 meta.get("torch"), meta.get("device"), meta.get("threads"), meta.get("run"),
                                 meta.get("dataset"), path))
    return entries


def prune(cache_dir=None, *, dry_run: bool = False) -> list[Entry]:
    """Delete the stale and corrupt entries (or, with ``dry_run``, only say which); returns them.

    Each entry is removed under its lock (:func:`ckdlab.store.locked`), so an
    entry a running job is writing right now is waited for, never cut short.
    """
    doomed = [e for e in list_entries(cache_dir) if not e.current]
    if not dry_run:
        for entry in doomed:
            with store.locked(entry.path):
                entry.path.unlink(missing_ok=True)
    return doomed


def format_entries(entries: list[Entry]) -> str:
    """A plain-text table of entries, one per line, with a count per status at the end."""
    if not entries:
        return "cache is empty"
    cols = ["kind", "run", "dataset", "numbers_version", "torch", "device", "threads", "bytes", "status"]
    rows = [[str(asdict(e)[c]) if asdict(e)[c] is not None else "-" for c in cols] for e in entries]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    current = sum(e.current for e in entries)
    lines.append(f"{len(entries)} entries: {current} current, {len(entries) - current} stale or corrupt "
                 f"({sum(e.bytes for e in entries if not e.current) / 1e6:.1f} MB; `ckdlab cache prune` removes them)")
    return "\n".join(lines)
