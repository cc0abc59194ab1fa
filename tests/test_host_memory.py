"""minids/kernels/host_memory.py: `import minids` leaves malloc alone, so freed blocks go back to the
system as usual; an explicit `keep_freed_memory()` keeps them for reuse, so a second large allocation
made by a worker thread (as XLA:CPU makes its per-step scratch buffer) does not page-fault again."""

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
import sys
import minids
from minids import *  # every public name: the modules load on first use
from minids.kernels import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] == "call" else None
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
print(applied, faults[0])
"""


def _probe(call: bool, keep: str = "1") -> tuple[bool | None, int]:
    env = {**os.environ, "MINIDS_KEEP_FREED_MEMORY": keep}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "call" if call else "import-only"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {"True": True, "False": False, "None": None}[out[0]], int(out[1])


# glibc's default: a block this large is mmap'ed and returned on free, so it faults in again (with
# transparent huge pages, 2 MiB pages: at least 32 faults for 64 MiB).
RETURNED = 32


def test_import_minids_leaves_malloc_alone_so_freed_memory_goes_back_to_the_system():
    applied, faults = _probe(call=False)
    assert applied is None
    assert faults >= RETURNED, (
        f"only {faults} page faults re-touching 64 MiB: import minids kept it"
    )


def test_keep_freed_memory_reuses_freed_memory_without_page_faults():
    applied, faults = _probe(call=True)
    assert applied is True
    assert faults < 200, (
        f"{faults} page faults re-touching 64 MiB (16,384 pages): memory was not kept"
    )
    _, faults_default = _probe(call=False)
    assert faults_default > 10 * max(faults, 1), (faults_default, faults)


def test_the_environment_switch_turns_keep_freed_memory_off():
    applied, faults = _probe(call=True, keep="0")
    assert applied is False
    assert faults >= RETURNED
