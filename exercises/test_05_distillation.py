"""Grader for exercise 05 (the distillation loss): `pytest exercises/test_05_distillation.py`.

Each test checks one property of your `distillation_loss` in `exercises/05_distillation.py` and, when it
fails, says what it expected and what it got. With `MINIDS_EXERCISES=solutions` the same tests grade
minids' own implementation (the answer key). The expected numbers are worked out by hand or with a few
lines of numpy, never by calling the answer key.
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
    check_finite,
    check_shape,
    explain_tracer_errors,
    fail,
    load_exercise,
)

exercise = load_exercise(
    Path(__file__).with_name("05_distillation.py"),
    solutions={
        "distillation_loss": "minids.distill",
        "distillation_objective": "minids.distill",
    },
)
distillation_loss = exercise.distillation_loss
distillation_objective = exercise.distillation_objective
NAME = "distillation_loss"


def logits(*rows):
    return jnp.asarray([[list(r) for r in rows]], jnp.float32)  # (1, T, V)


def kl_np(student, teacher, T):
    """Per-token KL(softmax(teacher / T) || softmax(student / T)) in float64 numpy."""

    def log_softmax(x):
        x = np.asarray(x, np.float64) / T
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(teacher), log_softmax(student)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def random_logits(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * 2, jnp.float32)


def loss_value(*args, **kwargs):
    out = distillation_loss(*args, **kwargs)
    check_shape(NAME, out, (), letters=None)
    check_finite(NAME, out)
    return np.asarray(out, np.float64)


def test_returns_a_scalar():
    loss_value(random_logits((2, 3, 5), 0), random_logits((2, 3, 5), 1), 1.0)


def test_hand_computed_value_at_temperature_one():
    # teacher p = (1/2, 1/2), student q = (3/4, 1/4): KL = 1/2 ln(1/2 / 3/4) + 1/2 ln(1/2 / 1/4) = 1/2 ln(4/3)
    got = loss_value(logits([math.log(3), 0.0]), logits([0.0, 0.0]), 1.0)
    check_close(
        NAME,
        got,
        0.5 * math.log(4 / 3),
        atol=1e-5,
        what="teacher (1/2, 1/2), student (3/4, 1/4), T = 1",
        hint="KL(p || q) = sum_v p_v (log p_v - log q_v) with p the TEACHER's distribution.",
    )


def test_hand_computed_value_at_temperature_two():
    # student logits (2 ln 3, 0) / 2 = (ln 3, 0): q = (3/4, 1/4) again. KL = 1/2 ln(4/3), times T^2 = 4.
    got = loss_value(logits([2 * math.log(3), 0.0]), logits([0.0, 0.0]), 2.0)
    want = 4 * 0.5 * math.log(4 / 3)
    if abs(float(got) - want / 4) < 1e-5:
        fail(
            f"{NAME}: got {float(got):.6f} = KL alone at T = 2; the loss is T^2 = 4 times the KL ({want:.6f})."
        )
    check_close(
        NAME,
        got,
        want,
        atol=1e-5,
        what="student logits (2 ln 3, 0), teacher (0, 0), T = 2",
        hint="divide BOTH logits by T before the softmax, then multiply the KL by T ** 2.",
    )


def test_zero_when_teacher_and_student_agree():
    x = random_logits((2, 4, 7), 2)
    for T in (1.0, 3.0):
        check_close(NAME, loss_value(x, x, T), 0.0, atol=1e-6, what=f"teacher = student at T = {T}")


def test_positive_when_they_disagree():
    got = loss_value(random_logits((2, 4, 7), 3), random_logits((2, 4, 7), 4), 2.0)
    if not float(got) > 0:
        fail(f"{NAME}: a KL divergence between different distributions is > 0, got {float(got)}")


def test_t_squared_scaling_on_random_logits():
    s, t = random_logits((2, 3, 6), 5), random_logits((2, 3, 6), 6)
    for T in (0.5, 1.0, 4.0):
        want = T**2 * kl_np(s, t, T).mean()
        check_close(
            NAME,
            loss_value(s, t, T),
            want,
            rtol=1e-4,
            atol=1e-6,
            what=f"random logits at T = {T}",
            hint="T ** 2 * mean over tokens of KL(softmax(teacher / T) || softmax(student / T)).",
        )


def test_mask_selects_the_tokens_that_count():
    s, t = random_logits((2, 3, 6), 7), random_logits((2, 3, 6), 8)
    mask = jnp.asarray([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    per_token = kl_np(s, t, 1.0)
    want = (per_token * np.asarray(mask)).sum() / np.asarray(mask).sum()
    check_close(
        NAME,
        loss_value(s, t, 1.0, mask),
        want,
        rtol=1e-4,
        what="with a mask (3 of 6 tokens)",
        hint="sum(kl * mask) / sum(mask): masked tokens neither add to the sum nor to the count.",
    )


def test_no_nan_for_huge_logits():
    s = logits([1000.0, 0.0, -1000.0])
    t = logits([0.0, 1000.0, -1000.0])
    got = loss_value(s, t, 1.0)
    check_close(
        NAME,
        got,
        1000.0,
        rtol=1e-3,
        what="teacher sure of token 1, student sure of token 0",
        hint="use jax.nn.log_softmax on the scaled logits instead of log(softmax(...)).",
    )


def test_gradient_is_t_times_q_minus_p_and_none_reaches_the_teacher():
    s, t = random_logits((1, 2, 5), 9), random_logits((1, 2, 5), 10)
    T = 2.0
    with explain_tracer_errors(NAME, "jax.grad"):
        g_s, g_t = jax.grad(lambda a, b: distillation_loss(a, b, T), argnums=(0, 1))(s, t)
    want = T * (jax.nn.softmax(s / T) - jax.nn.softmax(t / T)) / 2  # 2 tokens in the mean
    check_close(
        NAME, g_s, np.asarray(want), atol=1e-5, what="gradient with respect to the student's logits"
    )
    if float(jnp.abs(g_t).max()) != 0.0:
        fail(
            f"{NAME}: the teacher is fixed, but a gradient of size {float(jnp.abs(g_t).max()):.3g} reached its "
            "logits. Hint: jax.lax.stop_gradient(teacher_logits)."
        )


def test_works_under_jit():
    s, t = random_logits((2, 3, 6), 11), random_logits((2, 3, 6), 12)
    eager = loss_value(s, t, 2.0)
    with explain_tracer_errors(NAME, "jax.jit"):
        jitted = jax.jit(distillation_loss, static_argnums=(2,))(s, t, 2.0)
    check_close(NAME, jitted, eager, atol=1e-6, what="under jax.jit against eager")


# ----------------------------------------------------------------------------------------------
# distillation_objective
# ----------------------------------------------------------------------------------------------

OBJECTIVE = "distillation_objective"


def objective_inputs(seed=0):
    rng = np.random.default_rng(seed)
    student = jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.float32)
    teacher = jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 5, size=(2, 3)), jnp.int32)
    mask = jnp.asarray([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    return student, teacher, targets, mask


def soft_np(student, teacher, mask, T):
    """T^2 * KL(teacher || student) at temperature T, masked mean, float64."""
    s, t = np.asarray(student, np.float64) / T, np.asarray(teacher, np.float64) / T
    log_q = s - np.log(np.exp(s).sum(-1, keepdims=True))
    log_p = t - np.log(np.exp(t).sum(-1, keepdims=True))
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    return T**2 * (kl * mask).sum() / np.asarray(mask).sum()


def hard_np(student, targets, mask):
    """Cross-entropy of the student against the targets, temperature 1, masked mean."""
    s = np.asarray(student, np.float64)
    log_q = s - np.log(np.exp(s).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_q, np.asarray(targets)[..., None], -1)[..., 0]
    return (ce * mask).sum() / np.asarray(mask).sum()


def objective(*args):
    got = distillation_objective(*args)
    check_shape(OBJECTIVE, got, ())
    return got


def test_objective_alpha_one_is_distillation():
    student, teacher, targets, mask = objective_inputs(1)
    check_close(
        OBJECTIVE,
        objective(student, teacher, targets, mask, 1.0, 2.0),
        soft_np(student, teacher, mask, 2.0),
        atol=1e-5,
        what="alpha = 1: T^2 KL(teacher || student) at T = 2, masked mean",
    )


@pytest.mark.points(2)
def test_objective_alpha_zero_is_cross_entropy():
    student, teacher, targets, mask = objective_inputs(2)
    check_close(
        OBJECTIVE,
        objective(student, teacher, targets, mask, 0.0, 2.0),
        hard_np(student, targets, mask),
        atol=1e-5,
        what="alpha = 0: the masked mean of -log softmax(student)[target], at temperature 1",
        hint="the hard term does not divide the logits by the temperature.",
    )


def test_objective_mixes_by_alpha():
    student, teacher, targets, mask = objective_inputs(3)
    want = 0.3 * soft_np(student, teacher, mask, 2.0) + 0.7 * hard_np(student, targets, mask)
    check_close(
        OBJECTIVE,
        objective(student, teacher, targets, mask, 0.3, 2.0),
        want,
        atol=1e-5,
        what="alpha = 0.3: 0.3 * soft + 0.7 * hard",
    )


@pytest.mark.points(2)
def test_objective_ignores_masked_tokens():
    student, teacher, targets, mask = objective_inputs(4)
    hidden = (np.asarray(mask) == 0)[..., None]
    changed = jnp.where(hidden, 50.0 * student, student)
    check_close(
        OBJECTIVE,
        objective(changed, teacher, targets, mask, 0.5, 2.0),
        objective(student, teacher, targets, mask, 0.5, 2.0),
        atol=1e-5,
        what="changing the logits where mask = 0 changed the loss",
        hint="both terms are means over the tokens where mask = 1: sum(term * mask) / sum(mask).",
    )


def test_objective_rejects_alpha_outside_0_1():
    student, teacher, targets, mask = objective_inputs(5)
    try:
        distillation_objective(student, teacher, targets, mask, 1.5, 1.0)
    except ValueError as error:
        if "alpha" not in str(error):
            fail(f"{OBJECTIVE}: the ValueError should name `alpha`, got: {error}")
        return
    fail(f"{OBJECTIVE}: alpha = 1.5 should raise ValueError naming alpha.")


def test_objective_sends_no_gradient_to_the_teacher():
    student, teacher, targets, mask = objective_inputs(6)
    with explain_tracer_errors(OBJECTIVE, "jax.grad"):
        grad = jax.grad(lambda t: distillation_objective(student, t, targets, mask, 0.5, 2.0))(
            teacher
        )
    check_close(
        OBJECTIVE,
        grad,
        np.zeros(teacher.shape),
        atol=0,
        what="the gradient with respect to the teacher's logits should be zero",
        hint="jax.lax.stop_gradient(teacher_logits): the teacher is not being trained.",
    )


def test_objective_works_under_jit():
    student, teacher, targets, mask = objective_inputs(7)
    with explain_tracer_errors(OBJECTIVE, "jax.jit"):
        got = jax.jit(distillation_objective, static_argnums=(4, 5))(
            student, teacher, targets, mask, 0.5, 2.0
        )
    want = 0.5 * soft_np(student, teacher, mask, 2.0) + 0.5 * hard_np(student, targets, mask)
    check_close(OBJECTIVE, got, want, atol=1e-5, what="under jax.jit")
