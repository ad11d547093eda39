"""Run records: every run behind a report, compact enough to commit and portable to any machine.

A record is one finished run as :class:`~ckdlab.result.Result` holds it
(configuration, dataset summary, metrics, history, CKD trace and teachers'
scores, provenance: numbers-version, commit, torch, CPU, threads) or the
failure record of a run that diverged. It holds no weights, no teachers'
weights and no checkpoints, and no absolute path of the machine that made it
(a path keeps only its last component; host names and process ids are dropped).

A record is named by the run's result key, the same key as its cache entry
(configuration identity, data fingerprint, numbers identity: see
:func:`ckdlab.experiments.result_key`), so a run is found by what it is, and
code that computes other numbers never finds it: one report, one numbers-version.
It is gzip-compressed JSON behind the cache's integrity header
(:func:`ckdlab.store.write_blob`), written atomically.

Where records live: the folder named by ``$CKDLAB_RECORDS``. ``ckdlab report``
sets it to ``<out>/<dataset>/runs`` for the notebooks it executes, so every run
of a committed report is committed next to it. There, a run with a record is
never trained again (on this machine or another), and a run read from the cache
gets its record written. With ``$CKDLAB_RECORDS_ONLY=1`` (``ckdlab report
--from-records``) the cache is not read and a run without a record is an error
(:class:`MissingRecord`) instead of a training run.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

from . import store
from .result import Result

#: Folder of run records for this process and its workers (notebook kernels, grid workers).
RECORDS_ENV = "CKDLAB_RECORDS"
#: "1": runs come from records only; nothing trains and the cache is not read.
ONLY_ENV = "CKDLAB_RECORDS_ONLY"

RECORD_SCHEMA = "ckdlab.run-record"
FAILURE_RECORD_SCHEMA = "ckdlab.run-failure-record"
RECORD_FORMAT = 1
#: The most the committed records may take, in all (``reports/*/runs``).
SIZE_BUDGET_BYTES = 30 * 2**20

_RESULT_SUFFIX = ".json.gz"
_FAILURE_SUFFIX = ".failed.json.gz"
#: What reading marks on a Result (never part of a record).
_READ_MARKS = ("cached", "from_record", "record_key")
#: Fields of a failure record that only say which machine or process it was.
_MACHINE_FIELDS = ("host", "pid")
#: An absolute path of two or more components anywhere in a string (``/root/.cache/x.pt``, ``C:\\a\\b``).
_ABSOLUTE = re.compile(r"(?<![\w.~])(?:[A-Za-z]:)?(?:[\\/][^\s\\/:'\"]+){2,}")


class MissingRecord(LookupError):
    """A run was asked for that has no record, where runs may only come from records."""


def records_dir() -> Path | None:
    """The records folder of this process (``$CKDLAB_RECORDS``), or None."""
    folder = os.environ.get(RECORDS_ENV)
    return Path(folder).expanduser() if folder else None


def records_only() -> bool:
    """Whether runs must come from records (``$CKDLAB_RECORDS_ONLY=1``): no training, no cache."""
    if os.environ.get(ONLY_ENV, "") != "1":
        return False
    if records_dir() is None:
        raise ValueError(f"{ONLY_ENV}=1 but {RECORDS_ENV} names no records folder")
    return True


def result_record_path(folder: Path, key: str) -> Path:
    """Where the record of finished run ``key`` lives in ``folder``."""
    return Path(folder) / f"{key}{_RESULT_SUFFIX}"


def failure_record_path(folder: Path, key: str) -> Path:
    """Where the record of run ``key`` that diverged lives in ``folder``."""
    return Path(folder) / f"{key}{_FAILURE_SUFFIX}"


def portable(value):
    """``value`` with every absolute path, wherever it appears in a string, cut to its last component
    (recursively through dicts and lists)."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str):
        return _ABSOLUTE.sub(lambda m: re.split(r"[\\/]", m.group(0))[-1], value)
    return value


def _encode(payload: dict) -> bytes:
    # mtime=0: the same record compresses to the same bytes, so rewriting it changes nothing in git
    return gzip.compress(store.canonical_json(payload), compresslevel=9, mtime=0)


def _decode(path: Path, schema: str) -> dict | None:
    """The payload of the record at ``path``; None when absent. A damaged record is an error: it is committed
    evidence, never silently replaced."""
    if not path.exists():
        return None
    raw = store.read_blob(path, schema=schema, format=RECORD_FORMAT)
    try:
        return json.loads(gzip.decompress(raw))
    except (OSError, ValueError) as exc:
        raise store.CorruptEntry(path, f"not gzip-compressed JSON: {exc}") from None


def _write(path: Path, payload: dict, schema: str, meta: dict | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_blob(path, _encode(portable(payload)), schema=schema, format=RECORD_FORMAT, meta=meta)
    return path


def write_result(folder: Path, key: str, result: Result, meta: dict | None = None) -> Path:
    """Record ``result`` as ``<folder>/<key>.json.gz`` (replacing a failure record of the same run)."""
    payload = {k: v for k, v in result.to_dict().items() if k not in _READ_MARKS}
    path = _write(result_record_path(folder, key), payload, RECORD_SCHEMA, meta)
    failure_record_path(folder, key).unlink(missing_ok=True)
    return path


def write_failure(folder: Path, key: str, failure: dict, meta: dict | None = None) -> Path:
    """Record a diverged run's failure record (see :func:`ckdlab.experiments.failure_record`)."""
    payload = {k: v for k, v in failure.items() if k not in _MACHINE_FIELDS + _READ_MARKS}
    return _write(failure_record_path(folder, key), payload, FAILURE_RECORD_SCHEMA, meta)


def read_result(folder: Path, key: str) -> Result | None:
    """The recorded Result of run ``key`` (marked ``cached``, ``from_record`` and its ``record_key``), or None."""
    payload = _decode(result_record_path(folder, key), RECORD_SCHEMA)
    if payload is None:
        return None
    result = Result.from_dict(payload)
    result.extras.update(cached=True, from_record=True, record_key=key)
    return result


def read_failure(folder: Path, key: str) -> dict | None:
    """The recorded failure of run ``key`` (marked ``cached``), or None."""
    payload = _decode(failure_record_path(folder, key), FAILURE_RECORD_SCHEMA)
    return None if payload is None else {**payload, "cached": True}


def result_keys(folder: Path) -> list[str]:
    """Keys of the finished runs recorded in ``folder`` (failure records left out), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name[:-len(_RESULT_SUFFIX)] for p in folder.glob(f"*{_RESULT_SUFFIX}")
                  if not p.name.endswith(_FAILURE_SUFFIX))


def evaluations(epochs_run: int, eval_every: int = 1) -> int:
    """How many evaluations a finished run made: one every ``eval_every`` epochs, then the final
    validation and the test."""
    return int(epochs_run or 0) // max(1, int(eval_every or 1)) + 2


def teacher_seconds(cost: dict) -> float:
    """The CPU seconds a CKD teacher's stored cost (``Teacher.cost``) says it took: epochs and evaluations."""
    return (float(cost.get("total_train_seconds") or 0.0)
            + float(cost.get("eval_seconds") or 0.0) * evaluations(cost.get("epochs_run")))


def has_record(folder: Path, key: str) -> bool:
    """Whether run ``key`` has a record in ``folder``, finished or diverged."""
    return result_record_path(folder, key).exists() or failure_record_path(folder, key).exists()


def summary(folder: Path) -> dict:
    """How many records ``folder`` holds, their bytes, the numbers identities they were made under and
    what the runs cost, in seconds: ``train_seconds`` (training epochs), ``eval_seconds`` (validations
    and the final test, at each run's mean evaluation time) and ``teacher_seconds`` (CKD's teachers,
    trained inside a CKD run's set-up, each counted once however many runs share it; teachers
    stored before they kept their cost are counted in ``teachers_without_cost``). ``stale`` counts
    records of another numbers-version: no code of this version reads them, and they are left out
    of the other counts."""
    from .provenance import NUMBERS_VERSION

    folder = Path(folder)
    files = sorted(folder.glob(f"*{_RESULT_SUFFIX}")) if folder.is_dir() else []
    results = [p for p in files if not p.name.endswith(_FAILURE_SUFFIX)]
    identities, size, stale, current = {}, 0, 0, 0
    seconds = {"train": 0.0, "eval": 0.0}
    teachers: dict[str, float | None] = {}
    for path in results:
        meta = (store.read_header(path) or {}).get("meta") or {}
        if meta.get("numbers_version") != NUMBERS_VERSION:
            stale += 1
            continue
        current += 1
        size += path.stat().st_size
        ident = {k: meta.get(k) for k in ("numbers_version", "torch", "device", "threads")}
        identities[json.dumps(ident, sort_keys=True)] = ident
        record = _decode(path, RECORD_SCHEMA)
        timing = record.get("timing") or {}
        seconds["train"] += float(timing.get("total_train_seconds") or 0.0)
        made = evaluations(record.get("epochs_run"), (record.get("config") or {}).get("eval_every"))
        seconds["eval"] += float(timing.get("eval_seconds") or 0.0) * made
        for teacher in (record.get("teachers") or {}).values():
            cost = teacher.get("cost")
            # one teacher serves several runs (a seed's CKD variants): known by its own scores
            ident = json.dumps({k: teacher.get(k) for k in ("valid", "test", "best_epoch")}, sort_keys=True)
            teachers[ident] = teacher_seconds(cost) if cost else None
    return {"records": current, "failed": len(files) - len(results), "stale": stale, "bytes": size,
            "numbers": [identities[k] for k in sorted(identities)], "train_seconds": round(seconds["train"], 3),
            "eval_seconds": round(seconds["eval"], 3),
            "teacher_seconds": round(sum(v for v in teachers.values() if v is not None), 3),
            "teachers_without_cost": sum(v is None for v in teachers.values())}


def missing_message(config, key: str, folder: Path) -> str:
    """The error of a run asked for where runs come from records only and this one has none."""
    from .provenance import numbers_identity

    ident = numbers_identity(config.device)
    return (f"no run record for {config.backbone}/{config.method} seed {config.seed} (key {key}) in "
            f"{Path(folder).name}/: runs here come from records only ({ONLY_ENV}=1, ckdlab report --from-records). "
            f"A record is found only for the same configuration and data, numbers-version "
            f"{ident['numbers_version']}, torch {ident['torch']} and thread count {ident['threads']} (records of "
            f"another device type are found too); run `ckdlab report` without --from-records to train what is missing")
