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
import pytest

from minids.config import MoEConfig
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
        "select_experts": "minids.moe",
        "sequence_aux_loss": "minids.moe",
    },
)
select_experts = exercise.select_experts
sequence_aux_loss = exercise.sequence_aux_loss
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


def _pair(result, name=ROUTER):
    if not isinstance(result, tuple | list) or len(result) != 2:
        fail(
            f"{name} should return a pair (indices, gates), got {type(result).__name__}"
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


# ----------------------------------------------------------------------------------------------
# select_experts: group-limited routing
# ----------------------------------------------------------------------------------------------

SELECT, SEQ_AUX = "select_experts", "sequence_aux_loss"


def v3_config(n_groups=4, groups_per_token=2, k=2, route_scale=1.0, e=E):
    return MoEConfig(
        n_routed_experts=e,
        experts_per_token=k,
        n_groups=n_groups,
        groups_per_token=groups_per_token,
        gate="sigmoid",
        balancing="aux_free",
        route_scale=route_scale,
    )


def v2_config(n_groups=4, groups_per_token=2, k=2):
    return MoEConfig(
        n_routed_experts=E,
        experts_per_token=k,
        n_groups=n_groups,
        groups_per_token=groups_per_token,
        gate="softmax",
        balancing="none",
    )


def select_reference(scores, bias, cfg):
    """Group-limited top-k in numpy, token by token."""
    scores, bias = np.asarray(scores, np.float64), np.asarray(bias, np.float64)
    E_, G, K_ = cfg.n_routed_experts, cfg.n_groups, cfg.experts_per_token
    biased = scores + bias if cfg.uses_bias else scores.copy()
    indices, gates = [], []
    for row, s in zip(biased, scores, strict=True):
        row = row.copy()
        if G > 1:
            groups = row.reshape(G, E_ // G)
            group_score = np.sort(groups, axis=1)[:, -2:].sum(1) if cfg.uses_bias else groups.max(1)
            best = np.argsort(-group_score, kind="stable")[: cfg.groups_per_token]
            allowed = np.repeat(np.isin(np.arange(G), best), E_ // G)
            row[~allowed] = -np.inf
        chosen = np.argsort(-row, kind="stable")[:K_]
        g = s[chosen]
        if cfg.renormalizes:
            g = g / g.sum()
        indices.append(chosen)
        gates.append(g * cfg.route_scale)
    return np.asarray(indices), np.asarray(gates)


def random_scores(shape=(T, E), seed=0, gate="sigmoid"):
    logits = np.random.default_rng(seed).standard_normal(shape)
    if gate == "sigmoid":
        return jnp.asarray(1 / (1 + np.exp(-logits)), jnp.float32)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return jnp.asarray(e / e.sum(-1, keepdims=True), jnp.float32)


def select(scores, bias, cfg):
    indices, gates = _pair(select_experts(scores, bias, cfg), SELECT)
    rows, k = scores.shape[0], cfg.experts_per_token
    check_shape(SELECT, indices, (rows, k), letters="T K")
    check_shape(SELECT, gates, (rows, k), letters="T K")
    return np.asarray(indices), np.asarray(gates, np.float64)


def check_same_choice(got, want, what, hint=""):
    """Compare chosen expert sets token by token (the order within a token does not matter)."""
    got_sets, want_sets = [sorted(map(int, r)) for r in got], [sorted(map(int, r)) for r in want]
    for t, (g, w) in enumerate(zip(got_sets, want_sets, strict=True)):
        if g != w:
            fail(
                f"{SELECT}: {what}: token {t} chose experts {g}, expected {w}."
                + (f"\nHint: {hint}" if hint else "")
            )


def test_select_shapes_and_dtypes():
    indices, gates = _pair(select_experts(random_scores(), jnp.zeros(E), v3_config()), SELECT)
    check_shape(SELECT, indices, (T, 2), letters="T K")
    check_shape(SELECT, gates, (T, 2), letters="T K")
    if not np.issubdtype(np.asarray(indices).dtype, np.integer):
        fail(f"{SELECT}: indices should be integers, got {np.asarray(indices).dtype}")
    check_dtype(SELECT, gates, jnp.float32)


def test_select_with_one_group_is_the_plain_router():
    scores, bias = random_scores(seed=1), jnp.asarray(np.linspace(-0.2, 0.2, E), jnp.float32)
    cfg = v3_config(n_groups=1, groups_per_token=1)
    indices, gates = select(scores, bias, cfg)
    want_i, want_g = select_reference(scores, bias, cfg)
    check_same_choice(indices, want_i, "with n_groups = 1 it is top-k of s + bias")
    check_close(SELECT, np.sort(gates, 1), np.sort(want_g, 1), atol=1e-5, what="the gates")


@pytest.mark.points(2)
def test_select_scores_a_group_by_its_top_two():
    # 4 groups of 2. Group 0 holds one star (0.99) and a dud (0.01): sum 1.00. Groups 1 and 2
    # hold two good experts each (0.6 + 0.6 = 1.2, 0.55 + 0.55 = 1.1). With 2 groups per token,
    # V3 keeps groups 1 and 2, so the star is NOT chosen; scoring groups by their max would keep it.
    scores = jnp.asarray([[0.99, 0.01, 0.6, 0.6, 0.55, 0.55, 0.1, 0.1]], jnp.float32)
    indices, _ = select(scores, jnp.zeros(E), v3_config())
    check_same_choice(
        indices,
        [[2, 3]],
        "V3 scores each group by the sum of its 2 highest biased scores",
        hint="group 0 = (0.99, 0.01) sums to 1.00, group 1 = (0.6, 0.6) to 1.2, group 2 to 1.1: "
        "the best 2 groups are 1 and 2, and the top 2 experts inside them are 2 and 3. Choosing "
        "expert 0 means the group score was the max, or groups were not used at all.",
    )


@pytest.mark.points(2)
def test_select_v2_scores_groups_by_max_and_keeps_softmax_gates():
    scores = random_scores(seed=2, gate="softmax")
    cfg = v2_config()
    indices, gates = select(scores, jnp.zeros(E), cfg)
    want_i, want_g = select_reference(scores, jnp.zeros(E), cfg)
    check_same_choice(
        indices,
        want_i,
        "V2 (softmax, no bias) scores each group by its highest affinity",
        hint="cfg.uses_bias is False here: use the max of each group, not the sum of the top 2.",
    )
    check_close(
        SELECT,
        np.sort(gates, 1),
        np.sort(want_g, 1),
        atol=1e-5,
        what="V2 keeps the softmax values of the chosen experts (cfg.renormalizes is False)",
        hint="divide the gates by their sum only when cfg.renormalizes is True.",
    )


@pytest.mark.points(2)
def test_select_stays_within_groups_per_token():
    cfg = v3_config(n_groups=4, groups_per_token=2, k=3, e=16)
    scores = random_scores((40, 16), seed=3)
    indices, _ = select(scores, jnp.zeros(16), cfg)
    groups_used = np.asarray([len(set((row // 4).tolist())) for row in indices])
    worst = int(groups_used.argmax())
    if groups_used[worst] > 2:
        fail(
            f"{SELECT}: token {worst} chose experts {sorted(indices[worst].tolist())}, from "
            f"{groups_used[worst]} groups of 4; groups_per_token = 2 allows at most 2.\n"
            "Hint: set the biased scores of every expert outside the chosen groups to -inf "
            "before the final top-k."
        )


@pytest.mark.points(2)
def test_select_bias_decides_groups_but_not_gates():
    scores = jnp.asarray([[0.9, 0.8, 0.5, 0.5, 0.3, 0.3, 0.2, 0.2]], jnp.float32)
    bias = jnp.asarray([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0], jnp.float32)
    indices, gates = select(scores, bias, v3_config(groups_per_token=1))
    check_same_choice(
        indices,
        [[6, 7]],
        "a bias of +1 on group 3 (experts 6, 7) makes it the best group",
        hint="group scores come from the biased scores s + bias.",
    )
    check_close(
        SELECT,
        gates,
        [[0.5, 0.5]],
        atol=1e-5,
        what="the gates come from the unbiased s (0.2, 0.2), normalised: 0.5 each",
    )


def test_select_uses_route_scale():
    scores = random_scores(seed=4)
    _, gates = select(scores, jnp.zeros(E), v3_config(route_scale=2.5))
    check_close(
        SELECT,
        gates.sum(1),
        np.full(T, 2.5),
        atol=1e-5,
        what="sigmoid gates are normalised to sum 1, then multiplied by route_scale = 2.5",
    )


@pytest.mark.points(2)
def test_select_matches_numpy_reference():
    cfg = v3_config(n_groups=4, groups_per_token=2, k=3, e=16)
    scores = random_scores((12, 16), seed=5)
    bias = jnp.asarray(np.random.default_rng(5).normal(0, 0.05, 16), jnp.float32)
    indices, gates = select(scores, bias, cfg)
    want_i, want_g = select_reference(scores, bias, cfg)
    check_same_choice(indices, want_i, "compared with select_reference (in this file)")
    order, want_order = np.argsort(indices, 1), np.argsort(want_i, 1)
    check_close(
        SELECT,
        np.take_along_axis(gates, order, 1),
        np.take_along_axis(want_g, want_order, 1),
        atol=1e-5,
        what="the gates of the chosen experts",
    )


@pytest.mark.points(2)
def test_select_works_under_jit():
    cfg = v3_config()
    scores, bias = random_scores(seed=6), jnp.zeros(E)
    eager_i, _ = select(scores, bias, cfg)
    with explain_tracer_errors(SELECT, "jax.jit"):
        got = jax.jit(lambda s, b: select_experts(s, b, cfg))(scores, bias)
    indices, _ = _pair(got, SELECT)
    check_same_choice(np.asarray(indices), eager_i, "under jax.jit and without it")


def test_select_never_picks_outside_the_chosen_groups():
    # Expert 7 has the best score of all, but its group (3) holds a dud: 0.95 + 0.0 < the others.
    scores = jnp.asarray([[0.6, 0.6, 0.5, 0.5, 0.55, 0.5, 0.0, 0.95]], jnp.float32)
    indices, _ = select(scores, jnp.zeros(E), v3_config(groups_per_token=3, k=3))
    if 7 in indices[0].tolist():
        fail(
            f"{SELECT}: chose {sorted(indices[0].tolist())}, but expert 7's group (0.0, 0.95, "
            "sum 0.95) is the worst of 4, so with 3 groups per token it is out of the race."
        )


# ----------------------------------------------------------------------------------------------
# sequence_aux_loss
# ----------------------------------------------------------------------------------------------


def seq_aux_reference(scores, indices, alpha):
    scores, indices = np.asarray(scores, np.float64), np.asarray(indices)
    B_, T_, E_ = scores.shape
    K_ = indices.shape[-1]
    losses = []
    for s, idx in zip(scores, indices, strict=True):
        f = E_ / (K_ * T_) * np.bincount(idx.ravel(), minlength=E_)
        P = (s / s.sum(-1, keepdims=True)).mean(0)
        losses.append(alpha * (f * P).sum())
    return float(np.mean(losses))


def aux_inputs(seed=0, B_=3):
    scores = random_scores((B_, T, E), seed=seed)
    indices = jnp.asarray(np.argsort(-np.asarray(scores), -1)[..., :K], jnp.int32)
    return scores, indices


def test_seq_aux_is_a_scalar():
    got = sequence_aux_loss(*aux_inputs(), 1e-4)
    check_shape(SEQ_AUX, got, (), letters="")


@pytest.mark.points(2)
def test_seq_aux_hand_worked():
    # 1 sequence, 2 tokens, E = 4, K = 1, both tokens chose expert 0: f = 4 / 2 * (2, 0, 0, 0).
    # s' = (0.5, 0.5, 0, 0) and (0.5, 0, 0.5, 0), so P = (0.5, 0.25, 0.25, 0).
    scores = jnp.asarray([[[0.4, 0.4, 0.0, 0.0], [0.2, 0.0, 0.2, 0.0]]], jnp.float32)
    indices = jnp.asarray([[[0], [0]]], jnp.int32)
    got = sequence_aux_loss(scores, indices, 0.1)
    check_close(
        SEQ_AUX,
        got,
        0.1 * 4 * 0.5,
        atol=1e-6,
        what="f = (4, 0, 0, 0) and P = (0.5, 0.25, 0.25, 0), so L = 0.1 * 4 * 0.5 = 0.2",
        hint="f_i = E / (K T) * count_i; P_i is the mean over tokens of s / sum(s).",
    )


def test_seq_aux_normalises_scores_per_token():
    scores, indices = aux_inputs(seed=1, B_=1)
    got = sequence_aux_loss(scores * 0.5, indices, 1.0)
    check_close(
        SEQ_AUX,
        got,
        seq_aux_reference(scores, indices, 1.0),
        atol=1e-5,
        what="halving every affinity should change nothing: s'_{t,i} = s_{t,i} / sum_j s_{t,j}",
        hint="sigmoid scores do not sum to 1: normalise each token's row before averaging.",
    )


@pytest.mark.points(2)
def test_seq_aux_is_per_sequence_then_averaged():
    # Sequence 0 sends everything to expert 0, sequence 1 to expert 1: balanced pooled, not per sequence.
    scores = jnp.asarray(
        np.stack([np.tile([0.9, 0.1, 0.1, 0.1], (T, 1)), np.tile([0.1, 0.9, 0.1, 0.1], (T, 1))]),
        jnp.float32,
    )
    indices = jnp.asarray(np.stack([np.zeros((T, 1)), np.ones((T, 1))]), jnp.int32)
    got = sequence_aux_loss(scores, indices, 1.0)
    check_close(
        SEQ_AUX,
        got,
        seq_aux_reference(scores, indices, 1.0),
        atol=1e-5,
        what="each sequence concentrates on its own expert: f and P are per sequence (eq. 18-20)",
        hint="compute f and P for each sequence (jax.vmap, or reduce over the T axis only), "
        "then average the B losses; pooling the batch first hides this imbalance.",
    )


def test_seq_aux_perfect_balance_gives_alpha():
    # E = 4, K = 1, T = 4: token t chooses expert t, and every affinity is equal.
    scores = jnp.full((2, 4, 4), 0.3, jnp.float32)
    indices = jnp.asarray(np.broadcast_to(np.arange(4)[None, :, None], (2, 4, 1)), jnp.int32)
    check_close(
        SEQ_AUX,
        sequence_aux_loss(scores, indices, 0.01),
        0.01,
        atol=1e-7,
        what="at perfect balance f_i = 1 and P_i = 1 / E, so L = alpha",
    )


def test_seq_aux_gradient_reaches_the_scores():
    scores, indices = aux_inputs(seed=2)
    with explain_tracer_errors(SEQ_AUX, "jax.grad"):
        grad = jax.grad(lambda s: sequence_aux_loss(s, indices, 1.0))(scores)
    check_shape(SEQ_AUX, grad, scores.shape, letters="B T E")
    check_finite(SEQ_AUX, grad, what="the gradient with respect to the scores")
    if not np.abs(np.asarray(grad)).max() > 0:
        fail(f"{SEQ_AUX}: the gradient with respect to the scores is zero; it flows through P.")


def test_seq_aux_works_under_jit():
    scores, indices = aux_inputs(seed=3)
    with explain_tracer_errors(SEQ_AUX, "jax.jit"):
        got = jax.jit(sequence_aux_loss, static_argnums=2)(scores, indices, 1e-3)
    check_close(
        SEQ_AUX,
        got,
        seq_aux_reference(scores, indices, 1e-3),
        atol=1e-7,
        rtol=1e-4,
        what="under jax.jit",
    )
