"""Memory a batch frees is reused by the next, not given back to the kernel and faulted in
again (main.reuse_freed_memory, on glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Ten "batches" of 40 MB in 64 kB blocks, each freed before the next is made; prints the
# page faults of the last nine, per batch, in pages of 4 kB.
BATCHES = """
import resource, sys
sys.path.insert(0, {root!r})
if {reuse}:
    import main
    main.reuse_freed_memory()
def batch():
    blocks = [bytes(64 * 1024) for _ in range(640)]
    del blocks
batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    batch()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 9)
"""


def faults_per_batch(reuse: bool) -> float:
    code = BATCHES.format(root=str(ROOT), reuse=reuse)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_freed_batch_is_reused_without_faulting_its_pages_in_again():
    pages_per_batch = 40 * 1024 * 1024 / 4096
    assert faults_per_batch(reuse=False) > pages_per_batch / 4  # what glibc does by default
    assert faults_per_batch(reuse=True) < pages_per_batch / 20
