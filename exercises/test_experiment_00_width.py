"""Grader for experiment 00 (validation loss against model width): `pytest exercises/test_experiment_00_width.py`.

Checks what a machine can: your prediction and explanation are written, your measurements cover
every setting and seed and lie in the range a correct experiment gives, and your conclusion follows
from them. The ranges come from the reference run (exercises/rubrics/experiment_00_width.md). With
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

answers = load_answers(Path(__file__).with_name("experiment_00_width.py"), "00")

# The mean over seeds 0, 1, 2 of a correct experiment: D=16 val_loss 2.23 ± 0.095; D=32 val_loss 1.74 ± 0.04; D=64 val_loss 1.54 ± 0.031 (mean ± std).
EXPECTED = {
    "D=16": {"val_loss": (1.94, 2.51), "params": (10832, 10832)},
    "D=32": {"val_loss": (1.6, 1.88), "params": (34976, 34976)},
    "D=64": {"val_loss": (1.42, 1.67), "params": (123200, 123200)},
}


def test_prediction_is_written():
    prediction = answers("PREDICTION")
    try:
        float(prediction["val_loss_at_D16"])
    except (TypeError, ValueError):
        fail(
            f"PREDICTION['val_loss_at_D16'] should be a number, got {prediction['val_loss_at_D16']!r}"
        )
    try:
        float(prediction["val_loss_at_D64"])
    except (TypeError, ValueError):
        fail(
            f"PREDICTION['val_loss_at_D64'] should be a number, got {prediction['val_loss_at_D64']!r}"
        )
    if prediction["smallest_within_noise"] not in ["D=16", "D=32", "D=64"]:
        fail(
            f"PREDICTION['smallest_within_noise'] should be one of ['D=16', 'D=32', 'D=64'], got {prediction['smallest_within_noise']!r}"
        )


def test_measured_every_setting_and_seed():
    check_measurements("MEASURED", answers("MEASURED"), EXPECTED)


@pytest.mark.points(2)
def test_measured_numbers_are_in_the_expected_range():
    check_measured_ranges(
        "MEASURED",
        answers("MEASURED"),
        EXPECTED,
        hint="params must match exactly: build the 'tiny' preset with n_layers=2, 4 heads of D // 4 and ffn_dim=3 * D; a loss far off means a different model or number of steps.",
    )


def test_conclusion_follows_from_the_measurements():
    measured = check_measurements("MEASURED", answers("MEASURED"), EXPECTED)
    want = smallest_within_noise(measured, "val_loss", "D=64", ["D=16", "D=32", "D=64"]) or "D=64"
    conclusion = answers("CONCLUSION")
    if conclusion != want:
        fail(
            f"CONCLUSION is {conclusion!r}, but by your measurements the smallest setting "
            f"within noise (two standard errors of the difference) is {want!r}"
        )


def test_explanation_is_written():
    check_explanation(answers("EXPLANATION"))
