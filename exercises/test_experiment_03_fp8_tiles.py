"""Grader for experiment 03 (FP8 tile size against an outlier-heavy activation): `pytest exercises/test_experiment_03_fp8_tiles.py`.

Checks what a machine can: your prediction and explanation are written, your measurements cover
every setting and seed and lie in the range a correct experiment gives, and your conclusion follows
from them. The ranges come from the reference run (exercises/rubrics/experiment_03_fp8_tiles.md). With
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
)

answers = load_answers(Path(__file__).with_name("experiment_03_fp8_tiles.py"), "03")

# The mean over seeds 0, 1, 2 of a correct experiment: tensor rel_error 0.107 ± 0.0099; 1x1024 rel_error 0.061 ± 0.0022; 1x128 rel_error 0.0346 ± 0.00078; 1x32 rel_error 0.0268 ± 0.00021; 1x8 rel_error 0.0207 ± 5.2e-05 (mean ± std).
EXPECTED = {
    "tensor": {"rel_error": (0.0772, 0.137), "scale_overhead": (6.104e-05, 6.104e-05)},
    "1x1024": {"rel_error": (0.0518, 0.0701), "scale_overhead": (0.003906, 0.003906)},
    "1x128": {"rel_error": (0.0294, 0.0398), "scale_overhead": (0.03125, 0.03125)},
    "1x32": {"rel_error": (0.0228, 0.0308), "scale_overhead": (0.125, 0.125)},
    "1x8": {"rel_error": (0.0176, 0.0239), "scale_overhead": (0.5, 0.5)},
}


def test_prediction_is_written():
    prediction = answers("PREDICTION")
    if prediction["best_tile"] not in ["tensor", "1x1024", "1x128", "1x32", "1x8"]:
        fail(
            f"PREDICTION['best_tile'] should be one of ['tensor', '1x1024', '1x128', '1x32', '1x8'], got {prediction['best_tile']!r}"
        )
    try:
        float(prediction["tensor_over_1x128"])
    except (TypeError, ValueError):
        fail(
            f"PREDICTION['tensor_over_1x128'] should be a number, got {prediction['tensor_over_1x128']!r}"
        )


def test_measured_every_setting_and_seed():
    check_measurements("MEASURED", answers("MEASURED"), EXPECTED)


@pytest.mark.points(2)
def test_measured_numbers_are_in_the_expected_range():
    check_measured_ranges(
        "MEASURED",
        answers("MEASURED"),
        EXPECTED,
        hint="quantize(x, 'e4m3', block) then dequantize(q, scale, block), and measure the error only on the ordinary columns (x[:, ~outliers]), relative to their RMS.",
    )


def test_conclusion_follows_from_the_measurements():
    measured = check_measurements("MEASURED", answers("MEASURED"), EXPECTED)
    want = min(EXPECTED, key=lambda s: measured[s]["rel_error"].mean())
    conclusion = answers("CONCLUSION")
    if conclusion != want:
        fail(f"CONCLUSION is {conclusion!r}, but your smallest mean rel_error is at {want!r}")


def test_explanation_is_written():
    check_explanation(answers("EXPLANATION"))
