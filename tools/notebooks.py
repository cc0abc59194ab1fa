"""Execute the notebooks in normal mode and write them back with their outputs (`make notebooks`).

    python tools/notebooks.py                      # every notebook in notebooks/, in order
    python tools/notebooks.py 01_moe 03_fp8        # just these
    python tools/notebooks.py --clean-only         # strip metadata noise, run nothing

Each notebook runs top to bottom in a fresh kernel, from a scratch folder (so what it writes lands
nowhere in the repository), with `MINIDS_SMOKE` unset. Afterwards the file is cleaned so that a diff
shows only what changed: the per-cell execution timestamps and the kernel's own metadata go, the
outputs and execution counts stay. The measured wall time of each notebook is printed at the end.

What `tests/test_notebooks.py` then checks of a committed notebook: every code cell ran, in order,
without an error; no output holds a machine path; the file is at most 2 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MAX_BYTES = 2_000_000
# Cell metadata worth keeping (the rest is noise a diff should not show).
KEEP_CELL_METADATA = {"tags", "jupyter"}
KEEP_NOTEBOOK_METADATA = {"kernelspec", "language_info"}


def clean(nb: dict) -> dict:
    """Drop run-to-run noise from a notebook (as a JSON dict), keeping outputs and counts."""
    nb["metadata"] = {
        k: v for k, v in nb.get("metadata", {}).items() if k in KEEP_NOTEBOOK_METADATA
    }
    nb["metadata"].get("language_info", {}).pop("version", None)  # the patch version is noise
    for cell in nb["cells"]:
        cell["metadata"] = {
            k: v for k, v in cell.get("metadata", {}).items() if k in KEEP_CELL_METADATA
        }
        cell.pop("id", None)  # random per cell; nbformat 4.5 ids churn every diff
    nb["nbformat_minor"] = min(nb.get("nbformat_minor", 4), 4)
    return nb


def write(path: Path, nb: dict) -> None:
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def execute(path: Path, timeout: int) -> float:
    """Run one notebook in normal mode and write it back with its outputs; returns seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # The kernel inherits this process's environment: normal mode, and figures shown inline.
    os.environ.pop("MINIDS_SMOKE", None)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    with tempfile.TemporaryDirectory(prefix="minids-nb-") as scratch:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": scratch}},
        )
        start = time.perf_counter()
        try:
            client.execute()
        finally:  # also when a cell failed: where did the time go?
            print_slowest_cells(nb)
        seconds = time.perf_counter() - start
    write(path, clean(json.loads(nbformat.writes(nb))))
    size = path.stat().st_size
    if size > MAX_BYTES:
        print(
            f"  warning: {path.name} is {size / 1e6:.1f} MB, over the 2 MB limit", file=sys.stderr
        )
    return seconds


def print_slowest_cells(nb, count: int = 5) -> None:
    """Print the cells that took longest, from nbclient's per-cell timestamps (before `clean`)."""
    from datetime import datetime

    took = []
    for number, cell in enumerate(nb.cells):
        stamps = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in stamps and "shell.execute_reply" in stamps:
            start, end = (
                datetime.fromisoformat(stamps[k].replace("Z", "+00:00"))
                for k in ("iopub.execute_input", "shell.execute_reply")
            )
            took.append(((end - start).total_seconds(), number, cell.source.split("\n")[0]))
    for seconds, number, first_line in sorted(took, reverse=True)[:count]:
        print(f"  cell {number:3d} {seconds:7.1f} s  {first_line[:60]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    parser.add_argument("--clean-only", action="store_true", help="strip metadata noise only")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell at most")
    args = parser.parse_args(argv)
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if args.names:
        wanted = {n.removesuffix(".ipynb") for n in args.names}
        unknown = wanted - {p.stem for p in paths}
        if unknown:
            raise SystemExit(f"no such notebook: {sorted(unknown)}; have {[p.stem for p in paths]}")
        paths = [p for p in paths if p.stem in wanted]
    times = {}
    for path in paths:
        if args.clean_only:
            write(path, clean(json.loads(path.read_text())))
            continue
        print(f"executing {path.name} ...", flush=True)
        times[path.name] = execute(path, args.timeout)
        print(f"  {path.name}: {times[path.name] / 60:.1f} min", flush=True)
    for name, seconds in times.items():
        print(f"{name:<32}{seconds / 60:5.1f} min")


if __name__ == "__main__":
    main()
