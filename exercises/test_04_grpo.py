"""Grader for exercise 04 (GRPO's objective): `pytest exercises/test_04_grpo.py`.

Each test checks one property of your `group_advantages`, `clipped_surrogate` or `k3_kl` in
`exercises/04_grpo.py` and, when it fails, says what it expected and what it got. With
`MINIDS_EXERCISES=solutions` the same tests grade minids' own implementations (the answer key).

The expected numbers are worked out here by hand, never by calling the answer key, so reading a
test tells you what the function must do.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minids.grading import (
    check_close,
    check_dtype,
    check_finite,
    check_shape,
    explain_tracer_errors,
    fail,
    load_exercise,
)

exercise = load_exercise(
    Path(__file__).with_name("04_grpo.py"),
    solutions={
        "group_advantages": "minids.grpo",
        "clipped_surrogate": "minids.grpo",
        "k3_kl": "minids.grpo",
        "completion_mask": "minids.grpo_trainer",
        "aggregate": "minids.grpo",
    },
)
group_advantages = exercise.group_advantages
clipped_surrogate = exercise.clipped_surrogate
completion_mask = exercise.completion_mask
aggregate = exercise.aggregate
k3_kl = exercise.k3_kl

ADV, SURR, KL = "group_advantages", "clipped_surrogate", "k3_kl"
REWARDS = [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 3.0]]
# Row 1: mean 0.75, deviations -0.75 x3 and 2.25, variance (3 * 0.5625 + 5.0625) / 4 = 27/16.
S1 = math.sqrt(27 / 16)


def ratios(values, rows=1) -> jnp.ndarray:
    """log-probabilities whose ratio to old_logp = 0 is `values` (so rho = values)."""
    return jnp.log(jnp.asarray([values] * rows, jnp.float32))


# ----------------------------------------------------------------------------------------------
# group_advantages
# ----------------------------------------------------------------------------------------------


def test_advantages_shape_and_dtype():
    adv = group_advantages(jnp.asarray(REWARDS), "group", 1e-4)
    check_shape(ADV, adv, (2, 4), letters="B G")
    check_dtype(ADV, adv, jnp.float32)


def test_advantages_hand_computed():
    check_close(
        ADV,
        group_advantages(jnp.asarray(REWARDS), "group", 0.0),
        [[1.0, -1.0, -1.0, 1.0], [-0.75 / S1, -0.75 / S1, -0.75 / S1, 2.25 / S1]],
        atol=1e-5,
        what="rewards [[1, 0, 0, 1], [0, 0, 0, 3]] with scale 'group' and eps 0",
        hint="subtract each row's mean and divide by each row's std (jnp.std, ddof 0): "
        "axis=1, keepdims=True. Row 0 has mean 0.5 and std 0.5.",
    )


def test_equal_rewards_give_exactly_zero_advantage():
    rewards = jnp.asarray([[0.7, 0.7, 0.7, 0.7], [1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    for eps in (0.0, 1e-4):
        adv = group_advantages(rewards, "group", eps)
        check_finite(ADV, adv, hint="an equal group has std 0: 0 / 0 is NaN. Give it 0 directly.")
        got = np.asarray(adv)[[0, 2]]
        if np.any(got != 0.0):
            fail(
                f"{ADV}: a group whose rewards are all equal should get advantages of exactly 0 "
                f"(eps = {eps}), got {got.tolist()}.\nHint: mean(0.7, 0.7, 0.7, 0.7) is not exactly "
                "0.7 in float32; detect an equal row with max == min and use jnp.where."
            )
        check_close(
            ADV,
            np.asarray(adv)[1],
            [1.0, -1.0, 1.0, -1.0],
            atol=1e-3,
            what=f"the uneven row [1, 0, 1, 0] next to equal rows (eps = {eps})",
        )


def test_scale_none_only_subtracts_the_group_mean():
    check_close(
        ADV,
        group_advantages(jnp.asarray(REWARDS), "none", 1e-4),
        [[0.5, -0.5, -0.5, 0.5], [-0.75, -0.75, -0.75, 2.25]],
        atol=1e-6,
        what="scale 'none' (Dr. GRPO): r - mean of the row, no division",
    )


def test_scale_batch_divides_by_the_std_of_all_rewards():
    # All 8 rewards: mean 5/8, squares sum 11, variance 11/8 - 25/64 = 63/64, std sqrt(63)/8.
    std = math.sqrt(63) / 8
    check_close(
        ADV,
        group_advantages(jnp.asarray(REWARDS), "batch", 0.0),
        np.asarray([[0.5, -0.5, -0.5, 0.5], [-0.75, -0.75, -0.75, 2.25]]) / std,
        atol=1e-5,
        what="scale 'batch': the group's mean is subtracted, the std is that of every reward",
        hint="jnp.std(rewards) with no axis is the std of the whole batch.",
    )


def test_advantages_use_eps():
    check_close(
        ADV,
        group_advantages(jnp.asarray([[1.0, 0.0]]), "group", 0.5),
        [[0.5, -0.5]],
        atol=1e-6,
        what="rewards [1, 0] (mean 0.5, std 0.5) with eps 0.5: 0.5 / (0.5 + 0.5)",
        hint="divide by (std + eps), not by std alone or by sqrt(var + eps).",
    )


# ----------------------------------------------------------------------------------------------
# clipped_surrogate
# ----------------------------------------------------------------------------------------------


def test_ratio_one_gives_the_advantage():
    logp = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32) - 3.0
    adv = jnp.asarray([1.5, -0.5, 0.0])
    got = clipped_surrogate(logp, logp, adv, jnp.ones((3, 4), bool), 0.2, 0.2)
    check_shape(SURR, got, (3, 4), letters="B T")
    check_dtype(SURR, got, jnp.float32)
    check_close(
        SURR,
        got,
        np.repeat([[1.5], [-0.5], [0.0]], 4, axis=1),
        atol=1e-6,
        what="logp == old_logp (rho = 1): every token's value is its row's advantage",
        hint="advantages has shape (B,): use advantages[:, None] against (B, T).",
    )


def test_ratios_inside_and_outside_the_clip_range():
    # rho = 1.5, 0.5, 1.1 with eps 0.2 (range [0.8, 1.2]):
    #   A = +1: min(1.5, 1.2) = 1.2   min(0.5, 0.8) = 0.5    1.1
    #   A = -1: min(-1.5, -1.2) = -1.5 min(-0.5, -0.8) = -0.8  -1.1
    got = clipped_surrogate(
        ratios([1.5, 0.5, 1.1], 2),
        jnp.zeros((2, 3)),
        jnp.asarray([1.0, -1.0]),
        jnp.ones((2, 3), bool),
        0.2,
        0.2,
    )
    check_close(
        SURR,
        got,
        [[1.2, 0.5, 1.1], [-1.5, -0.8, -1.1]],
        atol=1e-5,
        what="rho = [1.5, 0.5, 1.1], A = +1 (row 0) and -1 (row 1), eps 0.2",
        hint="min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A): the min makes the clip one-sided, "
        "so A > 0 is capped at 1.2 but not lifted at 0.5.",
    )


def test_clip_higher_uses_eps_high_above_and_eps_low_below():
    got = clipped_surrogate(
        ratios([1.5, 0.5, 1.25], 2),
        jnp.zeros((2, 3)),
        jnp.asarray([1.0, -1.0]),
        jnp.ones((2, 3), bool),
        0.1,
        0.3,
    )
    # range [0.9, 1.3]. A = +1: min(1.5, 1.3), min(0.5, 0.9), 1.25. A = -1: -1.5, min(-0.5, -0.9), -1.25
    check_close(
        SURR,
        got,
        [[1.3, 0.5, 1.25], [-1.5, -0.9, -1.25]],
        atol=1e-5,
        what="eps_low 0.1, eps_high 0.3: the clip range is [0.9, 1.3]",
        hint="the lower bound is 1 - eps_low, the upper 1 + eps_high.",
    )


def test_masked_padding_gives_zero_and_no_nan():
    logp = jnp.asarray([[-1.0, 900.0, 900.0], [-2.0, -1.0, -900.0]])  # garbage in the padding
    old = jnp.asarray([[-1.2, 0.0, -900.0], [-2.0, -1.5, 0.0]])
    mask = jnp.asarray([[True, False, False], [True, True, False]])
    got = clipped_surrogate(logp, old, jnp.asarray([1.0, -1.0]), mask, 0.2, 0.2)
    check_finite(SURR, got, hint="zero logp - old_logp at masked tokens before jnp.exp.")
    # unmasked: rho = e^0.2 = 1.2214 -> clipped to 1.2; rho = 1 -> -1; rho = e^0.5 -> -e^0.5
    check_close(
        SURR,
        got,
        [[1.2, 0, 0], [-1.0, -math.exp(0.5), 0]],
        atol=1e-4,
        what="padding (mask False) must contribute exactly 0",
    )
    with explain_tracer_errors(SURR, "jax.grad"):
        grad = jax.grad(
            lambda lp: jnp.sum(clipped_surrogate(lp, old, jnp.asarray([1.0, -1.0]), mask))
        )(logp)
    check_finite(
        SURR,
        grad,
        what="the gradient with garbage in the padding",
        hint="jnp.where(mask, x, 0) after an overflow still gives a NaN gradient: "
        "mask the log-ratio before the exp, not only the result.",
    )
    check_close(
        SURR,
        np.asarray(grad)[~np.asarray(mask)],
        np.zeros(3),
        atol=0,
        what="the gradient at padding tokens",
    )


def test_gradient_is_rho_times_advantage_inside_and_zero_where_clipped():
    # d/dlogp (rho A) = rho A inside the range; 0 where the clipped (constant) branch is the min.
    logp = ratios([1.1, 1.5, 0.5, 0.9], 2)
    adv = jnp.asarray([2.0, -1.0])
    mask = jnp.ones((2, 4), bool)
    with explain_tracer_errors(SURR, "jax.grad"):
        grad = jax.grad(
            lambda lp: jnp.sum(clipped_surrogate(lp, jnp.zeros((2, 4)), adv, mask, 0.2, 0.2))
        )(logp)
    # A = 2:  1.1 -> 2.2; 1.5 clipped -> 0; 0.5 unclipped (min is rho A) -> 1.0; 0.9 -> 1.8
    # A = -1: 1.1 -> -1.1; 1.5 unclipped -> -1.5; 0.5 clipped -> 0; 0.9 -> -0.9
    check_close(
        SURR,
        grad,
        [[2.2, 0.0, 1.0, 1.8], [-1.1, -1.5, 0.0, -0.9]],
        atol=1e-5,
        what="d surrogate / d logp for rho = [1.1, 1.5, 0.5, 0.9], A = 2 and -1",
        hint="compute rho as exp(logp - old_logp) so that gradients flow through logp.",
    )


def test_surrogate_works_under_jit():
    logp, old = ratios([1.5, 0.5, 1.1], 2), jnp.zeros((2, 3))
    args = (logp, old, jnp.asarray([1.0, -1.0]), jnp.ones((2, 3), bool))
    with explain_tracer_errors(SURR, "jax.jit"):
        got = jax.jit(clipped_surrogate)(*args, 0.2, 0.2)
    check_close(
        SURR,
        got,
        [[1.2, 0.5, 1.1], [-1.5, -0.8, -1.1]],
        atol=1e-5,
        what="under jax.jit (eps values are traced too)",
    )


# ----------------------------------------------------------------------------------------------
# k3_kl
# ----------------------------------------------------------------------------------------------


def test_k3_hand_computed():
    got = k3_kl(jnp.zeros((1, 2)), jnp.log(jnp.asarray([[2.0, 0.5]])), jnp.ones((1, 2), bool))
    check_shape(KL, got, (1, 2), letters="B T")
    check_dtype(KL, got, jnp.float32)
    check_close(
        KL,
        got,
        [[1.0 - math.log(2.0), math.log(2.0) - 0.5]],
        atol=1e-6,
        what="d = ref_logp - logp = log 2 and -log 2",
        hint="kl = exp(d) - d - 1 with d = ref_logp - logp (not logp - ref_logp).",
    )


def test_k3_is_zero_for_equal_policies_and_never_negative():
    rng = np.random.default_rng(1)
    logp = jnp.asarray(rng.normal(size=(4, 6)) - 2.0, jnp.float32)
    ref = jnp.asarray(rng.normal(size=(4, 6)) - 2.0, jnp.float32)
    mask = jnp.ones((4, 6), bool)
    check_close(
        KL,
        k3_kl(logp, logp, mask),
        np.zeros((4, 6)),
        atol=0,
        what="pi_theta == pi_ref: the KL must be exactly 0",
    )
    got = np.asarray(k3_kl(logp, ref, mask))
    if (got < 0).any():
        fail(f"{KL}: k3 is never negative (e^d >= 1 + d), got a minimum of {got.min():.4g}")
    if not (got > 0).any():
        fail(f"{KL}: different policies should give a positive KL somewhere, got all zeros")


def test_k3_masked_padding_and_gradient():
    logp = jnp.asarray([[-1.0, -900.0], [-2.0, 5.0]])
    ref = jnp.asarray([[-1.0 + math.log(2.0), 0.0], [-2.5, 900.0]])
    mask = jnp.asarray([[True, False], [True, False]])
    got = k3_kl(logp, ref, mask)
    check_finite(KL, got, hint="zero d at masked tokens before jnp.exp.")
    check_close(
        KL,
        got,
        [[1.0 - math.log(2.0), 0.0], [math.exp(-0.5) + 0.5 - 1.0, 0.0]],
        atol=1e-5,
        what="two real tokens (d = log 2, d = -0.5) and two padding tokens",
    )
    with explain_tracer_errors(KL, "jax.grad"):
        grad = jax.grad(lambda lp: jnp.sum(k3_kl(lp, ref, mask)))(logp)
    # d kl / d logp = (e^d - 1) * (-1) = 1 - e^d: 1 - 2 = -1 and 1 - e^-0.5; padding 0.
    check_finite(KL, grad, what="the gradient with garbage in the padding")
    check_close(
        KL,
        grad,
        [[-1.0, 0.0], [1.0 - math.exp(-0.5), 0.0]],
        atol=1e-5,
        what="d kl / d logp = 1 - exp(d)",
        hint="compute d from logp inside the function so the gradient flows through it.",
    )


# ----------------------------------------------------------------------------------------------
# completion_mask
# ----------------------------------------------------------------------------------------------

MASK, AGGREGATE, EOS = "completion_mask", "aggregate", 2


def check_bool_rows(got, want, what):
    want = np.asarray(want, bool)
    check_shape(MASK, got, want.shape, letters="B T")
    check_dtype(MASK, got, np.bool_, hint="return booleans (a comparison), not 0/1 numbers.")
    rows = np.asarray(got)
    for b, (g, w) in enumerate(zip(rows, want, strict=True)):
        if not np.array_equal(g, w):
            fail(
                f"{MASK}: {what}: row {b} is {g.astype(int).tolist()}, expected {w.astype(int).tolist()}"
            )


def test_completion_mask_shape_and_dtype():
    got = completion_mask(np.asarray([[5, 7, EOS, 9]]), EOS)
    check_shape(MASK, got, (1, 4), letters="B T")
    check_dtype(MASK, got, np.bool_, hint="return booleans (a comparison), not 0/1 numbers.")


@pytest.mark.points(2)
def test_completion_mask_example():
    tokens = np.asarray([[5, 7, EOS, 9, 9], [5, 5, 5, 5, 5]])
    check_bool_rows(
        completion_mask(tokens, EOS),
        [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]],
        "True up to and including the first EOS, every token when there is none",
    )


def test_completion_mask_eos_first():
    check_bool_rows(
        completion_mask(np.asarray([[EOS, 4, 4]]), EOS), [[1, 0, 0]], "an EOS at position 0"
    )


def test_completion_mask_second_eos_restarts_nothing():
    check_bool_rows(
        completion_mask(np.asarray([[4, EOS, 4, EOS, 4]]), EOS),
        [[1, 1, 0, 0, 0]],
        "only the first EOS counts",
    )


# ----------------------------------------------------------------------------------------------
# aggregate
# ----------------------------------------------------------------------------------------------

# Four completions, two prompts (G = 2), three tokens each. Lengths |o| = 2, 3, 1, 0: the last row
# is empty. Masked row sums: 3, 15, 7, 0; 6 tokens in all.
PER_TOKEN = jnp.asarray([[1.0, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]])
KEEP = jnp.asarray([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]], bool)
WORKED = {
    "grpo": (4.5, "row means 1.5, 5, 7 over the 3 non-empty rows: 13.5 / 3"),
    "bnpo": (25 / 6, "all 25 over all 6 tokens"),
    "dapo": (5.3, "group 0: 18 / 5 = 3.6, group 1: 7 / 1 = 7; their mean"),
    "dr_grpo": (25 / 9, "25 over 3 non-empty rows times T = 3"),
}


def check_loss_type(loss_type, hint):
    want, how = WORKED[loss_type]
    got = aggregate(PER_TOKEN, KEEP, loss_type, 2)
    check_shape(AGGREGATE, got, ())
    check_close(AGGREGATE, got, want, atol=1e-5, what=f'loss_type="{loss_type}": {how}', hint=hint)


@pytest.mark.points(2)
def test_aggregate_grpo():
    check_loss_type("grpo", "average each completion over its own tokens, then the completions.")


@pytest.mark.points(2)
def test_aggregate_bnpo():
    check_loss_type("bnpo", "one sum over every kept token, divided by how many there are.")


@pytest.mark.points(2)
def test_aggregate_dapo():
    check_loss_type("dapo", "per group of G = group_size rows: sum / tokens; then the mean.")


@pytest.mark.points(2)
def test_aggregate_dr_grpo():
    check_loss_type("dr_grpo", "divide by (rows with a token) * T, the longest completion allowed.")


def test_aggregate_ignores_masked_entries():
    changed = jnp.where(KEEP, PER_TOKEN, 1e6)
    for loss_type, (want, _) in WORKED.items():
        check_close(
            AGGREGATE,
            aggregate(changed, KEEP, loss_type, 2),
            want,
            atol=1e-4,
            what=f'loss_type="{loss_type}" with 1e6 in every masked entry',
            hint="multiply by the mask (or jnp.where) before summing.",
        )


def test_aggregate_empty_rows_count_nowhere():
    got = aggregate(PER_TOKEN[:2], KEEP[:2] & False, "grpo", 2)
    check_close(
        AGGREGATE,
        got,
        0.0,
        atol=0,
        what="an all-False mask should give 0, not NaN",
        hint="guard every division with jnp.maximum(denominator, 1).",
    )


def test_aggregate_rejects_an_unknown_loss_type():
    try:
        aggregate(PER_TOKEN, KEEP, "mean", 2)
    except ValueError as error:
        if "loss_type" not in str(error):
            fail(f"{AGGREGATE}: the ValueError should name `loss_type`, got: {error}")
        return
    fail(f'{AGGREGATE}: loss_type="mean" should raise ValueError naming loss_type.')


def test_aggregate_works_under_jit():
    with explain_tracer_errors(AGGREGATE, "jax.jit"):
        got = jax.jit(aggregate, static_argnums=(2, 3))(PER_TOKEN, KEEP, "dapo", 2)
    check_close(AGGREGATE, got, 5.3, atol=1e-5, what="under jax.jit")
