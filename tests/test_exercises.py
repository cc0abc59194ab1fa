"""The exercise graders bite: each passes on minids' own solutions and fails, check by check, on its
untouched stub. The graders run in a subprocess, as a student would run them (`pytest exercises/...`),
and their junit reports are read back."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minids.grading import SOLUTIONS_ENV, junit_results

ROOT = Path(__file__).resolve().parents[1]

# exercise -> (the functions students write -> the minids module holding the answer, fewest checks)
EXERCISES = {
    "00_attention": (
        {"apply_rope": "minids.layers", "causal_self_attention": "minids.attention"},
        15,
    ),
    "02_mla": ({"latent_kv": "minids.mla", "absorbed_scores": "minids.mla"}, 12),
    "05_distillation": ({"distillation_loss": "minids.distill"}, 10),
    "04_grpo": (
        {
            "group_advantages": "minids.grpo",
            "clipped_surrogate": "minids.grpo",
            "k3_kl": "minids.grpo",
        },
        14,
    ),
    "01_moe_router": (
        {
            "sigmoid_topk_router": "minids.moe",
            "expert_load": "minids.moe",
            "aux_free_bias_update": "minids.moe",
        },
        12,
    ),
    "03_fp8": ({"quantize": "minids.fp8", "dequantize": "minids.fp8"}, 15),
}


def run_graders(folder: Path, *, solutions: bool) -> tuple[dict[str, tuple[str, str]], str]:
    """Run `pytest exercises/` from the repository root, as a class would; return its results
    ({test id: (outcome, message)}) and what it printed."""
    env = {key: value for key, value in os.environ.items() if key != SOLUTIONS_ENV}
    if solutions:
        env[SOLUTIONS_ENV] = "solutions"
    report = folder / f"{'solutions' if solutions else 'stubs'}.xml"
    command = [sys.executable, "-m", "pytest", "exercises", "-p", "no:cacheprovider", "-q"]
    command.append(f"--junitxml={report}")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = f"$ {' '.join(command)}\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    assert report.exists(), f"the graders wrote no report:\n{output}"
    return junit_results(report), output


# All the graders run in one process per side (not one per exercise): each process pays for
# starting Python and JAX, and the graders share many compiled programs.
@pytest.fixture(scope="session")
def on_solutions(tmp_path_factory):
    return run_graders(tmp_path_factory.mktemp("graders"), solutions=True)


@pytest.fixture(scope="session")
def on_stubs(tmp_path_factory):
    return run_graders(tmp_path_factory.mktemp("graders"), solutions=False)


def of_exercise(results: dict[str, tuple[str, str]], exercise: str) -> dict[str, tuple[str, str]]:
    return {test: r for test, r in results.items() if f"test_{exercise}" in test.split("::")[0]}


def load_stub(exercise: str):
    path = ROOT / "exercises" / f"{exercise}.py"
    spec = importlib.util.spec_from_file_location(f"stub_{exercise}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("exercise", sorted(EXERCISES))
def test_grader_passes_on_solutions(exercise, on_solutions):
    all_results, output = on_solutions
    results = of_exercise(all_results, exercise)
    fewest = EXERCISES[exercise][1]
    assert len(results) >= fewest, (
        f"expected at least {fewest} checks, found {len(results)}\n{output}"
    )
    not_passed = {test: r for test, r in results.items() if r[0] != "passed"}
    assert not not_passed, f"the solutions should pass every check: {not_passed}\n{output}"


@pytest.mark.parametrize("exercise", sorted(EXERCISES))
def test_grader_fails_every_check_on_stub(exercise, on_stubs):
    all_results, output = on_stubs
    results = of_exercise(all_results, exercise)
    assert len(results) >= EXERCISES[exercise][1], output
    not_failed = {test: outcome for test, (outcome, _) in results.items() if outcome != "failed"}
    assert not not_failed, f"on the stub every check should fail, but: {not_failed}\n{output}"
    # ... and fail cleanly, saying what to do, rather than with a NotImplementedError traceback.
    unclear = {test: msg for test, (_, msg) in results.items() if "not implemented yet" not in msg}
    assert not unclear, f"failures that do not say 'not implemented yet': {unclear}\n{output}"


def test_every_grader_is_covered():
    graders = {p.stem.removeprefix("test_") for p in (ROOT / "exercises").glob("test_*.py")}
    assert graders == set(EXERCISES), f"add to EXERCISES: {sorted(graders - set(EXERCISES))}"


def parameters(function) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("exercise", sorted(EXERCISES))
def test_stub_functions_raise_not_implemented(exercise):
    stub = load_stub(exercise)
    for name, module in EXERCISES[exercise][0].items():
        function = getattr(stub, name)
        solution = getattr(importlib.import_module(module), name)
        assert parameters(function) == parameters(solution), (
            f"{name}: signature differs from minids'"
        )
        required = [p for p, default in parameters(function) if default is inspect.Parameter.empty]
        with pytest.raises(NotImplementedError):
            function(*[None] * len(required))  # an untouched stub raises before reading anything
