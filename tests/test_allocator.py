"""ckdlab.allocator: freed blocks are kept for reuse (fewer page faults), and the user's choice wins."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from ckdlab import allocator

pytestmark = pytest.mark.skipif(allocator._glibc() is None, reason="glibc's mallopt only (Linux with glibc)")

# Allocation churn like a training step's: tensors of 1-8 MB allocated and freed, again and again.
_CHURN = textwrap.dedent("""
    import json, resource, sys
    import torch
    from ckdlab import allocator
    applied = allocator.keep_freed_memory()
    def churn():
        for n in (300_000, 1_600_000, 800_000, 2_000_000, 500_000):
            xs = [torch.empty(n).fill_(1.0) for _ in range(3)]
            del xs
    churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        churn()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
    print(json.dumps({"applied": applied, "again": allocator.keep_freed_memory(), "faults": faults}))
""")


def _run(**env):
    clean = {k: v for k, v in os.environ.items() if k not in allocator._USER_SETTINGS and k != allocator.ENV}
    out = subprocess.run([sys.executable, "-c", _CHURN], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kept_memory_removes_the_page_faults_of_repeated_allocations():
    tuned, default = _run(), _run(CKDLAB_MALLOC="default")
    assert tuned["applied"] and tuned["again"]
    assert not default["applied"]
    # glibc's own settings return most of these blocks to the system (thousands of faults per
    # round here); kept, the pages are reused (tens)
    assert default["faults"] > 500
    assert tuned["faults"] < default["faults"] / 5


@pytest.mark.parametrize("setting", ["MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"])
def test_the_users_own_malloc_settings_win(setting):
    value = "glibc.malloc.trim_threshold=131072" if setting == "GLIBC_TUNABLES" else "131072"
    assert not _run(**{setting: value})["applied"]
