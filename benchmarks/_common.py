"""Helpers the benchmark scripts share: the command-line flags, progress to stderr, timing, and a
side-by-side table of figures."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from minids.kernels.host_memory import keep_freed_memory

# Each benchmark is its own process, training on a CPU as the command line does: keep freed host
# memory for reuse (minids/kernels/host_memory.py), before JAX starts its threads, as the CLI does.
keep_freed_memory()


SMOKE_HELP = "smallest shapes, one timed repeat: checks the script runs; its figures mean nothing"


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every script takes: --quick, --smoke and --json."""
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object, nothing else")


def repeats(args: argparse.Namespace, full: int, quick: int) -> int:
    """How many timed repeats: `full`, `quick` with --quick, 1 with --smoke."""
    return 1 if args.smoke else quick if args.quick else full


def log(msg: str) -> None:
    """Progress goes to stderr, so that `--json` leaves stdout to the one JSON object."""
    print(msg, file=sys.stderr, flush=True)


def print_columns(
    columns: dict[str, dict], rows: Sequence[tuple[str, Callable[[dict], str]]], width: int = 20
) -> None:
    """One column per measured configuration, one row per (label, formatter) pair."""
    print(f"{'':28s}" + "".join(f"{name:>{width}s}" for name in columns))
    for label, fmt in rows:
        print(f"{label:28s}" + "".join(f"{fmt(col):>{width}s}" for col in columns.values()))


def median_ms(call: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    """Median milliseconds of `repeats` calls run back to back, after one call to compile and (if
    `warm_up`) one to warm up."""
    jax.block_until_ready(call())  # compile
    if warm_up:
        jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def interleaved_ms(
    calls: dict[str, Callable[[], object]],
    repeats: int,
    label: str = "",
    samples: dict[str, list[float]] | None = None,
    warm_up: bool = True,
) -> dict[str, float]:
    """Median milliseconds of each call: compiled and (if `warm_up`) warmed up first, then timed in
    turn, `repeats` rounds, so that a slow moment of a shared machine hits every call alike.
    `samples`, if given, receives every timing, in milliseconds.

    What ran just before a call moves its time by a few percent (caches, memory the previous call
    touched). Two calls alternate, so each always follows the other. Three or more run in a new,
    seeded order each round, so that no call always follows the same one.
    """
    for name, call in calls.items():
        t0 = time.perf_counter()
        jax.block_until_ready(call())  # compile
        if warm_up:
            jax.block_until_ready(call())
        log(f"  {label}{name} compiled and warm in {time.perf_counter() - t0:.1f} s")
    times = {name: [] for name in calls}
    order, rng = list(calls), np.random.default_rng(0)
    for _ in range(repeats):
        if len(order) > 2:
            rng.shuffle(order)
        for name in order:
            t = time.perf_counter()
            jax.block_until_ready(calls[name]())
            times[name].append(time.perf_counter() - t)
    if samples is not None:
        samples.update({name: [1e3 * x for x in t] for name, t in times.items()})
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}
