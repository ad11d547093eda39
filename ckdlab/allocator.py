"""glibc malloc settings for training: keep freed memory for the next step instead of returning it.

A training step allocates and frees the same few-megabyte tensors every time
(rows of a batch, a graph layer's activations, their gradients). With glibc's
own settings many of them go back to the operating system when freed (large
blocks are served by ``mmap`` and unmapped on free; the heap's free top is
trimmed), so the next step takes every page again as a fresh page fault and
the kernel zeroes it. Measured on TikTok, one thread, this package's 2-core
AMD EPYC: a VBPR + CKD step took about 1,200 minor page faults, an MMGCN step
4,000-5,800; with :func:`keep_freed_memory` 34 and 230-300. Beside two busy
neighbours (memory bandwidth shared) that was 5-10% of a step; on an idle
machine about 2% (README, "Speed").

Off glibc (macOS, musl), or when the user tuned malloc through the environment
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``), or
with ``CKDLAB_MALLOC=default``, nothing changes. The cost is memory: a process
keeps up to its peak of freed heap memory instead of returning it.
"""
from __future__ import annotations

import ctypes
import os
import sys

ENV = "CKDLAB_MALLOC"
#: ``mallopt`` parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap (glibc's largest allowed threshold on 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the heap's top is returned to the system only above this size.
TRIM_THRESHOLD = 1 << 30
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")

_applied: bool | None = None


def _glibc():
    """The C library when it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError off glibc
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks for reuse (see the module docstring); once per process.

    Returns True when the settings are in effect, False when they were not applied
    (not glibc, the user's own malloc settings, or ``CKDLAB_MALLOC=default``).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "").strip().lower() == "default" or any(v in os.environ for v in _USER_SETTINGS):
        return False
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success; fixing the thresholds also stops glibc's dynamic adjustment
    _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
