"""Every benchmark script runs, and its `--json` output is one JSON object with the keys its docstring lists.

This checks the scripts' contract, not their figures: speed is never asserted in a test. Each runs
with `--smoke`: its smallest shapes, one timed repeat, every code path and every key. All but
bench_parallel.py run in one process (tests/benchmark_smoke.py), which starts JAX and torch once;
`bench_torch.py` only where torch, from the parity extra, is installed.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import once_per_run

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# Every script, run with `--smoke --json` (--smoke picks the smallest size itself). All but one run
# in one process, tests/benchmark_smoke.py; bench_parallel.py starts JAX with 8 simulated CPU
# devices, which is fixed when JAX starts, so it runs in a process of its own.
SCRIPTS = (
    "bench_train.py",
    "bench_moe.py",
    "bench_mla.py",
    "bench_model.py",
    "bench_grpo.py",
    "bench_fp8.py",
    "bench_torch.py",  # needs torch, from the parity extra
    "bench_matmul.py",
    "bench_dsa.py",
    "bench_mtp.py",
    "bench_parallel.py",
)
OWN_PROCESS = {"bench_parallel.py"}
RUNNER = Path(__file__).with_name("benchmark_smoke.py")
HAS_TORCH = importlib.util.find_spec("torch") is not None
PLACEHOLDERS = {"name", "context", "model", "granularity"}  # stand for the keys of per-item objects


def documented_keys(script: Path) -> set[str]:
    """The key names in the first column of the docstring's "JSON keys" section."""
    doc = ast.get_docstring(ast.parse(script.read_text()))
    assert doc and "JSON keys (`--json`):" in doc, (
        f"{script.name}: no JSON keys section in its docstring"
    )
    keys = set()
    for line in doc.split("JSON keys (`--json`):", 1)[1].splitlines()[1:]:
        if line and not line.startswith(" "):
            break  # the section ends at the next unindented paragraph
        if len(line) - len(line.lstrip()) > 24:
            continue  # a description's second line, aligned under the description column
        column = re.split(r"\s{2,}", line.strip())[0]  # the key column, before the description
        keys |= set(re.findall(r"\b[a-z_][a-z0-9_]*\b", column))
    return keys - PLACEHOLDERS


def all_keys_and_numbers(obj, keys: set[str], numbers: list[float]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            keys.add(key)
            all_keys_and_numbers(value, keys, numbers)
    elif isinstance(obj, list):
        for value in obj:
            all_keys_and_numbers(value, keys, numbers)
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        numbers.append(float(obj))


def test_every_benchmark_script_is_tested():
    scripts = {path.name for path in BENCHMARKS.glob("bench_*.py")}
    assert scripts == set(SCRIPTS), (
        f"add to SCRIPTS: {sorted(scripts - set(SCRIPTS))}; gone: {sorted(set(SCRIPTS) - scripts)}"
    )


def test_documented_keys_parse_the_docstrings():
    keys = documented_keys(BENCHMARKS / "bench_mla.py")
    assert {"contexts", "mla_absorbed", "naive_over_absorbed", "cache_bytes_per_token"} <= keys
    assert not keys & {"ms", "where", "ran"}, "description words must not be read as keys"
    train = documented_keys(
        BENCHMARKS / "bench_train.py"
    )  # a description that runs onto a second line
    assert "matmul_fraction_paired" in train and not train & {"before", "median", "busy"}


def run_in_one_process(folder: Path) -> dict[str, dict]:
    scripts = [s for s in SCRIPTS if s not in OWN_PROCESS and (HAS_TORCH or s != "bench_torch.py")]
    out = folder / "smoke.json"
    run = subprocess.run(
        [sys.executable, str(RUNNER), str(out), *scripts],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=BENCHMARKS.parent,
    )
    assert run.returncode == 0 and out.exists(), f"{RUNNER.name} failed:\n{run.stderr[-3000:]}"
    return json.loads(out.read_text())


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> dict[str, dict]:
    return once_per_run(tmp_path_factory, "benchmark-smoke", run_in_one_process)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_json_has_the_documented_keys(script, request):
    if script == "bench_torch.py" and not HAS_TORCH:
        pytest.skip("bench_torch.py needs torch: install the parity extra")
    path = BENCHMARKS / script
    if script in OWN_PROCESS:
        run = subprocess.run(
            [sys.executable, str(path), "--smoke", "--json"],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=BENCHMARKS.parent,
        )
        assert run.returncode == 0, f"{script} failed:\n{run.stderr[-3000:]}"
        stdout = run.stdout
    else:
        # Asked for here, not as an argument: bench_parallel.py alone needs none of the others.
        smoke = request.getfixturevalue("smoke_runs")[script]
        assert smoke["ok"], f"{script} failed:\n{smoke['error']}"
        stdout = smoke["stdout"]
    report = json.loads(stdout)  # the whole of stdout must be the one object
    assert isinstance(report, dict)
    documented = documented_keys(path)
    keys, numbers = set(), []
    all_keys_and_numbers(report, keys, numbers)
    assert documented <= keys, (
        f"{script}: documented but missing from --json: {sorted(documented - keys)}"
    )
    assert set(report) <= documented, (
        f"{script}: top-level keys not documented: {sorted(set(report) - documented)}"
    )
    assert numbers and all(math.isfinite(x) for x in numbers), f"{script}: a figure is not finite"
