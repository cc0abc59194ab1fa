"""Helpers the benchmark scripts share: progress to stderr, and a side-by-side table of figures."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def log(msg: str) -> None:
    """Progress goes to stderr, so that `--json` leaves stdout to the one JSON object."""
    print(msg, file=sys.stderr, flush=True)


def print_columns(columns: dict[str, dict], rows: Sequence[tuple[str, Callable[[dict], str]]],
                  width: int = 20) -> None:
    """One column per measured configuration, one row per (label, formatter) pair."""
    print(f"{'':28s}" + "".join(f"{name:>{width}s}" for name in columns))
    for label, fmt in rows:
        print(f"{label:28s}" + "".join(f"{fmt(col):>{width}s}" for col in columns.values()))
