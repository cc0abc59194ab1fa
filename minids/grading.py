"""Checks for the classroom exercises: failures that say what was expected, what came back, and where.

A grader in `exercises/test_NN_topic.py` loads the student's functions with `load_exercise` and tests
them with the `check_*` helpers below. A failed check stops the test with a message meant for a
student, for example

    apply_rope: expected shape (B, T, N, H) = (2, 5, 4, 8), got (2, 5, 8)
    causal_self_attention: the output at position 0 should equal v[:, 0]:
        max |got - want| = 0.73 at index (1, 0, 2) (got 0.12, want 0.85), allowed 1e-05.
        Hint: position 0 sees only itself, ...

and never with a bare `assert` or a page of traceback. Under pytest the message is all that is
printed (`pytest.fail(..., pytrace=False)`); elsewhere (a notebook, a script) it is raised as an
`AssertionError`. pytest is only looked up when a check fails, never imported here.

`load_exercise` also turns the other ways a first attempt goes wrong into such messages: a stub still
raising `NotImplementedError`, a syntax error, a missing `return`, and (with `explain_tracer_errors`)
code that breaks under `jax.jit` or `jax.grad`. Setting `MINIDS_EXERCISES=solutions` makes it return
minids' own implementations instead, which is how the project's tests prove each grader passes on a
correct answer.

`check("00", apply_rope=my_rope)` runs a grader's checks on functions written in a notebook cell and
prints what passed, with the points and the first line of each failure.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import sys
import traceback
import types
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

SOLUTIONS_ENV = "MINIDS_EXERCISES"
EXERCISES_DIR = Path(__file__).resolve().parents[1] / "exercises"
# Functions `check` hands to a grader in place of the student's file: {name: function}.
_OVERRIDES: dict[str, Callable] = {}


def fail(message: str) -> NoReturn:
    """Stop the current check with `message`: a clean pytest failure under pytest, else AssertionError."""
    __tracebackhide__ = True
    pytest = sys.modules.get("pytest")
    failure = pytest.fail.Exception(message, pytrace=False) if pytest else AssertionError(message)
    # `from None`: the message says it all, without "during handling of the above exception" and
    # the traceback of whatever was caught on the way.
    raise failure from None


def grading_solutions() -> bool:
    """True when `MINIDS_EXERCISES=solutions`: graders then test minids' own implementations."""
    return os.environ.get(SOLUTIONS_ENV, "").strip().lower() == "solutions"


def load_exercise(exercise_file: str | Path, solutions: Mapping[str, str]) -> types.SimpleNamespace:
    """The functions a grader tests, by name: the student's, or minids' with MINIDS_EXERCISES=solutions.

    `solutions` maps each function name to the minids module that holds its reference implementation,
    e.g. `{"apply_rope": "minids.layers"}`. The student's file is imported lazily, on the first call,
    so that a syntax error or a missing function fails each test with a message instead of stopping
    pytest before it collects anything; a `NotImplementedError` becomes "... is not implemented yet".
    """
    if _OVERRIDES:  # `check` from a notebook: the cell's functions, minids' for the others
        return types.SimpleNamespace(
            **{
                name: _OVERRIDES.get(name) or getattr(importlib.import_module(module), name)
                for name, module in solutions.items()
            }
        )
    if grading_solutions():
        return types.SimpleNamespace(
            **{
                name: getattr(importlib.import_module(module), name)
                for name, module in solutions.items()
            }
        )
    exercise_file = Path(exercise_file)
    return types.SimpleNamespace(
        **{name: _student_function(exercise_file, name) for name in solutions}
    )


@functools.cache
def _import_file(path: Path) -> types.ModuleType:
    # The file name starts with a digit ("00_attention.py"), so `import` cannot name it.
    spec = importlib.util.spec_from_file_location(f"exercise_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _student_function(path: Path, name: str) -> Callable:
    def call(*args, **kwargs):
        __tracebackhide__ = True
        try:
            module = _import_file(path)
        except Exception as error:  # a student's file can fail to import in any way
            fail(f"could not import {path.name}: {type(error).__name__}: {error}")
        function = getattr(module, name, None)
        if not callable(function):
            fail(
                f"{path.name} has no function named `{name}`: keep the name and signature of the stub."
            )
        try:
            result = function(*args, **kwargs)
        except NotImplementedError:
            fail(
                f"{name} is not implemented yet: replace the `raise NotImplementedError` in "
                f"{path.name} with your code, then run the grader again."
            )
        if result is None:
            fail(f"{name} returned None: did you forget the `return`?")
        return result

    call.__name__ = call.__qualname__ = name
    return call


@contextlib.contextmanager
def explain_tracer_errors(name: str, transform: str) -> Iterator[None]:
    """Turn JAX's "you used a traced value as a Python number" errors into one line and a hint.

    Under `jax.jit` or `jax.grad` a function receives tracers, placeholders without values, so
    `np.asarray(x)`, `int(x)` or `if x > 0:` on an input fails. The message names the line.
    """
    __tracebackhide__ = True
    import jax  # here, so that importing the checks (a class run's every grader) stays light

    try:
        yield
    except jax.errors.JAXTypeError as error:
        fail(
            f"{name} does not work under {transform}: {type(error).__name__}: "
            f"{str(error).strip().splitlines()[0]}{_where(error)}\n"
            f"Hint: under {transform} the inputs are tracers, not numbers: use jnp rather than np "
            "on them, and do not turn them into Python values (int(), float(), `if`)."
        )


def _where(error: BaseException) -> str:
    """The last line of the traceback outside JAX itself: usually the student's line."""
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if "/jax/" not in frame.filename and "/jaxlib/" not in frame.filename
    ]
    if not frames:
        return ""
    return f"\n  at {Path(frames[-1].filename).name}:{frames[-1].lineno}: {frames[-1].line}"


def _array(name: str, got, what: str = "output") -> np.ndarray:
    __tracebackhide__ = True
    if got is None:
        fail(f"{name} returned None: did you forget the `return`?")
    if isinstance(got, tuple | list):
        fail(
            f"{name} returned a {type(got).__name__} of {len(got)} items; expected one array as {what}."
        )
    if not hasattr(got, "shape") or not hasattr(got, "dtype"):
        fail(f"{name} returned a {type(got).__name__}; expected an array as {what}.")
    values = np.asarray(got)
    if values.dtype.kind == "f" or values.dtype.name == "bfloat16":
        values = values.astype(np.float64)  # compare in float64, whatever the student's precision
    return values


def check_shape(
    name: str, got, expected_shape: tuple[int, ...], letters: str | None = None
) -> None:
    """Fail unless `got.shape == expected_shape`; `letters` ("B T N H") names the axes in the message."""
    __tracebackhide__ = True
    _array(name, got)
    expected_shape = tuple(expected_shape)
    if tuple(got.shape) == expected_shape:
        return
    named = f"({', '.join(letters.split())}) = " if letters else ""
    fail(f"{name}: expected shape {named}{expected_shape}, got {tuple(got.shape)}")


def check_dtype(name: str, got, expected_dtype, hint: str = "") -> None:
    """Fail unless `got` has `expected_dtype` (e.g. the dtype of the input)."""
    __tracebackhide__ = True
    _array(name, got)
    expected = np.dtype(expected_dtype)
    if got.dtype == expected:
        return
    fail(
        f"{name}: expected dtype {expected.name}, got {got.dtype.name}."
        + (f" {hint}" if hint else "")
    )


def check_finite(name: str, got, what: str = "output", hint: str = "") -> None:
    """Fail if `got` holds a NaN or an infinity; report how many and the first index."""
    __tracebackhide__ = True
    values = _array(name, got, what)
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    fail(
        f"{name}: {what} has {int(bad.sum())} non-finite values (NaN or inf) out of {bad.size}; "
        f"the first is {values[first]} at index {first}." + (f"\nHint: {hint}" if hint else "")
    )


def check_close(
    name: str, got, want, *, atol: float = 1e-5, rtol: float = 0.0, what: str = "", hint: str = ""
) -> None:
    """Fail unless |got - want| <= atol + rtol * |want| everywhere; report the worst entry and where."""
    __tracebackhide__ = True
    want = np.asarray(want, dtype=np.float64)
    check_shape(name, got, want.shape)
    check_finite(name, got)
    values = _array(name, got)
    error = np.abs(values - want)
    allowed = atol + rtol * np.abs(want)
    if (error <= allowed).all():
        return
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(error - allowed), error.shape))
    context = f" {what}:" if what else ""
    fail(
        f"{name}:{context} max |got - want| = {error[worst]:.3g} at index {worst} "
        f"(got {values[worst]:.6g}, want {want[worst]:.6g}), allowed {allowed[worst]:.3g}."
        + (f"\nHint: {hint}" if hint else "")
    )


def junit_results(path: str | Path) -> dict[str, tuple[str, str]]:
    """Read a pytest `--junitxml` report: {test name: (outcome, message)}, outcome one of
    "passed", "failed", "error" or "skipped", message the first line of the failure ("" if none)."""
    results = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            found = case.find(tag)
            if found is not None:
                outcome, message = name, (found.get("message") or "").strip().split("\n")[0]
                break
        results[f"{case.get('classname')}::{case.get('name')}"] = (outcome, message)
    return results


def junit_counts(path: str | Path) -> dict[str, int]:
    """How many tests in a `--junitxml` report passed, failed, errored and were skipped, and in all."""
    outcomes = [outcome for outcome, _ in junit_results(path).values()]
    counts = {key: outcomes.count(key) for key in ("passed", "failed", "error", "skipped")}
    return {"tests": len(outcomes), **counts}


def check(exercise: str, *, graders: str | Path | None = None, **functions: Callable) -> dict:
    """Grade functions written in a notebook: `check("00", apply_rope=my_rope)`.

    Runs every check of `exercises/test_<exercise>_*.py` that calls one of `functions` (the other
    functions of the exercise are minids' own, so that their checks say nothing about yours),
    prints one line per check and a total, and returns {check name: (points earned, points,
    message)}. `exercise` is the number ("00") or the full name ("00_attention").
    """
    folder = Path(graders) if graders is not None else EXERCISES_DIR
    found = sorted(folder.glob(f"test_{exercise}*.py"))
    if len(found) != 1:
        known = sorted(p.stem.removeprefix("test_") for p in folder.glob("test_*.py"))
        raise ValueError(f"exercise must name one of {known}, got {exercise!r}")
    if not functions:
        raise ValueError("functions: pass at least one, e.g. check('00', apply_rope=my_rope)")
    calls = dict.fromkeys(functions, 0)

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return call

    _OVERRIDES.clear()
    _OVERRIDES.update({name: counted(name, f) for name, f in functions.items()})
    try:
        spec = importlib.util.spec_from_file_location(f"check_{found[0].stem}", found[0])
        grader = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(grader)
    finally:
        _OVERRIDES.clear()
    unknown = [name for name in functions if not hasattr(grader, name)]
    if unknown:
        raise ValueError(f"{found[0].name} grades no function named {unknown}")
    results = {}
    for name in dir(grader):
        test = getattr(grader, name)
        if not name.startswith("test_") or not callable(test):
            continue
        marks = [m for m in getattr(test, "pytestmark", []) if m.name == "points"]
        points = float(marks[0].args[0]) if marks else 1.0
        before = sum(calls.values())
        message = ""
        try:
            test()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # pytest.fail's exception is a BaseException
            message = str(error).strip() or type(error).__name__
        if sum(calls.values()) == before:
            continue  # a check of another function of the exercise
        results[name] = (0.0 if message else points, points, message)
    for name, (earned, points, message) in results.items():
        mark = "ok  " if not message else "FAIL"
        print(
            f"{mark} {name} ({earned:g}/{points:g})"
            + (f"\n     {message.splitlines()[0]}" if message else "")
        )
    earned = sum(r[0] for r in results.values())
    total = sum(r[1] for r in results.values())
    passed = sum(not r[2] for r in results.values())
    print(
        f"{', '.join(functions)}: {passed} of {len(results)} checks passed, {earned:g} / {total:g} points"
    )
    return results


# ------------------------------------------------------------------------- experiment exercises


def _unfilled(value) -> bool:
    """None, an empty text, or a dict with such a value: what a stub's answers hold."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    return isinstance(value, dict) and (not value or any(_unfilled(v) for v in value.values()))


def load_answers(experiment_file: str | Path, key: str) -> Callable[[str], object]:
    """The answers of an experiment exercise (`exercises/experiment_NN_*.py`), by name.

    `answers("MEASURED")` is the student's `MEASURED`, or with MINIDS_EXERCISES=solutions the
    reference run's (`minids.experiments.REFERENCE[key]`). The file is imported on the first call;
    a name still holding the stub's None or "" fails with "... is not filled in yet".
    """
    path = Path(experiment_file)

    def answers(name: str):
        __tracebackhide__ = True
        if grading_solutions():
            return importlib.import_module("minids.experiments").REFERENCE[key][name]
        try:
            module = _import_file(path)
        except Exception as error:  # a student's file can fail to import in any way
            fail(f"could not import {path.name}: {type(error).__name__}: {error}")
        value = getattr(module, name, None)
        if _unfilled(value):
            how = {
                "PREDICTION": "write your prediction before you run anything",
                "MEASURED": f"run the file (`python {path.name}`) and paste the MEASURED dict it prints",
                "CONCLUSION": "read it off your measurements",
                "EXPLANATION": "a few sentences, in your own words",
            }.get(name, "see the docstring")
            fail(f"{name} is not filled in yet in {path.name}: {how}.")
        return value

    return answers


def check_measurements(
    name: str, measured, metrics: Mapping[str, Mapping[str, tuple[float, float]]], seeds: int = 3
) -> dict[str, dict[str, np.ndarray]]:
    """Fail unless `measured` = {setting: {metric: [one number per seed]}} covers every setting and
    metric of `metrics` ({setting: {metric: (low, high)}}) with `seeds` finite numbers each; return
    them as arrays."""
    __tracebackhide__ = True
    if not isinstance(measured, Mapping):
        fail(
            f"{name} should be a dict {{setting: {{metric: [values]}}}}, got {type(measured).__name__}"
        )
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for setting, wanted in metrics.items():
        got = measured.get(setting)
        if not isinstance(got, Mapping):
            fail(f"{name} has no results for the setting {setting!r}; it has {sorted(measured)}")
        for metric in wanted:
            try:
                values = np.asarray(got.get(metric), dtype=np.float64)
            except (TypeError, ValueError):
                values = np.asarray([])
            if values.shape != (seeds,) or not np.isfinite(values).all():
                fail(
                    f"{name}[{setting!r}][{metric!r}] should be {seeds} finite numbers, one per "
                    f"seed, got {got.get(metric)!r}"
                )
            arrays.setdefault(setting, {})[metric] = values
    return arrays


def check_measured_ranges(
    name: str,
    measured,
    metrics: Mapping[str, Mapping[str, tuple[float, float]]],
    seeds: int = 3,
    hint: str = "",
) -> None:
    """Fail unless the mean over seeds of every setting's metric lies in its (low, high) range: the
    spread a correct experiment shows, from the reference run (exercises/rubrics/)."""
    __tracebackhide__ = True
    arrays = check_measurements(name, measured, metrics, seeds)
    for setting, wanted in metrics.items():
        for metric, (low, high) in wanted.items():
            mean = float(arrays[setting][metric].mean())
            if not low <= mean <= high:
                fail(
                    f"{name}: the mean {metric} at {setting} is {mean:.4g}, outside the range a "
                    f"correct experiment gives, [{low:.4g}, {high:.4g}]."
                    + (f"\nHint: {hint}" if hint else "")
                )


def two_standard_errors(a, b) -> float:
    """Two standard errors of the difference of two means over seeds: the notebooks' "within noise"."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return 2.0 * float(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)))


def smallest_within_noise(
    measured: Mapping[str, Mapping[str, object]],
    metric: str,
    reference: str,
    candidates: Sequence[str],
) -> str | None:
    """The first of `candidates` whose mean `metric` over seeds is at most the `reference`
    setting's mean plus two standard errors of the difference; None if there is none."""
    want = np.asarray(measured[reference][metric], float)
    for setting in candidates:
        got = np.asarray(measured[setting][metric], float)
        if got.mean() - want.mean() <= two_standard_errors(got, want):
            return setting
    return None


def check_explanation(text: object, name: str = "EXPLANATION", min_words: int = 30) -> None:
    """Fail unless the student's explanation has at least `min_words` words (its content is the
    teacher's to grade, with the rubric)."""
    __tracebackhide__ = True
    words = len(str(text).split())
    if words < min_words:
        fail(f"{name} has {words} words; explain in a few sentences ({min_words} words or more)")
