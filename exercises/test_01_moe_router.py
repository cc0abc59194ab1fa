"""Grader for exercise 01 (the MoE router and aux-free balancing): `pytest exercises/test_01_moe_router.py`.

Each test checks one property of your `sigmoid_topk_router`, `expert_load` or `aux_free_bias_update`
in `exercises/01_moe_router.py` and, when it fails, says what it expected and what it got. With
`MINIDS_EXERCISES=solutions` the same tests grade minids' own implementations (the answer key).

The expected numbers are worked out here by hand or with a few lines of numpy, never by calling the
answer key, so reading a test tells you what the function must do.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

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
    Path(__file__).with_name("01_moe_router.py"),
    solutions={
        "sigmoid_topk_router": "minids.moe",
        "expert_load": "minids.moe",
        "aux_free_bias_update": "minids.moe",
    },
)
sigmoid_topk_router = exercise.sigmoid_topk_router
expert_load = exercise.expert_load
aux_free_bias_update = exercise.aux_free_bias_update

ROUTER, LOAD, UPDATE = "sigmoid_topk_router", "expert_load", "aux_free_bias_update"
T, E, K = 6, 8, 2  # most checks: 6 tokens, 8 experts, 2 experts per token


def logits_for(scores) -> jnp.ndarray:
    """The logits whose sigmoid is `scores`: log(s / (1 - s))."""
    s = np.asarray(scores, dtype=np.float64)
    return jnp.asarray(np.log(s / (1 - s)), jnp.float32)


def random_logits(shape=(T, E), seed=0) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def route(logits, bias, k, route_scale=1.0):
    """Call the router and check the basic shapes, so later checks can rely on them."""
    indices, gates = _pair(sigmoid_topk_router(logits, bias, k, route_scale))
    rows = logits.shape[0]
    check_shape(ROUTER, indices, (rows, k), letters="T K")
    check_shape(ROUTER, gates, (rows, k), letters="T K")
    return np.asarray(indices), np.asarray(gates, dtype=np.float64)


def _pair(result):
    if not isinstance(result, tuple | list) or len(result) != 2:
        fail(
            f"{ROUTER} should return a pair (indices, gates), got {type(result).__name__}"
            + (f" of length {len(result)}" if isinstance(result, tuple | list) else "")
        )
    return result


def gates_in_expert_order(indices, gates):
    """Each row's gates ordered by expert number, so the order the router lists them in is free."""
    order = np.argsort(np.asarray(indices), axis=-1)
    return np.take_along_axis(np.asarray(gates, np.float64), order, axis=-1)


def check_choice(name, indices, want_rows, what):
    got = [sorted(row) for row in np.asarray(indices).tolist()]
    want = [sorted(row) for row in want_rows]
    if got != want:
        fail(f"{name}: {what}: expected the experts {want} (in any order), got {got}")


# ----------------------------------------------------------------------------------------------
# sigmoid_topk_router
# ----------------------------------------------------------------------------------------------


def test_router_output_shapes_and_dtypes():
    indices, gates = _pair(sigmoid_topk_router(random_logits(), jnp.zeros(E), K))
    check_shape(ROUTER, indices, (T, K), letters="T K")
    check_shape(ROUTER, gates, (T, K), letters="T K")
    if not jnp.issubdtype(np.asarray(indices).dtype, jnp.integer):
        fail(
            f"{ROUTER}: indices should be integers (expert numbers), got dtype {indices.dtype}. "
            "Hint: jax.lax.top_k returns the indices as its second output."
        )
    check_dtype(ROUTER, gates, jnp.float32)


def test_router_picks_k_different_experts_per_token():
    indices, _ = route(random_logits((20, E), seed=1), jnp.zeros(E), 3)
    for t, row in enumerate(indices.tolist()):
        if len(set(row)) != 3 or not all(0 <= i < E for i in row):
            fail(
                f"{ROUTER}: token {t} should get 3 different experts numbered 0..{E - 1}, got {row}"
            )


def test_router_picks_the_highest_scores_without_bias():
    scores = [[0.9, 0.8, 0.3, 0.2], [0.2, 0.3, 0.8, 0.9], [0.5, 0.7, 0.6, 0.1]]
    indices, _ = route(logits_for(scores), jnp.zeros(4), 2)
    check_choice(
        ROUTER,
        indices,
        [[0, 1], [2, 3], [1, 2]],
        "with a zero bias each token should get its two highest-scoring experts",
    )


def test_gates_are_scores_normalised_over_the_chosen():
    # s = [0.9, 0.8, 0.3, 0.2]: experts 0 and 1 win, gates 0.9 / 1.7 and 0.8 / 1.7, times 2.5.
    indices, gates = route(logits_for([[0.9, 0.8, 0.3, 0.2]]), jnp.zeros(4), 2, route_scale=2.5)
    check_choice(ROUTER, indices, [[0, 1]], "the two highest scores")
    check_close(
        ROUTER,
        gates_in_expert_order(indices, gates),
        [[2.5 * 0.9 / 1.7, 2.5 * 0.8 / 1.7]],
        atol=1e-5,
        what="gates of experts 0 and 1 for s = [0.9, 0.8, 0.3, 0.2], route_scale 2.5",
        hint="gate_i = route_scale * s_i / (s_0 + s_1) with s = sigmoid(logits), the "
        "unbiased scores of the chosen experts; not a softmax over all experts.",
    )


def test_gates_sum_to_route_scale():
    _, gates = route(random_logits((32, E), seed=2), jnp.zeros(E), 3, route_scale=2.5)
    if (gates < 0).any():
        fail(
            f"{ROUTER}: gates should be non-negative (sigmoid scores are), got a minimum of "
            f"{gates.min():.4g}"
        )
    check_close(
        ROUTER,
        gates.sum(axis=-1),
        np.full(32, 2.5),
        atol=1e-5,
        what="each token's gates should add up to route_scale = 2.5",
        hint="normalise over the k chosen experts, then multiply by route_scale.",
    )


def test_bias_changes_the_choice_but_not_the_gate_formula():
    # s = [0.9, 0.8, 0.3, 0.2] and b = [0, 0, 0.7, 0]: s + b = [0.9, 0.8, 1.0, 0.2], so experts 2
    # and 0 are chosen. Their gates use s, not s + b: 0.3 / 1.2 = 0.25 and 0.9 / 1.2 = 0.75.
    logits = logits_for([[0.9, 0.8, 0.3, 0.2]])
    indices, gates = route(logits, jnp.asarray([0.0, 0.0, 0.7, 0.0]), 2)
    check_choice(
        ROUTER,
        indices,
        [[0, 2]],
        "with bias [0, 0, 0.7, 0], s + b = [0.9, 0.8, 1.0, 0.2] makes experts 2 and 0 win",
    )
    check_close(
        ROUTER,
        gates_in_expert_order(indices, gates),
        [[0.75, 0.25]],
        atol=1e-5,
        what="gates of experts 0 and 2 (s = 0.9 and 0.3) under a bias",
        hint="the bias decides who is chosen, the gates use the unbiased s: 0.3 / 1.2 and "
        "0.9 / 1.2. (1.0 / 1.9 and 0.9 / 1.9 would mean the bias leaked into the gates.)",
    )


def test_an_equal_bias_for_all_experts_changes_nothing():
    logits = random_logits(seed=3)
    plain_indices, plain_gates = route(logits, jnp.zeros(E), K)
    indices, gates = route(logits, jnp.full((E,), 0.5), K)
    check_choice(
        ROUTER,
        indices,
        plain_indices.tolist(),
        "adding 0.5 to every expert's score keeps the ranking",
    )
    check_close(
        ROUTER,
        gates_in_expert_order(indices, gates),
        gates_in_expert_order(plain_indices, plain_gates),
        atol=1e-6,
        what="gates with a bias of 0.5 for every expert against gates without a bias",
        hint="use the bias only to choose the experts; compute the gates from s alone.",
    )


def test_router_works_under_jit():
    logits, bias = random_logits(seed=4), jnp.asarray(np.linspace(-0.2, 0.2, E), jnp.float32)
    eager_indices, eager_gates = route(logits, bias, K)
    with explain_tracer_errors(ROUTER, "jax.jit"):
        indices, gates = _pair(jax.jit(sigmoid_topk_router, static_argnums=2)(logits, bias, K))
    check_shape(ROUTER, indices, (T, K), letters="T K")
    check_choice(
        ROUTER, indices, eager_indices.tolist(), "under jax.jit, the experts chosen without it"
    )
    check_close(
        ROUTER,
        gates_in_expert_order(indices, gates),
        gates_in_expert_order(eager_indices, eager_gates),
        atol=1e-6,
        what="under jax.jit the gates should be those you get without it",
    )


def test_gradient_reaches_only_the_chosen_experts():
    logits = random_logits(seed=5)
    weights = jnp.asarray(np.random.default_rng(6).standard_normal((T, K)), jnp.float32)
    indices, _ = route(logits, jnp.zeros(E), K)

    def loss(logits):
        return jnp.sum(_pair(sigmoid_topk_router(logits, jnp.zeros(E), K))[1] * weights)

    with explain_tracer_errors(ROUTER, "jax.grad"):
        grad = jax.grad(loss)(logits)
    check_shape(ROUTER, grad, (T, E), letters="T E")
    check_finite(ROUTER, grad, what="the gradient of the gates with respect to the logits")
    chosen = np.zeros((T, E), dtype=bool)
    np.put_along_axis(chosen, indices, True, axis=-1)
    grad = np.asarray(grad)
    if np.abs(grad[~chosen]).max() > 1e-7:
        fail(
            f"{ROUTER}: the gates should depend only on the logits of the chosen experts, but the "
            f"gradient reaches experts that were not chosen (largest {np.abs(grad[~chosen]).max():.3g})."
            " Hint: normalise over the k chosen scores, not over all E."
        )
    if np.abs(grad[chosen]).max() == 0:
        fail(
            f"{ROUTER}: the gates should change with the logits of the chosen experts, but their "
            "gradient is 0. Hint: compute the gates from sigmoid(logits), not from constants."
        )


# ----------------------------------------------------------------------------------------------
# expert_load
# ----------------------------------------------------------------------------------------------


def test_expert_load_hand_example():
    load = expert_load(jnp.asarray([[0, 1], [0, 2], [0, 1]]), 4)
    check_shape(LOAD, load, (4,), letters="E")
    check_close(
        LOAD,
        load,
        [3 / 6, 2 / 6, 1 / 6, 0.0],
        atol=1e-6,
        what="6 assignments: expert 0 three, expert 1 two, expert 2 one, expert 3 none",
        hint="count every (token, slot) and divide by T * K = 6, not by T = 3.",
    )


def test_expert_load_sums_to_one_with_unused_experts():
    # 40 tokens, 3 experts each, all among experts 0..4: experts 5..9 are never chosen.
    indices = jnp.asarray(np.random.default_rng(7).integers(0, 5, size=(40, 3)))
    load = expert_load(indices, 10)
    check_shape(LOAD, load, (10,), letters="E")
    check_dtype(LOAD, load, jnp.float32)
    check_close(
        LOAD,
        np.asarray(load)[5:],
        np.zeros(5),
        atol=0,
        what="experts 5..9 were never chosen, so their load is 0",
    )
    check_close(
        LOAD,
        np.asarray(load, np.float64).sum(keepdims=True),
        [1.0],
        atol=1e-5,
        what="the loads are fractions of all assignments, so they add up to 1",
    )


# ----------------------------------------------------------------------------------------------
# aux_free_bias_update
# ----------------------------------------------------------------------------------------------


BIAS = [0.5, 0.0, -0.2, 0.1]
LOADS = [0.4, 0.25, 0.1, 0.25]  # mean 0.25: expert 0 over, 2 under, 1 and 3 exactly at the mean


def test_bias_update_sign_rule():
    new = aux_free_bias_update(jnp.asarray(BIAS), jnp.asarray(LOADS), 0.01)
    check_close(
        UPDATE,
        new,
        [0.49, 0.0, -0.19, 0.1],
        atol=1e-6,
        what=f"bias {BIAS}, load {LOADS} (mean 0.25), speed 0.01",
        hint="overloaded (load above the mean) -> b - speed; underloaded -> b + speed; "
        "exactly at the mean -> unchanged. jnp.sign(mean - load) gives the direction.",
    )


def test_bias_update_uses_speed():
    new = aux_free_bias_update(jnp.asarray(BIAS), jnp.asarray(LOADS), 0.05)
    check_close(
        UPDATE,
        new,
        [0.45, 0.0, -0.15, 0.1],
        atol=1e-6,
        what="with speed 0.05 each bias moves by 0.05 (or not at all)",
        hint="the step is +-speed whatever the size of the imbalance: only its sign counts.",
    )


def test_bias_update_keeps_shape_and_dtype():
    bias = jnp.zeros((E,), jnp.float32)
    new = aux_free_bias_update(
        bias, jnp.asarray(np.random.default_rng(8).dirichlet(np.ones(E)), jnp.float32), 0.001
    )
    check_shape(UPDATE, new, (E,), letters="E")
    check_dtype(UPDATE, new, jnp.float32)
    check_finite(UPDATE, new)


def test_repeated_updates_balance_a_skewed_router():
    # Every token prefers the low-numbered experts: without balancing, expert 0 gets far more than
    # its share. Route, measure, update, 300 times, as training would after every step.
    tokens, experts, k, speed, steps = 256, 8, 2, 0.01, 300
    skew = np.linspace(1.5, -1.5, experts)[None, :]
    logits = jnp.asarray(
        np.random.default_rng(9).standard_normal((tokens, experts)) + skew, jnp.float32
    )

    def step(bias):
        indices, _ = _pair(sigmoid_topk_router(logits, bias, k))
        load = expert_load(indices, experts)
        return aux_free_bias_update(bias, load, speed), jnp.max(load) * experts - 1.0

    with explain_tracer_errors(UPDATE, "jax.jit"):
        step = jax.jit(step)
        bias, max_vio = jnp.zeros((experts,), jnp.float32), []
        for _ in range(steps):
            bias, vio = step(bias)
            max_vio.append(float(vio))
    first, last = max_vio[0], float(np.mean(max_vio[-20:]))
    if not math.isfinite(last) or last > 0.3:
        fail(
            f"{UPDATE}: after {steps} updates with speed {speed}, MaxVio (max load / mean load - 1) "
            f"should fall below 0.3; it went from {first:.2f} to {last:.2f} (mean of the last 20). "
            "Hint: an overloaded expert's bias must go down (b - speed), so it is chosen less."
        )
