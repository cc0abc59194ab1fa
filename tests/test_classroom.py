"""Grading a class and the Gradescope package (minids.classroom), and notebook checks (grading.check).

A toy exercise keeps these fast: `double(x)` with two checks, graded for a small fake class (a
good answer, the untouched stub, a file that does not import, and a loop that never ends). The
real graders' points are covered in tests/test_exercises.py, which runs them once per side.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from minids import grading
from minids.classroom import build_gradescope, grade_class

ROOT = Path(__file__).resolve().parents[1]

TOY_GRADER = """
from pathlib import Path

import pytest

from minids.grading import check_close, load_exercise

exercise = load_exercise(Path(__file__).with_name("99_toy.py"), solutions={"double": "minids.toy"})


@pytest.mark.points(2)
def test_double_of_a_number():
    check_close("double", exercise.double(__import__("numpy").asarray(2.0)), 4.0)


def test_double_of_an_array():
    check_close("double", exercise.double(__import__("numpy").arange(3.0)), [0.0, 2.0, 4.0])
"""

STUDENTS = {
    "ada": "def double(x):\n    return 2 * x\n",
    "bob": "def double(x):\n    raise NotImplementedError\n",
    "cy": "import a_package_nobody_has\n\ndef double(x):\n    return 2 * x\n",
    "dee": "def double(x):\n    while True:\n        pass\n",
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("classroom")
    graders = root / "graders"
    graders.mkdir()
    (graders / "test_99_toy.py").write_text(TOY_GRADER)
    shutil.copy2(ROOT / "exercises" / "conftest.py", graders)
    for name, code in STUDENTS.items():
        (root / "submissions" / name).mkdir(parents=True)
        (root / "submissions" / name / "99_toy.py").write_text(code)
    return root, graders


def test_a_class_report_grades_every_student_whatever_their_code_does(toy):
    root, graders = toy
    graded = grade_class(root / "submissions", root / "report", graders=graders, time_limit=1.0)
    earned = {s: sum(r.points for r in rs) for s, rs in graded.items()}
    assert earned == {"ada": 3, "bob": 0, "cy": 0, "dee": 0}
    assert all(
        r.max_points == (2 if "number" in r.check else 1) for rs in graded.values() for r in rs
    )
    messages = {s: rs[0].message for s, rs in graded.items()}
    assert "not implemented yet" in messages["bob"]
    assert "could not import 99_toy.py: ModuleNotFoundError" in messages["cy"]
    assert "took longer than 1 s" in messages["dee"]
    with (root / "report" / "grades.csv").open() as f:
        rows = {row["student"]: row for row in csv.DictReader(f)}
    assert rows["ada"]["points"] == "3" and rows["ada"]["max_points"] == "3"
    assert rows["bob"]["first_failure"].startswith("test_double_of_a_number: double is not impl")
    summary = (root / "report" / "summary.md").read_text()
    assert "| ada | 3 / 3 | 3 / 3 |" in summary and "### dee: 2 failing" in summary
    assert len((root / "report" / "checks.csv").read_text().strip().splitlines()) == 1 + 4 * 2


def test_bad_class_arguments_raise_value_errors(toy, tmp_path):
    root, graders = toy
    with pytest.raises(ValueError, match="exercises"):
        grade_class(root / "submissions", tmp_path, graders=graders, exercises=["42_nothing"])
    with pytest.raises(ValueError, match="time_limit"):
        grade_class(root / "submissions", tmp_path, graders=graders, time_limit=0)
    with pytest.raises(ValueError, match="submissions"):
        grade_class(tmp_path / "missing", tmp_path, graders=graders)


def test_gradescope_autograder_scores_a_stub_and_an_answer(toy, tmp_path):
    root, graders = toy
    bundle = build_gradescope(tmp_path / "autograder.zip", graders=graders, time_limit=5)
    with zipfile.ZipFile(bundle) as z:
        names = set(z.namelist())
        assert {"setup.sh", "run_autograder", "graders/test_99_toy.py"} <= names
        assert "minids-package/minids/classroom.py" in names
        assert z.getinfo("run_autograder").external_attr >> 16 & 0o111  # executable
        z.extractall(tmp_path / "autograder" / "source")
    run_autograder = tmp_path / "autograder" / "source" / "run_autograder"
    run_autograder.chmod(0o755)
    scores = {}
    for student in ("ada", "bob"):
        autograder = tmp_path / "autograder"
        shutil.rmtree(autograder / "submission", ignore_errors=True)
        shutil.copytree(root / "submissions" / student, autograder / "submission")
        env = {**os.environ, "MINIDS_AUTOGRADER_ROOT": str(autograder)}
        env["MINIDS_AUTOGRADER_PYTHON"] = sys.executable
        subprocess.run([str(run_autograder)], env=env, check=True, timeout=300)
        results = json.loads((autograder / "results" / "results.json").read_text())
        scores[student] = results["score"], [(t["score"], t["max_score"]) for t in results["tests"]]
        assert all(t["status"] in ("passed", "failed") and "name" in t for t in results["tests"])
    assert scores["ada"] == (3, [(2, 2), (1, 1)])
    assert scores["bob"] == (0, [(0, 2), (0, 1)])


def test_check_grades_a_notebooks_function_on_the_checks_that_call_it(capsys):
    from minids.distill import distillation_objective

    results = grading.check("05", distillation_objective=distillation_objective)
    assert len(results) == 7 and all(earned == points for earned, points, _ in results.values())
    assert "7 of 7 checks passed, 9 / 9 points" in capsys.readouterr().out

    def wrong(student, teacher, targets, mask, alpha, temperature=1.0):
        return distillation_objective(student, teacher, targets, mask, 1.0, temperature)

    results = grading.check("05_distillation", distillation_objective=wrong)
    failed = [name for name, (_, _, message) in results.items() if message]
    assert "test_objective_alpha_zero_is_cross_entropy" in failed
    assert "FAIL" in capsys.readouterr().out
    with pytest.raises(ValueError, match="exercise"):
        grading.check("42", f=np.sum)
