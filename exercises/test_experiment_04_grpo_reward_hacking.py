"""Grader for experiment 04 (which reward GRPO hacks): `pytest exercises/test_experiment_04_grpo_reward_hacking.py`.

Checks what a machine can: your prediction and explanation are written, your measurements cover
every setting and seed and lie in the range a correct experiment gives, and your conclusion follows
from them. The ranges come from the reference run (exercises/rubrics/experiment_04_grpo_reward_hacking.md). With
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

answers = load_answers(Path(__file__).with_name("experiment_04_grpo_reward_hacking.py"), "04")

# The mean over seeds 0, 1, 2 of a correct experiment: format reward 0.99 ± 0.00084; format accuracy 0.515 ± 0.061; accuracy reward 0.988 ± 0.0012; accuracy accuracy 0.988 ± 0.0012; contains reward 0.993 ± 0.00091; contains accuracy 0.5 ± 0.0078; format+accuracy reward 1.99 ± 0.001; format+accuracy accuracy 0.995 ± 0.00051 (mean ± std).
EXPECTED = {
    "format": {"reward": (0.91, 1.0), "accuracy": (0.315, 0.715)},
    "accuracy": {"reward": (0.908, 1.0), "accuracy": (0.788, 1.0)},
    "contains": {"reward": (0.913, 1.0), "accuracy": (0.3, 0.7)},
    "format+accuracy": {"reward": (1.91, 2.0), "accuracy": (0.795, 1.0)},
}


def test_prediction_is_written():
    prediction = answers("PREDICTION")
    hacked = prediction["hacked"]
    if not isinstance(hacked, list | tuple) or any(h not in EXPECTED for h in hacked):
        fail(
            f"PREDICTION['hacked'] should be a list of rewards among {list(EXPECTED)}, got {hacked!r}"
        )


def test_measured_every_setting_and_seed():
    check_measurements("MEASURED", answers("MEASURED"), EXPECTED)


@pytest.mark.points(2)
def test_measured_numbers_are_in_the_expected_range():
    check_measured_ranges(
        "MEASURED",
        answers("MEASURED"),
        EXPECTED,
        hint="each step: advantages = group_advantages(rewards[prompts[:, None], styles]); loss = -mean(clipped_surrogate(logp, stop_gradient(logp), advantages.reshape(-1), mask)). A reward near 0 means the sign is flipped (you are minimising the reward).",
    )


def test_conclusion_follows_from_the_measurements():
    measured = check_measurements("MEASURED", answers("MEASURED"), EXPECTED)
    want = sorted(s for s in EXPECTED if measured[s]["accuracy"].mean() < 0.8)
    conclusion = answers("CONCLUSION")
    if not isinstance(conclusion, list | tuple) or sorted(conclusion) != want:
        fail(
            f"CONCLUSION is {conclusion!r}, but the rewards whose mean accuracy is below 0.8 in your measurements are {want!r}"
        )


def test_explanation_is_written():
    check_explanation(answers("EXPLANATION"))
