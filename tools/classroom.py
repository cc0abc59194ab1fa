"""Grade a class, or build the Gradescope autograder (see exercises/README.md).

    python tools/classroom.py grade submissions/ --out report/         # every exercise
    python tools/classroom.py grade submissions/ --out report/ --exercises 00_attention 01_moe_router
    python tools/classroom.py gradescope --out autograder.zip --exercises 00_attention

`grade` runs the official graders (exercises/test_*.py) on each sub-folder of submissions/ (one per
student, holding their NN_topic.py files) and writes report/checks.csv, report/grades.csv and
report/summary.md. A check has --time-limit seconds; a file that does not import, raises or never
returns scores 0 on the checks it breaks and the run goes on. `gradescope` writes the zip to upload
as a Gradescope "autograder" (setup.sh, run_autograder, the graders and minids' source).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # run from a checkout, installed or not

from minids.classroom import (  # noqa: E402
    DEFAULT_TIME_LIMIT,
    build_gradescope,
    grade_class,
    totals,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    grade = commands.add_parser("grade", help="grade a folder of student folders")
    grade.add_argument("submissions", type=Path)
    grade.add_argument("--out", type=Path, required=True, help="folder for the CSVs and summary.md")
    grade.add_argument("--exercises", nargs="+", default=None, help="default: every exercise")
    grade.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, help="s per check")
    gradescope = commands.add_parser("gradescope", help="build the Gradescope autograder zip")
    gradescope.add_argument("--out", type=Path, default=Path("autograder.zip"))
    gradescope.add_argument("--exercises", nargs="+", default=None, help="default: every exercise")
    gradescope.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT)
    args = parser.parse_args(argv)
    if args.command == "grade":
        graded = grade_class(
            args.submissions,
            args.out,
            exercises=args.exercises,
            time_limit=args.time_limit,
            progress=True,
        )
        for student, results in graded.items():
            points = sum(t[0] for t in totals(results).values())
            most = sum(t[1] for t in totals(results).values())
            print(f"{student:24s} {points:g} / {most:g}")
        print(
            f"wrote {args.out / 'grades.csv'}, {args.out / 'checks.csv'}, {args.out / 'summary.md'}"
        )
    else:
        path = build_gradescope(args.out, exercises=args.exercises, time_limit=args.time_limit)
        print(f"wrote {path}: upload it as the assignment's autograder (zip file)")


if __name__ == "__main__":
    main()
