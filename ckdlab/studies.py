"""Persistent Optuna studies for :mod:`ckdlab.tuning`: where they live, what counts, what is retried.

Storage
    ``<cache>/studies/<name>.db`` (SQLite, embedded) by default, or any
    SQLAlchemy URL (``--storage postgresql://...``) shared by the workers of a
    cluster. Heartbeats are on, so a trial whose worker died (on any host) is
    marked failed once its heartbeat is ``grace_period`` seconds old; a trial
    whose worker process on *this* host is gone is marked failed at once
    (:func:`reap_dead_workers`).
Budget
    A trial *spends* budget when it completed, was pruned, or diverged (its
    configuration had its chance). A trial that failed otherwise (killed,
    interrupted, an error) does not: it is retried once with the same settings
    (:func:`enqueue_retries`), and the retry resumes from the run's checkpoint
    when one was written.
"""
from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from .cache import resolve_cache_dir

#: User attributes a trial carries.
HOST, PID, RETRY_OF, DIVERGED, ERROR = "host", "pid", "retry_of", "diverged", "error"


def study_path(name: str, cache_dir=None) -> Path:
    """The embedded default: ``<cache>/studies/<name>.db``."""
    return resolve_cache_dir(cache_dir) / "studies" / f"{name}.db"


def storage_url(name: str, cache_dir=None, storage: str | None = None) -> str:
    """``storage`` as given, else the SQLite URL of :func:`study_path` (its folder created)."""
    if storage:
        return storage
    path = study_path(name, cache_dir).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def redacted(url: str) -> str:
    """``url`` without its password (what is printed and stored in outputs)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 -- not a URL SQLAlchemy parses: show it as given
        return url


def open_storage(url: str, heartbeat_interval: int = 10, grace_period: int = 30) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats; SQLite waits for its lock instead of failing at once."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=int(heartbeat_interval),
                                          grace_period=int(grace_period))


#: User attribute of a trial whose settings an earlier trial already ran (it spends no budget).
REPEAT_OF = "repeat_of"


def spends_budget(trial: FrozenTrial) -> bool:
    """Completed, pruned, or failed because the run diverged; a repeat of earlier settings does not."""
    if REPEAT_OF in trial.user_attrs:
        return False
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and bool(trial.user_attrs.get(DIVERGED)))


def earlier_run(study: optuna.Study, params: dict, number: int) -> FrozenTrial | None:
    """A finished trial before ``number`` with the same ``params`` that spent budget, or None."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if t.number < number and spends_budget(t) and t.params == params:
            return t
    return None


def counted_trials(study: optuna.Study, limit: int | None = None) -> list[FrozenTrial]:
    """The trials that spend budget, by trial number; the first ``limit`` of them when given.

    Workers sharing a study can together finish a few more trials than the
    budget; only the first ``limit`` count, so every method is compared on the
    same number.
    """
    trials = sorted((t for t in study.get_trials(deepcopy=False) if spends_budget(t)), key=lambda t: t.number)
    return trials if limit is None else trials[:limit]


def claim(trial: optuna.Trial) -> None:
    """Record which process runs ``trial`` (for :func:`reap_dead_workers`)."""
    trial.set_user_attr(HOST, socket.gethostname())
    trial.set_user_attr(PID, os.getpid())


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:  # a zombie (killed, not yet reaped by its parent) is gone for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def reap_dead_workers(study: optuna.Study) -> list[int]:
    """Mark failed the running trials whose worker process on this host is gone; returns their numbers."""
    host, me = socket.gethostname(), os.getpid()
    storage = study._storage  # the public Storage API; Study exposes no other handle to it
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get(PID)
        if t.user_attrs.get(HOST) != host or pid is None or int(pid) == me or _process_alive(int(pid)):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, ERROR, f"worker process {pid} on {host} died")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # finished (or reaped by another worker) meanwhile
        reaped.append(t.number)
    return reaped


def enqueue_retries(study: optuna.Study) -> list[int]:
    """Enqueue, once, the settings of every trial that failed without spending budget; returns their numbers."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    out = []
    for t in trials:
        if t.state == TrialState.FAIL and not spends_budget(t) and t.number not in retried:
            study.enqueue_trial(dict(t.params), user_attrs={RETRY_OF: t.number})
            out.append(t.number)
    return out
