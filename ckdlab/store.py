"""On-disk cache entries that are never half-written, never trusted blindly, and never built twice at once.

Every cache in ckdlab (results, failure records, teachers, checkpoints) goes
through these few helpers, so the rules are the same everywhere:

* **Atomic writes** (:func:`atomic_write_bytes`): write a temporary file in the
  same folder, fsync, rename. A killed process leaves the old entry or none.
* **Integrity envelopes**: each entry carries its schema name, a format number
  and the sha256 of its payload. Atomic renames cannot protect against a
  truncated copy, a full disk on another machine of a shared filesystem, or a
  file from an older version of the code; the envelope detects all three.
  JSON entries (:func:`write_json` / :func:`read_json`) stay readable JSON:
  ``{"schema", "format", "sha256", "payload"}``, the digest taken over the
  canonical (sorted, compact) JSON of the payload. Binary entries
  (:func:`write_blob` / :func:`read_blob`) start with one JSON header line
  ``{"schema", "format", "sha256", "size"}`` followed by the raw bytes, so
  they are verified before anything (e.g. ``torch.load``) unpickles them.
* **Quarantine** (:func:`quarantine`): a bad entry is renamed ``<name>.corrupt``
  (kept for inspection, out of the way) with a :class:`~ckdlab.faults.CacheWarning`
  naming the path and the problem; the caller then recomputes it.
* **Locks** (:func:`locked`): an exclusive ``flock`` on ``<entry>.lock`` around
  "check, compute, write", so two processes asking for the same entry compute
  it once and the second reuses it. The kernel releases the lock when its
  holder dies. Where ``fcntl`` is missing (Windows) the lock is a no-op and the
  atomic rename alone keeps entries whole (work may then be done twice).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from .faults import CacheWarning

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

T = TypeVar("T")

#: Longest header line accepted in a binary entry (a header is ~150 bytes).
_MAX_HEADER = 4096


class CorruptEntry(ValueError):
    """A cache entry that exists but cannot be trusted; ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


# -- atomic writes ---------------------------------------------------------------------------------

def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file and rename: never half-written."""
    atomic_write_bytes(path, text.encode())


# -- integrity envelopes ---------------------------------------------------------------------------

def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_key(**fields: Any) -> str:
    """Name of a cache entry: 20 hex digits of the sha256 of ``fields`` as sorted JSON.

    Results, teachers and checkpoints are all keyed this way (configuration
    identity, dataset fingerprint, format number, ...).
    """
    return digest(json.dumps(fields, sort_keys=True, default=str).encode())[:20]


def canonical_json(payload: Any) -> bytes:
    """The bytes the JSON digest is taken over: sorted keys, no whitespace.

    Independent of the indentation the file is written with, and stable through
    a load/dump round trip (floats print as their shortest repr).
    """
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def write_json(path: str | os.PathLike, payload: Any, *, schema: str, format: int,
               meta: dict | None = None) -> None:
    """Atomically write ``payload`` as a JSON entry with its schema, format and sha256.

    ``meta`` (e.g. the numbers identity of the code that made the entry) is
    stored beside the payload so ``ckdlab cache list`` can tell stale entries
    without reading payloads; it is informational, not covered by the digest.
    """
    envelope = {"schema": schema, "format": int(format), "sha256": digest(canonical_json(payload)),
                "payload": payload}
    if meta is not None:
        envelope["meta"] = meta
    atomic_write_text(path, json.dumps(envelope, indent=1))


def unwrap_json(data: Any, path: str | os.PathLike, *, schema: str, format: int | None = None) -> Any:
    """The verified payload of a parsed JSON envelope; :class:`CorruptEntry` when it is not one."""
    if not isinstance(data, dict) or not {"schema", "format", "sha256", "payload"} <= set(data):
        raise CorruptEntry(path, "no integrity envelope (written by an older ckdlab, or not a cache entry)")
    if data["schema"] != schema:
        raise CorruptEntry(path, f"schema {data['schema']!r}, expected {schema!r}")
    if format is not None and data["format"] != format:
        raise CorruptEntry(path, f"format {data['format']!r}, expected {format!r} (stale entry)")
    if digest(canonical_json(data["payload"])) != data["sha256"]:
        raise CorruptEntry(path, "sha256 mismatch (content altered after it was written)")
    return data["payload"]


def read_json(path: str | os.PathLike, *, schema: str, format: int | None = None) -> Any:
    """The verified payload of a JSON entry.

    Raises ``FileNotFoundError`` when there is no entry and :class:`CorruptEntry`
    when it is unparsable (e.g. truncated), of another schema or format, or fails
    its checksum. ``format=None`` accepts any format.
    """
    raw = Path(path).read_bytes()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptEntry(path, f"unparsable JSON ({len(raw)} bytes, truncated?): {exc}") from None
    return unwrap_json(data, path, schema=schema, format=format)


def write_blob(path: str | os.PathLike, payload: bytes, *, schema: str, format: int,
               meta: dict | None = None) -> None:
    """Atomically write ``payload`` behind a one-line JSON header with its schema, format, size and sha256.

    ``meta`` goes into the header (as in :func:`write_json`).
    """
    header = {"schema": schema, "format": int(format), "sha256": digest(payload), "size": len(payload)}
    if meta is not None:
        header["meta"] = meta
    atomic_write_bytes(path, json.dumps(header, sort_keys=True).encode() + b"\n" + payload)


def read_blob(path: str | os.PathLike, *, schema: str, format: int | None = None) -> bytes:
    """The verified payload of a binary entry (errors as :func:`read_json`)."""
    raw = Path(path).read_bytes()
    end = raw.find(b"\n", 0, _MAX_HEADER)
    try:
        header = json.loads(raw[:end]) if end > 0 else None
    except (ValueError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict) or not {"schema", "format", "sha256", "size"} <= set(header):
        raise CorruptEntry(path, f"no integrity header ({len(raw)} bytes; written by an older ckdlab, "
                                 "or not a cache entry)")
    if header["schema"] != schema:
        raise CorruptEntry(path, f"schema {header['schema']!r}, expected {schema!r}")
    if format is not None and header["format"] != format:
        raise CorruptEntry(path, f"format {header['format']!r}, expected {format!r} (stale entry)")
    payload = raw[end + 1:]
    if len(payload) != header["size"]:
        raise CorruptEntry(path, f"{len(payload)} payload bytes, header says {header['size']} (truncated?)")
    if digest(payload) != header["sha256"]:
        raise CorruptEntry(path, "sha256 mismatch (content altered after it was written)")
    return payload


def read_header(path: str | os.PathLike) -> dict | None:
    """The envelope of a JSON entry (without its payload) or the header of a binary entry; None if neither.

    Cheap: nothing is verified and a binary payload is not read. For listing caches.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            first = fh.read(1)
            fh.seek(0)
            if first == b"{" and path.suffix == ".json":
                data = json.loads(fh.read())
                if isinstance(data, dict):
                    data.pop("payload", None)
                    return data
                return None
            line = fh.readline(_MAX_HEADER)
        header = json.loads(line)
        return header if isinstance(header, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


# -- bad entries -----------------------------------------------------------------------------------

def quarantine(path: str | os.PathLike, reason: str) -> Path:
    """Warn (:class:`CacheWarning`) and rename a bad entry to ``<name>.corrupt``; returns the new path.

    Renamed rather than deleted so the evidence stays for inspection; a later
    bad copy of the same entry replaces it. Call it while holding the entry's
    :func:`locked`, so it cannot move aside a good entry another process just wrote.
    """
    path = Path(path)
    aside = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        pass
    warnings.warn(f"cache entry {path}: {reason}; moved to {aside.name} and recomputing", CacheWarning,
                  stacklevel=3)
    return aside


def load_entry(reader: Callable[..., T], path: str | os.PathLike, *, quarantine_bad: bool = True,
               **kw) -> T | None:
    """``reader(path, **kw)``, or None when the entry is missing or bad.

    A bad entry (:class:`CorruptEntry`) is quarantined when ``quarantine_bad``
    (do that only under the entry's lock), and otherwise just treated as missing.
    """
    try:
        return reader(path, **kw)
    except FileNotFoundError:
        return None
    except CorruptEntry as exc:
        if quarantine_bad:
            quarantine(path, exc.reason)
        return None


# -- locks -----------------------------------------------------------------------------------------

def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock for the cache entry ``path`` (on ``<path>.lock``) while the block runs.

    Blocks until no other process (or thread) holds it. The lock file is
    removed on exit, so caches are not littered with them; a waiter that was
    granted the lock on a removed file notices (the path no longer names the
    file it locked) and locks the new one instead. If the holder is killed the
    kernel releases its lock and the stale ``.lock`` file is simply reused.
    """
    if fcntl is None:  # pragma: no cover - Windows: atomic renames only
        yield
        return
    target = lock_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            current = os.stat(target)
            if (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino):
                break
        except FileNotFoundError:
            pass  # the previous holder removed it after we opened it: lock the new one
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        try:
            target.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)
