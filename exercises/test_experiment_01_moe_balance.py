"""Grader for experiment 01 (aux-free balancing at three γ): `pytest exercises/test_experiment_01_moe_balance.py`.

Checks what a machine can: your prediction and explanation are written, your measurements cover
every γ and seed and lie in the range a correct experiment gives, and your conclusion follows from
them. The ranges come from the reference run (exercises/rubrics/experiment_01_moe_balance.md). With
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

answers = load_answers(Path(__file__).with_name("experiment_01_moe_balance.py"), "01")

# The mean MaxVio over seeds 0, 1, 2 of a correct experiment (reference: 4.47, 1.14, 0.43, 2.32).
EXPECTED = {
    "0": {"max_vio": (3.5, 5.5)},
    "0.001": {"max_vio": (0.8, 1.5)},
    "0.01": {"max_vio": (0.3, 0.6)},
    "0.1": {"max_vio": (1.9, 2.8)},
}


def test_prediction_is_written():
    prediction = answers("PREDICTION")
    if prediction["best_gamma"] not in ("0.001", "0.01", "0.1"):
        fail(
            f"PREDICTION['best_gamma'] should be one of '0.001', '0.01', '0.1', got {prediction['best_gamma']!r}"
        )
    try:
        float(prediction["max_vio_without_balancing"])
    except (TypeError, ValueError):
        fail("PREDICTION['max_vio_without_balancing'] should be a number")


def test_measured_every_gamma_and_seed():
    check_measurements("MEASURED", answers("MEASURED"), EXPECTED)


@pytest.mark.points(2)
def test_measured_max_vio_is_in_the_expected_range():
    check_measured_ranges(
        "MEASURED",
        answers("MEASURED"),
        EXPECTED,
        hint="no balancing should leave MaxVio near 4.5 (experts 0 and 1 take most tokens); if a γ "
        "makes it worse than no balancing, check the sign of the update (overloaded experts go down).",
    )


def test_conclusion_follows_from_the_measurements():
    measured = check_measurements("MEASURED", answers("MEASURED"), EXPECTED)
    best = min(EXPECTED, key=lambda g: measured[g]["max_vio"].mean())
    conclusion = answers("CONCLUSION")
    if str(conclusion) != best:
        fail(f"CONCLUSION is {conclusion!r}, but your lowest mean MaxVio is at γ = {best!r}")


def test_explanation_is_written():
    check_explanation(answers("EXPLANATION"))
