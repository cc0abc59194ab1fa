"""Grader for experiment 06 (the number of routed experts): `pytest exercises/test_experiment_06_routed_experts.py`.

Checks what a machine can: your prediction and explanation are written, your measurements cover
every setting and seed and lie in the range a correct experiment gives, and your conclusion follows
from them. The ranges come from the reference run (exercises/rubrics/experiment_06_routed_experts.md). With
`MINIDS_EXERCISES=solutions` the same checks grade the reference answers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from minids.grading import (
    check_explanation,
    check_measured_ranges,
    check_measurements,
    fail,
    load_answers,
    smallest_within_noise,
)

answers = load_answers(Path(__file__).with_name("experiment_06_routed_experts.py"), "06")

# The mean over seeds 0, 1, 2 of a correct experiment: E=2 val_loss 1.55 ± 0.015; E=8 val_loss 1.53 ± 0.025; E=32 val_loss 1.53 ± 0.021 (mean ± std).
EXPECTED = {
    "E=2": {"val_loss": (1.43, 1.68), "params": (123328, 123328), "activated": (115200, 115200)},
    "E=8": {"val_loss": (1.41, 1.65), "params": (197440, 197440), "activated": (115584, 115584)},
    "E=32": {"val_loss": (1.41, 1.65), "params": (493888, 493888), "activated": (117120, 117120)},
}


def test_prediction_is_written():
    prediction = answers("PREDICTION")
    if prediction["loss_falls_with_E"] not in (True, False):
        fail(
            f"PREDICTION['loss_falls_with_E'] should be True or False, got {prediction['loss_falls_with_E']!r}"
        )
    if prediction["smallest_within_noise"] not in ["E=2", "E=8", "E=32"]:
        fail(
            f"PREDICTION['smallest_within_noise'] should be one of ['E=2', 'E=8', 'E=32'], got {prediction['smallest_within_noise']!r}"
        )


def test_measured_every_setting_and_seed():
    check_measurements("MEASURED", answers("MEASURED"), EXPECTED)


@pytest.mark.points(2)
def test_measured_numbers_are_in_the_expected_range():
    check_measured_ranges(
        "MEASURED",
        answers("MEASURED"),
        EXPECTED,
        hint="params and activated must match exactly: MoEConfig(n_routed_experts=E, n_shared_experts=1, experts_per_token=2, expert_ffn_dim=64, n_dense_layers=1, balancing='aux_free', bias_update_speed=1e-2) on the 2-layer base.",
    )


def test_conclusion_follows_from_the_measurements():
    measured = check_measurements("MEASURED", answers("MEASURED"), EXPECTED)
    best = min(EXPECTED, key=lambda s: measured[s]["val_loss"].mean())
    want = smallest_within_noise(measured, "val_loss", best, ["E=2", "E=8", "E=32"]) or best
    conclusion = answers("CONCLUSION")
    if conclusion != want:
        fail(
            f"CONCLUSION is {conclusion!r}, but by your measurements the smallest setting "
            f"within noise (two standard errors of the difference) is {want!r}"
        )


def test_explanation_is_written():
    check_explanation(answers("EXPLANATION"))
