"""Run benchmark scripts' `main(["--smoke", "--json"])` one after another in this one process.

tests/test_benchmarks.py starts this once per test run (not one process per script): each process
pays for starting Python, JAX and torch, and the scripts share many compiled programs. Each
script's stdout is kept apart, so the test can check that it is exactly one JSON object.

    python tests/benchmark_smoke.py OUT.json bench_train.py bench_moe.py ...
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
import time
import traceback
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str) -> dict[str, object]:
    stdout, started = io.StringIO(), time.perf_counter()
    try:
        spec = importlib.util.spec_from_file_location(Path(script).stem, BENCHMARKS / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with contextlib.redirect_stdout(stdout):
            module.main(["--smoke", "--json"])
    except BaseException:  # argparse's SystemExit too: reported, and the next script still runs
        error = traceback.format_exc()[-3000:]
    else:
        error = ""
    seconds = time.perf_counter() - started
    print(f"{script}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return {"ok": not error, "stdout": stdout.getvalue(), "error": error, "seconds": seconds}


if __name__ == "__main__":
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their _common.py
    out, scripts = sys.argv[1], sys.argv[2:]
    Path(out).write_text(json.dumps({script: run(script) for script in scripts}))
