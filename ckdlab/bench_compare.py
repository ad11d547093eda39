"""What ``ckdlab bench --against REV`` and ``--load N`` need: another revision's checkout, CPU-bound neighbours.

``--against REV`` benchmarks a git revision next to the working tree in the
same run: the revision is checked out (``git worktree add --detach``) into a
temporary folder and its ``ckdlab.bench --one`` subprocess runs with
``PYTHONPATH`` pointing there, alternating with the working tree's, so a change
in machine load hits both alike. ``--load N`` starts N CPU-bound neighbour
processes (a pure-Python busy loop each: a job that wants one whole core) while
the loaded measurement runs, and stops them afterwards.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str, cwd: Path = PACKAGE_ROOT) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


@contextmanager
def checkout(rev: str) -> Iterator[tuple[Path, str]]:
    """``(folder, full commit)`` of ``rev`` checked out in a temporary worktree, removed afterwards."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="ckdlab-bench-") as tmp:
        folder = Path(tmp) / commit[:12]
        _git("worktree", "add", "--detach", str(folder), commit)
        try:
            yield folder, commit
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=PACKAGE_ROOT,
                           capture_output=True)


@contextmanager
def neighbours(n: int) -> Iterator[list[subprocess.Popen]]:
    """``n`` CPU-bound processes running for the duration of the block (none for ``n = 0``)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(0, int(n)))]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
