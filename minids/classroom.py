"""Grading a class: points per check, a time limit per check, a class report and a Gradescope package.

A grader in `exercises/test_NN_topic.py` is a set of pytest checks; each is worth one point unless it
carries `@pytest.mark.points(n)`. This module runs the graders the way a teacher needs them run:

- as a **pytest plugin** (`pytest -p minids.classroom --classroom-results r.json`): it writes each
  check's points, outcome and first line of failure to a JSON file after every check, so that what
  was graded survives a submission that kills the process; with `--classroom-time-limit S` a check
  that runs longer than S seconds fails with "took longer than S s" (a Python loop that never ends is
  interrupted by SIGALRM, so this needs a Unix main thread).
- `grade_submission`: one student's folder, one exercise, in a scratch copy next to fresh graders,
  in a subprocess with a deadline; a file that does not import, raises or never returns becomes
  failed checks with a message, never an exception here.
- `grade_class`: every sub-folder of a submissions folder, into `checks.csv` (one row per check),
  `grades.csv` (one row per student and exercise) and `summary.md`.
- `build_gradescope` and `gradescope_results`: the autograder zip Gradescope runs (`setup.sh`,
  `run_autograder`) and the `results.json` it reads, one entry per check with its score.

The command line is `tools/classroom.py`; exercises/README.md shows it. Submissions are code that runs
on the grading machine: grade in a container or a throwaway account.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXERCISES_DIR = REPO / "exercises"
SOLUTIONS_ENV = "MINIDS_EXERCISES"  # the same switch as minids.grading's, kept import-free here
DEFAULT_TIME_LIMIT = 20.0  # seconds a check may take (the first one also compiles, so be generous)
SUBMITTED_SUFFIXES = (".py", ".json", ".md", ".txt", ".csv")
STARTUP_ALLOWANCE = 120.0  # seconds for Python, JAX and pytest to start, on top of the checks


@dataclass(frozen=True)
class CheckResult:
    """One check of one exercise for one student."""

    exercise: str  # "00_attention"
    check: str  # the test's name, "test_rope_output_shape_and_dtype"
    points: float  # what the student earned: max_points or 0
    max_points: float
    outcome: str  # "passed", "failed", "error" (the grader stopped, or the check could not run)
    message: str  # the first line of the failure ("" when passed)


# ---------------------------------------------------------------------------------- the plugin


class CheckTimeout(Exception):
    """Raised inside a check that ran past `--classroom-time-limit`."""


def pytest_addoption(parser) -> None:
    group = parser.getgroup("minids classroom")
    group.addoption("--classroom-results", default=None, help="write each check's result here")
    group.addoption(
        "--classroom-time-limit", type=float, default=0.0, help="seconds a check may run (0: none)"
    )


_RECORDER: list[_Recorder] = []  # the one pytest run this process is; reports do not carry config


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "points(n): what a check is worth (1 when not marked)")
    _RECORDER[:] = [_Recorder(config.getoption("classroom_results"))]


def points_of(item) -> float:
    """The points a collected check is worth: its `points` marker, else 1."""
    marker = item.get_closest_marker("points")
    return float(marker.args[0]) if marker else 1.0


def exercise_of(path: str | Path) -> str:
    """'00_attention' for exercises/test_00_attention.py."""
    return Path(path).stem.removeprefix("test_")


class _Recorder:
    """Keeps every collected check and writes them all to JSON after each one is graded."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.checks: dict[str, dict] = {}

    def collected(self, items) -> None:
        for item in items:
            self.checks[item.nodeid] = {
                "exercise": exercise_of(item.path),
                "check": item.name,
                "max_points": points_of(item),
                "outcome": "error",
                "message": "not graded: the grader stopped before this check ran",
            }
        self.write()

    def graded(self, nodeid: str, outcome: str, message: str) -> None:
        if nodeid in self.checks and self.checks[nodeid]["outcome"] != "failed":
            self.checks[nodeid].update(outcome=outcome, message=message)
            self.write()

    def write(self) -> None:
        if self.path is None:
            return
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(json.dumps(list(self.checks.values()), indent=1))
        os.replace(scratch, self.path)  # whole or not at all, even if the process dies now


def pytest_collection_modifyitems(session, config, items) -> None:
    _RECORDER[0].collected(items)


def pytest_runtest_call(item) -> None:
    """Arm the alarm just before the check's own code runs (fixtures and setup are not timed)."""
    limit = item.config.getoption("classroom_time_limit")
    if not limit or not hasattr(signal, "setitimer"):
        return

    def too_long(signum, frame):
        raise CheckTimeout(
            f"this check took longer than {limit:g} s and was stopped: a loop that never ends, "
            "or work far larger than the exercise needs?"
        )

    item._classroom_alarm = signal.signal(signal.SIGALRM, too_long)
    signal.setitimer(signal.ITIMER_REAL, limit)


def pytest_runtest_teardown(item) -> None:
    if hasattr(item, "_classroom_alarm"):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, item._classroom_alarm)
        del item._classroom_alarm


def pytest_runtest_logreport(report) -> None:
    if report.when == "call" and report.passed:
        _RECORDER[0].graded(report.nodeid, "passed", "")
    elif report.failed:
        outcome = "failed" if report.when == "call" else "error"
        _RECORDER[0].graded(report.nodeid, outcome, _first_line(report))


def _first_line(report) -> str:
    """The first line of what the student would read: our check's message, or the exception."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    for prefix in ("Failed: ", "AssertionError: "):
        text = text.removeprefix(prefix)
    return text.strip().split("\n")[0][:500]


# ------------------------------------------------------------------------ grading submissions


def exercises_in(graders: Path = EXERCISES_DIR) -> list[str]:
    """The exercises a graders folder holds, in order: ['00_attention', '01_moe_router', ...]."""
    return sorted(exercise_of(p) for p in Path(graders).glob("test_*.py"))


def _check_exercises(exercises: Sequence[str] | None, graders: Path) -> list[str]:
    known = exercises_in(graders)
    if exercises is None:
        return known
    unknown = [e for e in exercises if e not in known]
    if unknown:
        raise ValueError(f"exercises: no grader for {unknown} in {graders}; known: {known}")
    return list(exercises)


def _check_time_limit(time_limit: float) -> float:
    if not isinstance(time_limit, int | float) or not time_limit > 0:
        raise ValueError(f"time_limit must be a number of seconds > 0, got {time_limit!r}")
    return float(time_limit)


def _prepare(submission: Path, exercise: str, graders: Path, workdir: Path) -> None:
    """The student's files with the official grader and conftest laid over them (never theirs)."""
    for path in submission.iterdir():
        # Python files and results only: no conftest, pytest.ini or pyproject.toml of theirs.
        if (
            path.is_file()
            and path.suffix in SUBMITTED_SUFFIXES
            and not path.name.startswith("test_")
            and path.name != "conftest.py"
        ):
            shutil.copy2(path, workdir / path.name)
    shutil.copy2(graders / f"test_{exercise}.py", workdir)
    if (graders / "conftest.py").exists():
        shutil.copy2(graders / "conftest.py", workdir)


def _grader_env(answer_key: bool) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != SOLUTIONS_ENV}
    if answer_key:  # only the project's own tests grade the answer key through here
        env[SOLUTIONS_ENV] = "solutions"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run_grader(
    workdir: Path, exercise: str, time_limit: float, answer_key: bool, extra: Sequence[str] = ()
) -> tuple[list[dict] | None, str]:
    """pytest on one grader in `workdir`, killed at its deadline; the checks it wrote, and its output."""
    results = workdir / "classroom-results.json"
    # -P: the working folder is not put first on sys.path, so a student's `jax.py` shadows nothing.
    command = [
        sys.executable,
        "-P",
        "-m",
        "pytest",
        f"test_{exercise}.py",
        "-p",
        "minids.classroom",
    ]
    command += ["-p", "no:cacheprovider", "-q", "-o", "addopts=", "--rootdir", str(workdir)]
    command += [f"--classroom-results={results}", f"--classroom-time-limit={time_limit}", *extra]
    with (workdir / "output.txt").open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=_grader_env(answer_key),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so that the whole group can be stopped, and only it
        )
        started, stopped = time.monotonic(), False
        while process.poll() is None:
            checks = _read_results(results)
            deadline = STARTUP_ALLOWANCE + time_limit * (len(checks) if checks else 1)
            if time.monotonic() - started > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                stopped = True
                break
            time.sleep(0.1)
    output = (workdir / "output.txt").read_text(errors="replace")
    if stopped:
        output += f"\n[minids.classroom: stopped after {time.monotonic() - started:.0f} s]"
    return _read_results(results), output


def _read_results(path: Path) -> list[dict] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _catalogue(exercise: str, graders: Path) -> list[dict]:
    """The checks of a grader and their points, without grading anything (pytest --collect-only)."""
    with tempfile.TemporaryDirectory(prefix="minids-catalogue-") as scratch:
        workdir = Path(scratch)
        shutil.copy2(graders / f"test_{exercise}.py", workdir)
        if (graders / "conftest.py").exists():
            shutil.copy2(graders / "conftest.py", workdir)
        checks, output = _run_grader(workdir, exercise, 60.0, False, ["--collect-only"])
    if not checks:
        raise RuntimeError(f"could not list the checks of test_{exercise}.py:\n{output[-3000:]}")
    return checks


def _as_results(checks: Iterable[dict], override: str | None = None) -> list[CheckResult]:
    results = []
    for check in checks:
        outcome, message = check["outcome"], check["message"]
        if override is not None:
            outcome, message = "error", override
        passed = outcome == "passed"
        results.append(
            CheckResult(
                exercise=check["exercise"],
                check=check["check"],
                points=check["max_points"] if passed else 0.0,
                max_points=check["max_points"],
                outcome=outcome,
                message=message,
            )
        )
    return results


def grade_submission(
    submission: str | Path,
    exercise: str,
    *,
    graders: str | Path = EXERCISES_DIR,
    time_limit: float = DEFAULT_TIME_LIMIT,
    answer_key: bool = False,
    catalogue: dict[str, list[dict]] | None = None,
) -> list[CheckResult]:
    """Grade one exercise of one student's folder; every check comes back, passed or not.

    `answer_key=True` grades minids' own solutions instead (MINIDS_EXERCISES=solutions): the
    project's tests use it; a teacher never needs it. `catalogue` caches the checks of each grader.
    """
    submission, graders = Path(submission), Path(graders)
    if not submission.is_dir():
        raise ValueError(f"submission must be a folder, got {str(submission)!r}")
    (exercise,) = _check_exercises([exercise], graders)
    time_limit = _check_time_limit(time_limit)
    catalogue = {} if catalogue is None else catalogue

    def all_checks() -> list[dict]:
        if exercise not in catalogue:
            catalogue[exercise] = _catalogue(exercise, graders)
        return catalogue[exercise]

    if not answer_key and not (submission / f"{exercise}.py").exists():
        return _as_results(all_checks(), f"not submitted: no {exercise}.py in the folder")
    with tempfile.TemporaryDirectory(prefix="minids-grade-") as scratch:
        workdir = Path(scratch)
        _prepare(submission, exercise, graders, workdir)
        checks, output = _run_grader(workdir, exercise, time_limit, answer_key)
    if not checks:  # pytest never got as far as listing the checks
        last = output.strip().splitlines()[-1:] or ["(no output)"]
        return _as_results(all_checks(), f"the grader could not run: {last[0][:300]}")
    if "[minids.classroom: stopped" in output:
        for check in checks:
            if check["message"].startswith("not graded"):
                check["message"] = (
                    "not graded: the submission ran past the grading deadline and was stopped"
                )
    return _as_results(checks)


def grade_class(
    submissions: str | Path,
    out: str | Path,
    *,
    exercises: Sequence[str] | None = None,
    graders: str | Path = EXERCISES_DIR,
    time_limit: float = DEFAULT_TIME_LIMIT,
    progress: bool = False,
) -> dict[str, list[CheckResult]]:
    """Grade every student folder under `submissions`; write checks.csv, grades.csv and summary.md
    into `out`. Returns {student: their checks}."""
    submissions, graders, out = Path(submissions), Path(graders), Path(out)
    if not submissions.is_dir():
        raise ValueError(
            f"submissions must be a folder of student folders, got {str(submissions)!r}"
        )
    exercises = _check_exercises(exercises, graders)
    time_limit = _check_time_limit(time_limit)
    students = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not students:
        raise ValueError(f"submissions: {submissions} holds no student folders")
    catalogue: dict[str, list[dict]] = {}
    graded = {}
    for student in students:
        graded[student.name] = []
        for exercise in exercises:
            if progress:
                print(f"grading {student.name} / {exercise} ...", flush=True)
            graded[student.name] += grade_submission(
                student, exercise, graders=graders, time_limit=time_limit, catalogue=catalogue
            )
    write_report(graded, out)
    return graded


def totals(results: Sequence[CheckResult]) -> dict[str, tuple[float, float, int, int]]:
    """{exercise: (points, max points, checks passed, checks)}."""
    by_exercise: dict[str, list[CheckResult]] = {}
    for r in results:
        by_exercise.setdefault(r.exercise, []).append(r)
    return {
        exercise: (
            sum(r.points for r in rs),
            sum(r.max_points for r in rs),
            sum(r.outcome == "passed" for r in rs),
            len(rs),
        )
        for exercise, rs in by_exercise.items()
    }


def write_report(graded: dict[str, list[CheckResult]], out: Path) -> None:
    """checks.csv, grades.csv and summary.md in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "checks.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", *CheckResult.__dataclass_fields__])
        for student, results in graded.items():
            for r in results:
                writer.writerow([student, *asdict(r).values()])
    rows = []
    for student, results in graded.items():
        for exercise, (points, most, passed, n) in totals(results).items():
            first = next(
                (r for r in results if r.exercise == exercise and r.points < r.max_points), None
            )
            failure = f"{first.check}: {first.message}" if first else ""
            rows.append([student, exercise, _num(points), _num(most), passed, n, failure])
    with (out / "grades.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["student", "exercise", "points", "max_points", "passed", "checks", "first_failure"]
        )
        writer.writerows(rows)
    (out / "summary.md").write_text(_summary(graded))


def _num(x: float) -> str:
    return f"{x:g}"


def _summary(graded: dict[str, list[CheckResult]]) -> str:
    exercises = sorted({r.exercise for results in graded.values() for r in results})
    lines = ["# Class report", "", "| student | " + " | ".join(exercises) + " | total |"]
    lines.append("|---" * (len(exercises) + 2) + "|")
    for student, results in graded.items():
        t = totals(results)
        cells = [f"{_num(t[e][0])} / {_num(t[e][1])}" if e in t else "-" for e in exercises]
        total = sum(v[0] for v in t.values()), sum(v[1] for v in t.values())
        lines.append(
            f"| {student} | " + " | ".join(cells) + f" | {_num(total[0])} / {_num(total[1])} |"
        )
    lines += ["", "## Failing checks", ""]
    for student, results in graded.items():
        failing = [r for r in results if r.points < r.max_points]
        lines.append(
            f"### {student}: {len(failing)} failing" if failing else f"### {student}: all passed"
        )
        lines += [
            f"- `{r.exercise}` {r.check} ({_num(r.max_points)} pt): {r.message}" for r in failing
        ]
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- Gradescope

# Gradescope's layout (its "autograder specifications"): the zip is unpacked into /autograder/source,
# setup.sh runs there once when the image is built, and each submission then runs
# /autograder/run_autograder with the student's files in /autograder/submission; it must write
# /autograder/results/results.json: {"tests": [{"name", "score", "max_score", "status", "output"}]}.

SETUP_SH = """#!/usr/bin/env bash
# Runs once, when Gradescope builds the autograder image: Python and minids (with pytest).
set -euo pipefail
apt-get update && apt-get install -y python3 python3-pip python3-venv
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install --upgrade pip
/autograder/venv/bin/pip install /autograder/source/minids-package pytest
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Runs for every submission: grade the files in /autograder/submission into results/results.json.
set -uo pipefail
PYTHON="${MINIDS_AUTOGRADER_PYTHON:-/autograder/venv/bin/python}"
cd "$(dirname "$0")"
SOURCE="${MINIDS_AUTOGRADER_ROOT:-/autograder}/source"
[ -d "$SOURCE" ] || SOURCE="$(pwd)"
exec "$PYTHON" "$SOURCE/autograder.py"
"""

AUTOGRADER_PY = '''"""Gradescope entry: grade /autograder/submission with the graders in ./graders (see run_autograder).

MINIDS_AUTOGRADER_ROOT replaces /autograder, so the same file can be tried on any machine.
"""

import json
import os
from pathlib import Path

from minids.classroom import gradescope_results

root = Path(os.environ.get("MINIDS_AUTOGRADER_ROOT", "/autograder"))
here = Path(__file__).resolve().parent
settings = json.loads((here / "settings.json").read_text())
results = gradescope_results(root / "submission", here / "graders", **settings)
(root / "results").mkdir(parents=True, exist_ok=True)
(root / "results" / "results.json").write_text(json.dumps(results, indent=1))
'''


def gradescope_results(
    submission: str | Path,
    graders: str | Path,
    *,
    exercises: Sequence[str] | None = None,
    time_limit: float = DEFAULT_TIME_LIMIT,
    answer_key: bool = False,
) -> dict:
    """Gradescope's results.json for one submission: one test per check, scored in points."""
    submission, graders = Path(submission), Path(graders)
    results: list[CheckResult] = []
    for exercise in _check_exercises(exercises, graders):
        results += grade_submission(
            submission, exercise, graders=graders, time_limit=time_limit, answer_key=answer_key
        )
    tests = [
        {
            "name": f"{r.exercise}: {r.check}",
            "score": r.points,
            "max_score": r.max_points,
            "status": "passed" if r.outcome == "passed" else "failed",
            "output": r.message,
        }
        for r in results
    ]
    summary = "\n".join(
        f"{exercise}: {_num(p)} / {_num(m)} points, {passed} of {n} checks passed"
        for exercise, (p, m, passed, n) in totals(results).items()
    )
    return {
        "score": sum(r.points for r in results),
        "output": summary,
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
    }


def build_gradescope(
    out: str | Path,
    *,
    exercises: Sequence[str] | None = None,
    graders: str | Path = EXERCISES_DIR,
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> Path:
    """Write the autograder zip for `exercises` (all by default) to `out`; return its path.

    It holds setup.sh, run_autograder, autograder.py and settings.json, the graders and their
    conftest (not the stubs: students upload those), and minids' source, which setup.sh installs.
    """
    graders = Path(graders)
    exercises = _check_exercises(exercises, graders)
    settings = {"exercises": exercises, "time_limit": _check_time_limit(time_limit)}
    out = Path(out)
    if out.suffix != ".zip":
        raise ValueError(f"out must name a .zip file, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in (
            ("setup.sh", SETUP_SH),
            ("run_autograder", RUN_AUTOGRADER),
            ("autograder.py", AUTOGRADER_PY),
            ("settings.json", json.dumps(settings, indent=1)),
        ):
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if not name.endswith((".py", ".json")) else 0o644) << 16
            z.writestr(info, text)
        for exercise in exercises:
            z.write(graders / f"test_{exercise}.py", f"graders/test_{exercise}.py")
        if (graders / "conftest.py").exists():
            z.write(graders / "conftest.py", "graders/conftest.py")
        for path in [
            REPO / "pyproject.toml",
            REPO / "README.md",
            *sorted((REPO / "minids").rglob("*")),
        ]:
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                z.write(path, f"minids-package/{path.relative_to(REPO)}")
    return out
