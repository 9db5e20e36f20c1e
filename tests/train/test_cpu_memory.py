"""train.retain_cpu_memory: freed large blocks stay in the process for reuse (glibc)."""
import subprocess
import sys

import pytest

SCRIPT = """
import os, sys, torch
from udi.train.cpu_memory import retain_freed_memory
took = retain_freed_memory() if sys.argv[1] == "retain" else None
def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = resident_mb()
x = torch.ones(32 * 2**20)  # 128 MB: above glibc's largest mmap threshold (32 MB)
del x
print(took, resident_mb() - before)
"""


def kept_mb(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True).stdout
    took, kept = out.split()
    return took, float(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_large_blocks_stay_in_the_process():
    took, retained = kept_mb("retain")
    _, plain = kept_mb("plain")
    assert took == "True"
    assert plain < 16  # unmapped at once
    assert retained > 100  # kept on the heap, for the next step's tensors of that size
