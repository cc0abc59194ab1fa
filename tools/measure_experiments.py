"""Measure the experiment exercises' reference results (the numbers in exercises/rubrics/).

    python tools/measure_experiments.py                 # all seven, 3 seeds each (~11 min on 2 cores)
    python tools/measure_experiments.py 01 03           # some of them
    python tools/measure_experiments.py --json out.json # also write {NN: {measured, seconds}} as JSON

Runs `minids.experiments.measure_NN` for every setting and seed 0, 1, 2, prints mean ± std per
setting and the `MEASURED = {...}` dict a student pastes; `minids.experiments.REFERENCE` and the
rubrics hold the output of one such run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # run from a checkout, installed or not

from minids.experiments import MEASURES, SEEDS, run_experiment  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiments", nargs="*", default=sorted(MEASURES), help="e.g. 01 03")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    unknown = [e for e in args.experiments if e not in MEASURES]
    if unknown:
        parser.error(f"unknown experiments {unknown}; known: {sorted(MEASURES)}")
    results = {}
    for key in args.experiments:
        measure, settings = MEASURES[key]
        print(f"== experiment {key} ({measure.__name__}), seeds {list(SEEDS)}", flush=True)
        start = time.perf_counter()
        measured = run_experiment(measure, settings)
        seconds = time.perf_counter() - start
        print(f"experiment {key}: {seconds:.0f} s\n", flush=True)
        results[key] = {"measured": measured, "seconds": round(seconds, 1)}
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
