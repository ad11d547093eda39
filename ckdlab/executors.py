"""Training runs of a grid on any :class:`concurrent.futures.Executor`: local processes or a Dask cluster.

:func:`ckdlab.experiments.grid` decides *which* runs need training; this module
runs them elsewhere and hands each outcome back as it completes.

Why it looks the way it does:

* This module does not know what a run is: :func:`run_many` receives the task
  (:func:`ckdlab.experiments.run_task`), a module-level function whose arguments
  and return value are plain data (a config dict, a :class:`DataSpec`, a path,
  an int), so any executor can pickle it, including Dask's. The task returns the
  Result as a dict, and a diverged run as a failure record instead of raising
  :class:`~ckdlab.faults.TrainingDiverged` (whose keyword-only constructor does
  not survive pickling). Keeping the task out of here keeps the import one-way:
  experiments imports executors, never the reverse.
* Workers reload the dataset from its source (a folder or ``"synthetic"``),
  once per process, rather than receiving a pickled copy with every task; the
  parent checks first that the source reproduces the dataset (same content
  fingerprint and name) and ships the Dataset itself when it does not.
* Each worker sets torch's intra-op threads to ``CKDLAB_THREADS`` when set, else
  to the parent's count, so every run computes exactly what it would in-process
  (the count changes float sums and is part of every result's key).
  ``experiments.setup(threads)`` (the notebooks, ``ckdlab report``: one thread)
  sets both; the pool then runs one run per CPU.
* Each run goes through :func:`ckdlab.experiments.run`, which writes its own
  cache entry under a lock: a cluster on a shared filesystem shares one store.
* The default local pool uses the ``spawn`` start method: forking a process
  after torch/OpenMP started their threads can deadlock the child.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .data import DataWarning
from .threads import available_cpus, env_threads


#: ``grid(executor=INLINE)``: train in this process, one run after the other.
INLINE = "inline"

_SYNTHETIC_SOURCE = re.compile(r"synthetic\(seed=(-?\d+)\)")


# -- the dataset, as workers get it -----------------------------------------------------------------

@dataclass(frozen=True)
class DataSpec:
    """Where a worker reloads the dataset from, and the fingerprint it must find there.

    ``source`` is ``"synthetic"`` or an absolute folder path (which every worker
    must see at the same path); ``options`` are keyword arguments of
    :func:`ckdlab.data.load` as sorted ``(name, value)`` pairs.
    """

    source: str
    options: tuple = ()
    fingerprint: str = ""

    def load(self):
        from .data import load

        data = load(self.source, **dict(self.options))
        if self.fingerprint and data.fingerprint != self.fingerprint:
            raise RuntimeError(f"dataset {self.source!r} loaded on this worker has fingerprint {data.fingerprint}, "
                               f"the grid's has {self.fingerprint}: the files differ between machines")
        return data


def dataset_spec(dataset, data):
    """What to send to workers for ``data`` (loaded from the grid's ``dataset`` argument).

    A folder path or ``"synthetic"`` -> a :class:`DataSpec`. A Dataset object ->
    a DataSpec when reloading its recorded source gives the same data (checked
    once per process), else the Dataset itself (pickled with each task).
    """
    from .data import Dataset
    from .data.loader import SYNTHETIC

    if not isinstance(dataset, Dataset):
        source = str(dataset)
        if source != SYNTHETIC:
            source = str(Path(source).expanduser().resolve())
        return DataSpec(source, (), data.fingerprint)
    candidate = _source_spec(data)
    if candidate is not None and _reproduces(candidate, data.name):
        return candidate
    return data


def _source_spec(data) -> DataSpec | None:
    match = _SYNTHETIC_SOURCE.fullmatch(data.source or "")
    if match:
        seed = int(match.group(1))
        return DataSpec("synthetic", (("seed", seed),) if seed else (), data.fingerprint)
    if data.source and Path(data.source).is_dir():
        return DataSpec(str(Path(data.source).resolve()), (("name", data.name),), data.fingerprint)
    return None


_REPRODUCES: dict[tuple[DataSpec, str], bool] = {}


def _reproduces(spec: DataSpec, name: str) -> bool:
    """Whether ``spec`` reloads to this fingerprint and name (memoised: a reload can take seconds)."""
    if (spec, name) not in _REPRODUCES:
        try:
            _REPRODUCES[(spec, name)] = spec.load().name == name
        except Exception:  # modified after loading, moved, unreadable: ship the Dataset instead
            _REPRODUCES[(spec, name)] = False
    return _REPRODUCES[(spec, name)]


_WORKER_DATASETS: dict[DataSpec, object] = {}


def worker_dataset(spec):
    """The Dataset of ``spec`` in this process: loaded on first use, then reused by later tasks."""
    if not isinstance(spec, DataSpec):
        return spec
    if spec not in _WORKER_DATASETS:
        _WORKER_DATASETS.clear()  # a worker serves one grid's dataset at a time; do not hoard memory
        with warnings.catch_warnings():  # the parent loaded the same data and already showed its warnings
            warnings.simplefilter("ignore", DataWarning)
            _WORKER_DATASETS[spec] = spec.load()
    return _WORKER_DATASETS[spec]


# -- running many tasks -----------------------------------------------------------------------------

def can_spawn() -> bool:
    """Whether spawned workers can start: they re-import the main program, impossible for one read from stdin."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path is None or os.path.exists(path)


def grid_threads() -> int:
    """Torch threads of each grid worker: ``CKDLAB_THREADS`` when set, else the parent's count.

    A worker then computes exactly what the same run computes in the parent (the
    thread count changes float sums and is part of the result key). The
    notebooks and ``ckdlab report`` set one thread (``experiments.setup``), so
    their grids run one thread per run and one run per CPU.
    """
    import torch

    return env_threads() or torch.get_num_threads()


def default_workers(n_tasks: int, threads: int) -> int:
    """Local pool size: as many runs as fit the CPUs at ``threads`` torch threads each, at most ``n_tasks``."""
    return max(1, min(n_tasks, available_cpus() // max(1, threads)))


@contextmanager
def _local_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A spawn-context process pool, shut down on exit; its workers are killed on Ctrl-C."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    except KeyboardInterrupt:
        _terminate(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Send the pool's workers SIGTERM, on which a training run checkpoints and stops (see ``ckdlab.train``).

    The next grid over the same configurations resumes them; a worker stopped
    anywhere else leaves no partial cache entry (writes are atomic).
    """
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def run_many(task: Callable[..., dict], tasks: Sequence[tuple[int, object]], dataset, data, cache_dir, *,
             executor: Executor | None, workers: int | None, use_cache: bool,
             on_done: Callable[[int, dict], None]) -> None:
    """Run ``task`` on each of ``tasks`` (``(index, TrainConfig)``); call ``on_done(index, outcome)`` as each completes.

    ``task(config_dict, data_spec, cache_dir, threads, use_cache)`` runs in the
    worker and returns plain data (:func:`ckdlab.experiments.run_task`).

    ``executor`` None: a local spawn process pool of ``workers`` processes
    (default :func:`default_workers`), shut down afterwards; any other Executor
    is used as is and left running. ``outcome`` is ``task``'s dict.
    If a task raises, the tasks not yet started are cancelled and the error
    propagates; runs already finished are in the cache.
    """
    from .cache import resolve_cache_dir

    threads = grid_threads()
    spec = dataset_spec(dataset, data)
    root = str(resolve_cache_dir(cache_dir).resolve())  # workers may run elsewhere, with another cwd/env
    if executor is None:
        pool_context = _local_pool(workers or default_workers(len(tasks), threads))
    else:
        pool_context = _borrowed(executor)
    with pool_context as pool:
        futures = {pool.submit(task, config.to_dict(), spec, root, threads, use_cache): index
                   for index, config in tasks}
        try:
            for future in as_completed(futures):
                on_done(futures[future], future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


@contextmanager
def _borrowed(executor: Executor) -> Iterator[Executor]:
    """The caller's executor: theirs to shut down."""
    yield executor
