"""Grader for experiment 05 (the distillation temperature): `pytest exercises/test_experiment_05_distillation_temperature.py`.

Checks what a machine can: your prediction and explanation are written, your measurements cover
every setting and seed and lie in the range a correct experiment gives, and your conclusion follows
from them. The ranges come from the reference run (exercises/rubrics/experiment_05_distillation_temperature.md). With
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

answers = load_answers(Path(__file__).with_name("experiment_05_distillation_temperature.py"), "05")

# The mean over seeds 0, 1, 2 of a correct experiment: T=1 agreement 0.409 ± 0.043; T=1 kl 1.61 ± 0.14; T=2 agreement 0.494 ± 0.028; T=2 kl 1.43 ± 0.27; T=4 agreement 0.502 ± 0.023; T=4 kl 1.56 ± 0.2; T=8 agreement 0.488 ± 0.032; T=8 kl 1.74 ± 0.14 (mean ± std).
EXPECTED = {
    "T=1": {"agreement": (0.282, 0.537), "kl": (1.18, 2.04)},
    "T=2": {"agreement": (0.409, 0.58), "kl": (0.634, 2.23)},
    "T=4": {"agreement": (0.433, 0.57), "kl": (0.952, 2.17)},
    "T=8": {"agreement": (0.394, 0.583), "kl": (1.3, 2.17)},
}


def test_prediction_is_written():
    prediction = answers("PREDICTION")
    if prediction["best_T"] not in ["T=1", "T=2", "T=4", "T=8"]:
        fail(
            f"PREDICTION['best_T'] should be one of ['T=1', 'T=2', 'T=4', 'T=8'], got {prediction['best_T']!r}"
        )
    try:
        float(prediction["agreement_at_T1"])
    except (TypeError, ValueError):
        fail(
            f"PREDICTION['agreement_at_T1'] should be a number, got {prediction['agreement_at_T1']!r}"
        )


def test_measured_every_setting_and_seed():
    check_measurements("MEASURED", answers("MEASURED"), EXPECTED)


@pytest.mark.points(2)
def test_measured_numbers_are_in_the_expected_range():
    check_measured_ranges(
        "MEASURED",
        answers("MEASURED"),
        EXPECTED,
        hint="loss(p) = distillation_loss(student(p, x_train), teacher(x_train), T): the student first, the teacher second, at the setting's T.",
    )


def test_conclusion_follows_from_the_measurements():
    measured = check_measurements("MEASURED", answers("MEASURED"), EXPECTED)
    want = max(EXPECTED, key=lambda s: measured[s]["agreement"].mean())
    conclusion = answers("CONCLUSION")
    if conclusion != want:
        fail(f"CONCLUSION is {conclusion!r}, but your highest mean agreement is at {want!r}")


def test_explanation_is_written():
    check_explanation(answers("EXPLANATION"))
