"""``make demo`` writes only where git ignores it, so a new user's first run leaves the clone clean."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None or not (REPO / ".git").exists(),
                    reason="needs make, git and a git checkout")
def test_make_demo_writes_only_ignored_paths():
    # -n: print the commands without running them; STAMP=Makefile: no install step in the listing
    out = subprocess.run(["make", "-n", "demo", "STAMP=Makefile"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    commands = [line for line in out.splitlines() if "ckdlab " in line and " --out " in line]
    assert len(commands) == 2, out
    targets = [line.split(" --out ")[1].split()[0] for line in commands]
    for target in targets:
        assert not target.startswith("reports"), target
        probe = f"{target.rstrip('/')}/synthetic/pilot.html" if not target.endswith(".json") else target
        ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO)
        assert ignored.returncode == 0, f"{probe} is not ignored by git"
    assert "demo outputs (not tracked by git)" in out
