"""minids/cpu_memory.py: freed host memory is kept for reuse, so a second large allocation made by a
worker thread (as XLA:CPU makes its per-step scratch buffer) does not page-fault its memory in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

# Allocate, touch and free 64 MiB twice from a worker thread; print the page faults of the second time.
PROBE = """
import ctypes, resource, threading
import minids
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
N = 64 * 2**20
def touch():
    p = libc.malloc(N)
    ctypes.memset(p, 1, N)
    libc.free(p)
faults = []
def worker():
    touch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=worker)
thread.start(); thread.join()
print(minids.cpu_memory.keep_freed_memory(), faults[0])
"""


def _probe(keep: str) -> tuple[bool, int]:
    env = {**os.environ, "MINIDS_KEEP_FREED_MEMORY": keep}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_freed_memory_is_reused_without_page_faults_and_the_switch_turns_it_off():
    applied, faults = _probe("1")
    assert applied
    assert faults < 200, f"{faults} page faults re-touching 64 MiB (16,384 pages): memory was not kept"
    applied_off, faults_off = _probe("0")
    assert not applied_off
    # glibc's default: a block this large is mmap'ed and returned, so it faults in again (with
    # transparent huge pages, 2 MiB pages: at least 32 faults).
    assert faults_off >= 32 and faults_off > 10 * max(faults, 1), (faults_off, faults)
