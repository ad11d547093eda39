"""Which code, on which machine, made a number: the numbers-version and a run's provenance.

Two different things are recorded, for two different jobs:

* :func:`numbers_identity` goes into every result, teacher and checkpoint
  *key*. It holds what decides whether a stored number may be reused:
  :data:`NUMBERS_VERSION`, the torch version, the device type and, on CPU, the
  intra-op thread count (a different thread count sums floats in another
  order). An entry made by other numbers-code, another torch or another thread
  count is never read, and a checkpoint of such a run is never resumed.
* :func:`run_provenance` goes into every ``Result``: the identity above plus
  the git commit (when the package runs from a checkout), ckdlab's and
  Python's versions, the CPU capability torch dispatches to (AVX2, AVX-512,
  ...) and the GPU's name. Reports and tables show it; it is not part of the
  key, so a result computed on one machine can be reused on another of the
  same kind (a cluster) and committed records stay valid across checkouts.

Why a version constant and not a hash of the source files: a hash changes on
every refactor, comment or docstring edit, and would throw away hours of
cached runs that would compute exactly the same numbers. The constant stays
put across such edits, and ``tests/test_golden.py`` stops a change that moves a
number from forgetting it: tiny runs of every backbone x method are compared,
within float32 tolerances, with values stored in ``tests/golden.json`` under
the current version, so a change that moves them fails until the version is
bumped and the golden values are written anew (``python tests/test_golden.py
--write``).
"""
from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch

#: Bump whenever a change moves any number a run produces (training, evaluation,
#: data loading, samplers, methods). ``tests/test_golden.py`` fails until you do.
#: 1: up to commit 39dc663 (implicit). 2: CKD "w/o re-weight" uses (M-1)/M, OGM-GE
#: noise only on entries with a gradient, GB's held-out pairs out of the graphs.
NUMBERS_VERSION = 2


def device_type(device) -> str:
    """``"cpu"`` or ``"cuda"`` for a device, a device string or ``"auto"``."""
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def torch_version() -> str:
    """torch's release without the local build tag (``2.13.0`` for ``2.13.0+cpu``)."""
    return torch.__version__.split("+")[0]


def numbers_identity(device) -> dict:
    """What a stored number's key must match to be reused (see the module docstring)."""
    kind = device_type(device)
    return {"numbers_version": NUMBERS_VERSION, "torch": torch_version(), "device": kind,
            "threads": torch.get_num_threads() if kind == "cpu" else None}


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit (``<sha>`` or ``<sha>-dirty``), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "ckdlab"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def package_version() -> str:
    try:
        return importlib.metadata.version("ckdlab")
    except importlib.metadata.PackageNotFoundError:  # imported from a source tree that is not installed
        return "unknown"


def cpu_capability() -> str:
    """The CPU kernel family torch dispatches to (``AVX2``, ``AVX512``, ``DEFAULT``...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:  # torch < 2.1
        return "unknown"


def run_provenance(device) -> dict:
    """Everything a reader needs to trace a result to its code and machine (stored in ``Result.provenance``)."""
    kind = device_type(device)
    out = {**numbers_identity(device), "git_commit": git_commit(), "ckdlab": package_version(),
           "python": platform.python_version(), "machine": platform.machine(), "cpu_capability": cpu_capability()}
    if kind == "cuda":
        index = torch.device(device).index if str(device) not in ("auto", "cuda") else None
        out["gpu"] = torch.cuda.get_device_name(index)
    return out


def describe(provenance: dict | None) -> str:
    """One line for reports: ``numbers v2, commit abc1234, torch 2.13.0, cpu (AVX2), 1 thread``."""
    if not provenance:
        return "provenance not recorded (made before numbers-version 2)"
    commit = provenance.get("git_commit") or "no git checkout"
    commit = commit[:7] + ("-dirty" if commit.endswith("-dirty") else "") if provenance.get("git_commit") else commit
    where = provenance.get("device", "?")
    if where == "cpu":
        threads = provenance.get("threads")
        where = f"cpu ({provenance.get('cpu_capability', '?')}), {threads} thread{'s' if threads != 1 else ''}"
    elif provenance.get("gpu"):
        where = f"cuda ({provenance['gpu']})"
    return (f"numbers v{provenance.get('numbers_version', '?')}, commit {commit}, "
            f"torch {provenance.get('torch', '?')}, {where}")
