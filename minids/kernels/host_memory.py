"""Keep freed host memory in the process, so each XLA:CPU step does not page-fault its scratch in again.

A CPU-only speed setting, not part of any technique, so it lives with the kernels.

Why. A compiled XLA:CPU program gets one scratch ("temp") buffer per run for all its intermediate
arrays: about 780 MB for a training step of the `small` preset. It is freed when the run ends and
allocated again by the next one. glibc's malloc serves a block that large with `mmap` and gives it
back to the kernel with `munmap` on free, so every step writes to some 190,000 fresh 4 KiB pages,
each one a page fault the kernel answers by zeroing the page. On a 2-core machine that was about
300 ms of system time per `small` step, roughly 15% of the step's CPU time (measured with
`resource.getrusage`; see benchmarks/README.md).

What. `keep_freed_memory()` asks glibc (`mallopt`) to serve every thread from the one main heap
(`M_ARENA_MAX` = 1: a thread's own arena would still `mmap` blocks this large), never to use `mmap`
(`M_MMAP_MAX` = 0) and never to give the top of the heap back (`M_TRIM_THRESHOLD` = 2 GiB). Freed
blocks are then reused by the next step, already mapped. The cost: the process keeps its peak host
memory until it exits, which a training process reaches again on the next step anyway.

When. Only when called: importing minids changes no process-wide state. The command line
(`python -m minids ...`) and the benchmarks call it first thing; a notebook or script that trains
on a CPU for a long time may call it in its set-up cell, knowing that it changes how every library
in the process allocates. It must run before JAX starts its CPU threads (the first computation)
to cover them. It acts on Linux with glibc, unless the environment sets
`MINIDS_KEEP_FREED_MEMORY=0`; elsewhere (macOS, Windows, musl) it does nothing. Accelerators keep
their own memory pools and are not affected.
"""

from __future__ import annotations

import ctypes
import os
import platform

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: 2 GiB is its largest value

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory for reuse (see the module docstring). True if it was applied.

    Safe to call more than once; only the first call acts.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("MINIDS_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = [
        mallopt(M_ARENA_MAX, 1),
        mallopt(M_MMAP_MAX, 0),
        mallopt(M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
    ]
    _applied = all(r == 1 for r in ok)  # mallopt returns 1 on success
    return _applied
