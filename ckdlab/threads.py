"""Thread policy: how many torch intra-op threads a run uses, and OpenMP threads that yield when idle.

* **How many.** ``--threads N`` (or ``threads=N``) first, then the environment
  variable ``CKDLAB_THREADS``, else the CPUs this process may use (its affinity
  mask and, in a container, its CPU quota) divided by the number of runs that
  share them: all available CPUs for a single ``ckdlab train``, one thread per
  trial for ``ckdlab tune``. Grid workers take the calling process's count
  (:func:`ckdlab.executors.grid_threads`); the notebooks set one thread.
* **Waiting.** OpenMP worker threads spin for a while after each parallel
  region by default; on a machine shared with other jobs that spinning takes
  cores the neighbours need, and a descheduled thread stalls every region.
  :func:`yielding_openmp` sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set
  it; it only takes effect when called before torch is imported (the CLI does).

The thread count is part of every result's key (:mod:`ckdlab.provenance`):
float sums are split differently across threads, so results made with
different counts are kept apart.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

ENV = "CKDLAB_THREADS"


def _cgroup_quota_cpus() -> float | None:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cfs_quota_us``) quota, None when unlimited/unknown."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a container's CPU quota (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota_cpus()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def env_threads() -> int | None:
    """``CKDLAB_THREADS`` as a positive int, None when unset; a clear error when it is not one."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{ENV}={text!r}: expected a whole number of threads >= 1")
    return value


def choose_threads(requested: int | None = None, *, concurrent_runs: int = 1) -> int:
    """Threads for one run: ``requested``, else ``CKDLAB_THREADS``, else available CPUs / ``concurrent_runs``."""
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"threads must be >= 1, got {requested}")
        return int(requested)
    from_env = env_threads()
    if from_env is not None:
        return from_env
    return max(1, available_cpus() // max(1, int(concurrent_runs)))


def use_threads(requested: int | None = None, *, concurrent_runs: int = 1) -> int:
    """Set torch's intra-op threads by :func:`choose_threads`; returns the count."""
    import torch

    threads = choose_threads(requested, concurrent_runs=concurrent_runs)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


#: Spins an idle GNU OpenMP thread makes before it sleeps (``GOMP_SPINCOUNT``; libgomp's own
#: figure for an oversubscribed machine). Measured with ``ckdlab bench --load 2`` on TikTok, two
#: threads, 2-core machine (README, "Threads and shared machines"): sleeping at once
#: (``OMP_WAIT_POLICY=PASSIVE`` alone) doubled an unloaded epoch, since every kernel of a step then
#: wakes its threads; 5,000 or 20,000 spins slowed an epoch 2.2-2.8x beside two CPU-bound
#: neighbours, 1,000 spins 1.5-1.9x.
SPIN_COUNT = 1000


def yielding_openmp() -> bool:
    """Idle OpenMP threads spin briefly, then sleep, unless the user chose a wait policy.

    Sets ``OMP_WAIT_POLICY=PASSIVE`` (runtimes other than GNU: sleep when idle) and
    ``GOMP_SPINCOUNT`` = :data:`SPIN_COUNT` (GNU OpenMP, torch's Linux wheels: it takes
    precedence over the policy) when neither ``OMP_WAIT_POLICY`` nor ``GOMP_SPINCOUNT`` is
    set. Returns True when it can still take effect (torch not imported yet).
    """
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return "torch" not in sys.modules
