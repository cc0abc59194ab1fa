"""Grader for experiment 02 (the smallest MLA latent within noise of MHA): `pytest exercises/test_experiment_02_mla_latent.py`.

Checks what a machine can: your prediction and explanation are written, your measurements cover
every setting and seed and lie in the range a correct experiment gives, and your conclusion follows
from them. The ranges come from the reference run (exercises/rubrics/experiment_02_mla_latent.md). With
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

answers = load_answers(Path(__file__).with_name("experiment_02_mla_latent.py"), "02")

# The mean over seeds 0, 1, 2 of a correct experiment: MHA val_loss 1.54 ± 0.031; C=2 val_loss 1.7 ± 0.048; C=8 val_loss 1.61 ± 0.027; C=32 val_loss 1.59 ± 0.0046 (mean ± std).
EXPECTED = {
    "MHA": {"val_loss": (1.42, 1.67)},
    "C=2": {"val_loss": (1.56, 1.85)},
    "C=8": {"val_loss": (1.48, 1.74)},
    "C=32": {"val_loss": (1.46, 1.71)},
}


def test_prediction_is_written():
    prediction = answers("PREDICTION")
    if prediction["smallest_within_noise"] not in ["C=2", "C=8", "C=32", "none"]:
        fail(
            f"PREDICTION['smallest_within_noise'] should be one of ['C=2', 'C=8', 'C=32', 'none'], got {prediction['smallest_within_noise']!r}"
        )
    if prediction["c2_within_noise"] not in (True, False):
        fail(
            f"PREDICTION['c2_within_noise'] should be True or False, got {prediction['c2_within_noise']!r}"
        )


def test_measured_every_setting_and_seed():
    check_measurements("MEASURED", answers("MEASURED"), EXPECTED)


@pytest.mark.points(2)
def test_measured_numbers_are_in_the_expected_range():
    check_measured_ranges(
        "MEASURED",
        answers("MEASURED"),
        EXPECTED,
        hint="use MLAConfig(kv_lora_rank=C, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16) on the 2-layer base, 150 steps (train_and_validate's defaults).",
    )


def test_conclusion_follows_from_the_measurements():
    measured = check_measurements("MEASURED", answers("MEASURED"), EXPECTED)
    want = smallest_within_noise(measured, "val_loss", "MHA", ["C=2", "C=8", "C=32"]) or "none"
    conclusion = answers("CONCLUSION")
    if conclusion != want:
        fail(
            f"CONCLUSION is {conclusion!r}, but by your measurements the smallest setting "
            f"within noise (two standard errors of the difference) is {want!r}"
        )


def test_explanation_is_written():
    check_explanation(answers("EXPLANATION"))
