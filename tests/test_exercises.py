"""The exercise graders bite: each passes on minids' own solutions and fails, check by check, on its
untouched stub. The graders run in a subprocess, as a student would run them (`pytest exercises/...`),
and their junit reports are read back."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import once_per_run

from minids.grading import SOLUTIONS_ENV, junit_results

ROOT = Path(__file__).resolve().parents[1]

# exercise -> (the functions students write -> the minids module holding the answer, fewest checks)
EXERCISES = {
    "00_attention": (
        {
            "apply_rope": "minids.layers",
            "causal_self_attention": "minids.attention",
            "attention_mask": "minids.attention",
            "dot_product_attention": "minids.attention",
        },
        35,
    ),
    "01_moe_router": (
        {
            "sigmoid_topk_router": "minids.moe",
            "expert_load": "minids.moe",
            "aux_free_bias_update": "minids.moe",
            "select_experts": "minids.moe",
            "sequence_aux_loss": "minids.moe",
        },
        30,
    ),
    "02_mla": (
        {
            "latent_kv": "minids.mla",
            "absorbed_scores": "minids.mla",
            "absorbed_attention": "minids.mla",
        },
        18,
    ),
    "03_fp8": (
        {"quantize": "minids.fp8", "dequantize": "minids.fp8", "quantize_delayed": "minids.fp8"},
        18,
    ),
    "04_grpo": (
        {
            "group_advantages": "minids.grpo",
            "clipped_surrogate": "minids.grpo",
            "k3_kl": "minids.grpo",
            "completion_mask": "minids.grpo_trainer",
            "aggregate": "minids.grpo",
        },
        25,
    ),
    "05_distillation": (
        {"distillation_loss": "minids.distill", "distillation_objective": "minids.distill"},
        15,
    ),
    "06_tiny_deepseek_v3": (
        {
            "attention_params": "minids.config",
            "moe_param_counts": "minids.config",
            "training_flops_per_token": "minids.cost",
        },
        14,
    ),
    "07_mtp": ({"mtp_targets": "minids.mtp", "accept_draft": "minids.generate"}, 15),
    "09_long_context": (
        {"index_scores": "minids.dsa", "select_topk": "minids.dsa", "indexer_kl": "minids.dsa"},
        17,
    ),
    "08_parallel": (
        {
            "devices_reached": "minids.parallel",
            "dispatch_slots": "minids.parallel",
            "order_zb1p": "minids.pipeline",
        },
        15,
    ),
}


# experiment exercises (predict, measure, explain): file -> the fewest checks of its grader
EXPERIMENTS = {
    "experiment_00_width": 5,
    "experiment_01_moe_balance": 5,
    "experiment_02_mla_latent": 5,
    "experiment_03_fp8_tiles": 5,
    "experiment_04_grpo_reward_hacking": 5,
    "experiment_05_distillation_temperature": 5,
    "experiment_06_routed_experts": 5,
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
    return once_per_run(
        tmp_path_factory, "graders-solutions", lambda d: run_graders(d, solutions=True)
    )


@pytest.fixture(scope="session")
def on_stubs(tmp_path_factory):
    return once_per_run(
        tmp_path_factory, "graders-stubs", lambda d: run_graders(d, solutions=False)
    )


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
    known = set(EXERCISES) | set(EXPERIMENTS)
    assert graders == known, f"add to EXERCISES or EXPERIMENTS: {sorted(graders - known)}"


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_grader_passes_on_the_reference_answers(experiment, on_solutions):
    all_results, output = on_solutions
    results = of_exercise(all_results, experiment)
    assert len(results) >= EXPERIMENTS[experiment], output
    not_passed = {test: r for test, r in results.items() if r[0] != "passed"}
    assert not not_passed, f"the reference answers should pass every check: {not_passed}\n{output}"


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_grader_fails_every_check_on_stub(experiment, on_stubs):
    all_results, output = on_stubs
    results = of_exercise(all_results, experiment)
    assert len(results) >= EXPERIMENTS[experiment], output
    not_failed = {test: outcome for test, (outcome, _) in results.items() if outcome != "failed"}
    assert not not_failed, f"on the stub every check should fail, but: {not_failed}\n{output}"
    unclear = {test: msg for test, (_, msg) in results.items() if "not filled in yet" not in msg}
    assert not unclear, f"failures that do not say 'not filled in yet': {unclear}\n{output}"


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


def grader_points(exercise: str) -> float:
    """What a grader's checks are worth: 1 each, or their `points` marker (read without running)."""
    path = ROOT / "exercises" / f"test_{exercise}.py"
    spec = importlib.util.spec_from_file_location(f"points_{exercise}", path)
    grader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grader)  # the student's file is only imported when a check runs
    total = 0.0
    for name, test in vars(grader).items():
        if name.startswith("test_") and callable(test):
            marks = [m for m in getattr(test, "pytestmark", []) if m.name == "points"]
            total += float(marks[0].args[0]) if marks else 1.0
    return total


@pytest.mark.parametrize("exercise", sorted(EXERCISES) + sorted(EXPERIMENTS))
def test_stub_docstring_states_the_graders_points(exercise):
    """The points a student reads in the stub are the points the grader gives."""
    total = grader_points(exercise)
    stated = re.search(r"Points: (\d+) in all \(([^)]*)\)", load_stub(exercise).__doc__)
    assert stated, f"exercises/{exercise}.py: its docstring should say 'Points: N in all (...)'"
    assert int(stated.group(1)) == total, f"the stub says {stated.group(1)} points, grader {total}"
    parts = [int(n) for n in re.findall(r" (\d+)(?:,|$)", stated.group(2).replace("\n", " "))]
    assert sum(parts) == total, f"the per-function points {parts} do not add up to {total}"
