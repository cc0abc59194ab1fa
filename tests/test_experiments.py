"""The experiment exercises' code paths run (a few steps each, never the full experiment), their
reference answers agree with the code, and a student file holding those answers passes its grader.

The full experiments take minutes; `python tools/measure_experiments.py` runs them and prints the
numbers kept in `minids.experiments.REFERENCE` and exercises/rubrics/.
"""

from __future__ import annotations

import ast
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minids import experiments
from minids.grading import junit_results, load_answers

ROOT = Path(__file__).resolve().parents[1]
STEMS = {
    "00": "experiment_00_width",
    "01": "experiment_01_moe_balance",
    "02": "experiment_02_mla_latent",
    "03": "experiment_03_fp8_tiles",
    "04": "experiment_04_grpo_reward_hacking",
    "05": "experiment_05_distillation_temperature",
    "06": "experiment_06_routed_experts",
}


def test_every_experiment_has_a_stub_a_grader_a_rubric_and_a_reference():
    assert set(STEMS) == set(experiments.MEASURES) == set(experiments.REFERENCE)
    for key, stem in STEMS.items():
        for path in (f"{stem}.py", f"test_{stem}.py", f"rubrics/{stem}.md"):
            assert (ROOT / "exercises" / path).exists(), path
        reference = experiments.REFERENCE[key]
        assert set(reference) == {"PREDICTION", "MEASURED", "CONCLUSION", "EXPLANATION"}
        assert tuple(reference["MEASURED"]) == experiments.MEASURES[key][1]


@pytest.mark.parametrize(
    "key, setting, kwargs",
    [
        ("01", "0.01", {"steps": 5}),
        ("03", "1x128", {}),
        ("04", "contains", {"steps": 1}),
        ("05", "T=4", {"steps": 1}),
    ],
)
def test_a_short_run_gives_finite_metrics(key, setting, kwargs):
    measure, _ = experiments.MEASURES[key]
    metrics = measure(setting, 0, **kwargs)
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics


def test_the_fp8_experiment_is_the_reference_run():
    """03 has no training: seed 0 gives the reference's numbers to the printed digits."""
    got = experiments.measure_03("1x128", 0)
    want = experiments.REFERENCE["03"]["MEASURED"]["1x128"]
    assert float(f"{got['rel_error']:.4g}") == want["rel_error"][0]


def test_the_reference_parameter_counts_are_the_models():
    """The parameter counts the graders require exactly are those of the configs measure builds."""
    from flax import nnx

    from minids.config import MoEConfig
    from minids.model import Transformer, count_params

    for setting, want in experiments.REFERENCE["00"]["MEASURED"].items():
        D = int(setting.removeprefix("D="))
        cfg = experiments._base_config(d_model=D, head_dim=D // 4, ffn_dim=3 * D)
        assert count_params(nnx.eval_shape(lambda c=cfg: Transformer(c))) == want["params"][0]
    for setting, want in experiments.REFERENCE["06"]["MEASURED"].items():
        moe = MoEConfig(
            n_routed_experts=int(setting.removeprefix("E=")),
            n_shared_experts=1,
            experts_per_token=2,
            expert_ffn_dim=64,
            n_dense_layers=1,
            balancing="aux_free",
            bias_update_speed=1e-2,
        )
        model = nnx.eval_shape(lambda m=moe: Transformer(experiments._base_config(moe=m)))
        assert count_params(model) == want["params"][0]
        assert count_params(model, activated=True) == want["activated"][0]


def test_run_experiment_prints_the_dict_to_paste(capsys):
    def measure(setting, seed):
        return {"x": float(setting) + seed / 10}

    measured = experiments.run_experiment(measure, ("1", "2"))
    printed = capsys.readouterr().out.split("MEASURED = ", 1)[1]
    assert (
        ast.literal_eval(printed)
        == measured
        == {"1": {"x": [1.0, 1.1, 1.2]}, "2": {"x": [2.0, 2.1, 2.2]}}
    )


def test_a_student_file_with_the_reference_answers_passes_every_grader(tmp_path):
    """The answers read from a student's file (not the answer key): the path a class takes."""
    for key, stem in STEMS.items():
        answers = "\n".join(
            f"{name} = {value!r}" for name, value in experiments.REFERENCE[key].items()
        )
        (tmp_path / f"{stem}.py").write_text(answers + "\n")
        shutil.copy2(ROOT / "exercises" / f"test_{stem}.py", tmp_path)
        assert load_answers(tmp_path / f"{stem}.py", key)("CONCLUSION") is not None
    shutil.copy2(ROOT / "exercises" / "conftest.py", tmp_path)
    report = tmp_path / "report.xml"
    command = [sys.executable, "-m", "pytest", str(tmp_path), "-q", "-p", "no:cacheprovider"]
    command += ["-o", "addopts=", f"--junitxml={report}", "--rootdir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    results = junit_results(report)
    assert len(results) >= 5 * len(STEMS), done.stdout[-3000:]
    failed = {test: r for test, r in results.items() if r[0] != "passed"}
    assert not failed, f"{failed}\n{done.stdout[-3000:]}"
