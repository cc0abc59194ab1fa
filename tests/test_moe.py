"""DeepSeekMoE (minids/moe.py): the router, group limits, balance losses, the aux-free bias, capacity,
and the two dispatch paths, which must agree."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from minids.config import ModelConfig, moe_param_counts
from minids.kernels.moe_dispatch import dispatch_blocks, dispatch_ragged
from minids.moe import (
    AuxFreeBias,
    MoE,
    MoEConfig,
    aux_free_bias_update,
    dispatch_reference,
    expert_aux_loss,
    expert_capacity,
    expert_load,
    router_scores,
    select_experts,
    sequence_aux_loss,
    sigmoid_topk_router,
)

RNG = np.random.default_rng(0)


def scores_like(T: int, E: int, seed: int = 0) -> jax.Array:
    return jax.nn.sigmoid(
        jnp.asarray(np.random.default_rng(seed).standard_normal((T, E)), jnp.float32)
    )


def expert_weights(E: int, D: int, F: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    shapes = [(E, D, F), (E, D, F), (E, F, D)]
    return tuple(jnp.asarray(rng.standard_normal(s) / math.sqrt(s[1]), jnp.float32) for s in shapes)


def model_cfg(**moe_fields) -> ModelConfig:
    moe = MoEConfig(
        **{"n_routed_experts": 8, "experts_per_token": 2, "expert_ffn_dim": 16, **moe_fields}
    )
    return ModelConfig(d_model=32, n_layers=2, moe=moe)


# ---------------------------------------------------------------------------------------- router


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
@pytest.mark.parametrize("groups", [(1, 1), (4, 2)])
def test_each_token_gets_exactly_k_distinct_experts(gate, groups):
    cfg = MoEConfig(
        n_routed_experts=8,
        experts_per_token=3,
        gate=gate,
        n_groups=groups[0],
        groups_per_token=groups[1],
    )
    logits = jnp.asarray(RNG.standard_normal((50, 8)), jnp.float32)
    indices, gates = select_experts(router_scores(logits, gate), jnp.zeros(8), cfg)
    assert indices.shape == gates.shape == (50, 3)
    assert all(len(set(row)) == 3 for row in np.asarray(indices).tolist())
    assert ((0 <= np.asarray(indices)) & (np.asarray(indices) < 8)).all()


def test_group_limit_a_lone_high_score_loses_to_a_strong_group():
    # Groups of two experts: {0, 1}, {2, 3}, {4, 5}. Expert 0 scores highest, but groups are ranked by
    # the sum of their two best scores: 0.9 + 0.1 = 1.0 < 0.6 + 0.6 = 1.2, so group {2, 3} wins.
    cfg = MoEConfig(n_routed_experts=6, experts_per_token=2, n_groups=3, groups_per_token=1)
    scores = jnp.asarray([[0.9, 0.1, 0.6, 0.6, 0.2, 0.3]])
    indices, _ = select_experts(scores, jnp.zeros(6), cfg)
    assert sorted(np.asarray(indices)[0].tolist()) == [2, 3]
    unlimited, _ = select_experts(scores, jnp.zeros(6), dataclasses.replace(cfg, n_groups=1))
    assert 0 in np.asarray(unlimited)[0]


def test_selected_experts_stay_inside_the_best_groups():
    E, G, M, K = 16, 4, 2, 4
    cfg = MoEConfig(n_routed_experts=E, experts_per_token=K, n_groups=G, groups_per_token=M)
    scores = scores_like(200, E, seed=1)
    bias = jnp.asarray(RNG.normal(0, 0.1, E), jnp.float32)
    indices = np.asarray(select_experts(scores, bias, cfg)[0])
    biased = np.asarray(scores + bias[None, :]).reshape(200, G, E // G)
    group_score = np.sort(biased, axis=-1)[..., -2:].sum(-1)  # (T, G): sum of the top-2
    best_groups = np.argsort(-group_score, axis=-1)[:, :M]
    for t in range(200):
        assert set(indices[t] // (E // G)) <= set(best_groups[t]), f"token {t}"


def test_sigmoid_gates_are_nonnegative_and_sum_to_route_scale():
    cfg = MoEConfig(n_routed_experts=8, experts_per_token=3, route_scale=2.5)
    _, gates = select_experts(scores_like(64, 8), jnp.zeros(8), cfg)
    assert (np.asarray(gates) >= 0).all()
    np.testing.assert_allclose(np.asarray(gates).sum(-1), 2.5, rtol=1e-6)


def test_softmax_gates_are_top_k_probabilities_times_route_scale():
    cfg = MoEConfig(n_routed_experts=4, experts_per_token=2, gate="softmax", route_scale=16.0)
    probs = router_scores(jnp.log(jnp.asarray([[0.4, 0.1, 0.3, 0.2]])), "softmax")
    indices, gates = select_experts(probs, jnp.zeros(4), cfg)
    assert np.asarray(indices).tolist() == [[0, 2]]
    np.testing.assert_allclose(np.asarray(gates), [[16 * 0.4, 16 * 0.3]], rtol=1e-5)  # no renorm


def test_bias_changes_the_choice_but_gates_use_unbiased_scores():
    cfg = MoEConfig(n_routed_experts=4, experts_per_token=2)
    scores = jnp.asarray([[0.9, 0.8, 0.3, 0.2]])
    indices, gates = select_experts(scores, jnp.zeros(4), cfg)
    assert np.asarray(indices).tolist() == [[0, 1]]
    np.testing.assert_allclose(np.asarray(gates), [[0.9 / 1.7, 0.8 / 1.7]], rtol=1e-6)
    # s + b = [0.9, 0.8, 1.0, 0.2]: expert 2 is chosen, but its gate comes from s = 0.3, not 1.0.
    indices, gates = select_experts(scores, jnp.asarray([0.0, 0.0, 0.7, 0.0]), cfg)
    assert np.asarray(indices).tolist() == [[2, 0]]
    np.testing.assert_allclose(np.asarray(gates), [[0.3 / 1.2, 0.9 / 1.2]], rtol=1e-6)


def test_bias_that_keeps_the_choice_keeps_the_gates():
    cfg = MoEConfig(n_routed_experts=8, experts_per_token=2)
    scores = scores_like(32, 8, seed=2)
    indices, gates = select_experts(scores, jnp.zeros(8), cfg)
    tiny_bias = jnp.full((8,), 1e-3)  # the same for every expert: the ranking cannot change
    indices_b, gates_b = select_experts(scores, tiny_bias, cfg)
    np.testing.assert_array_equal(np.asarray(indices), np.asarray(indices_b))
    np.testing.assert_array_equal(np.asarray(gates), np.asarray(gates_b))


def test_sigmoid_topk_router_is_select_experts_without_groups():
    logits = jnp.asarray(RNG.standard_normal((10, 6)), jnp.float32)
    bias = jnp.asarray(RNG.normal(0, 0.3, 6), jnp.float32)
    got = sigmoid_topk_router(logits, bias, 2, route_scale=2.0)
    want = select_experts(
        jax.nn.sigmoid(logits),
        bias,
        MoEConfig(n_routed_experts=6, experts_per_token=2, route_scale=2.0),
    )
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_router_scores_and_bad_input():
    logits = jnp.asarray([[0.0, math.log(3.0)]])
    np.testing.assert_allclose(
        np.asarray(router_scores(logits, "softmax")), [[0.25, 0.75]], rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(router_scores(logits, "sigmoid")), [[0.5, 0.75]], rtol=1e-6
    )
    with pytest.raises(ValueError, match="gate"):
        router_scores(logits, "relu")
    with pytest.raises(ValueError, match="n_routed_experts"):
        select_experts(jnp.ones((3, 5)), jnp.zeros(5), MoEConfig(n_routed_experts=8))


# ------------------------------------------------------------------------------------- balancing


def test_sequence_aux_loss_matches_a_hand_computed_example():
    # Two sequences of two tokens, E = 2, K = 1, alpha = 0.01.
    # Sequence 0: both tokens pick expert 0, so f = 2/(1*2) * [2, 0] = [2, 0]; normalised scores
    #   [0.75, 0.25] and [0.5, 0.5] give P = [0.625, 0.375]; sum f P = 1.25.
    # Sequence 1: one token each, f = [1, 1]; P = [0.45, 0.55]; sum f P = 1.0.
    # The loss is alpha times their mean: 0.01 * 1.125.
    scores = jnp.asarray([[[0.6, 0.2], [0.3, 0.3]], [[0.1, 0.9], [0.8, 0.2]]])
    indices = jnp.asarray([[[0], [0]], [[1], [0]]])
    np.testing.assert_allclose(float(sequence_aux_loss(scores, indices, 0.01)), 0.01125, rtol=1e-6)
    # Over the batch as one sequence: counts [3, 1], f = [1.5, 0.5], P = [0.5375, 0.4625].
    flat = expert_aux_loss(scores.reshape(4, 2), indices.reshape(4, 1), 0.01)
    np.testing.assert_allclose(float(flat), 0.01 * (1.5 * 0.5375 + 0.5 * 0.4625), rtol=1e-6)


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_expert_aux_loss_is_alpha_for_a_uniform_balanced_router(gate):
    E, K, T = 8, 2, 32
    scores = router_scores(jnp.zeros((T, E)), gate)  # every expert equally likely
    indices = jnp.asarray((np.arange(T * K) % E).reshape(T, K))  # every expert gets T*K/E tokens
    assert float(expert_aux_loss(scores, indices, 0.003)) == pytest.approx(0.003, rel=1e-6)
    collapsed = jnp.asarray(np.tile([0, 1], (T, 1)))  # every token to experts 0 and 1
    assert float(expert_aux_loss(scores, collapsed, 0.003)) == pytest.approx(0.003, rel=1e-6)
    peaked = router_scores(jnp.asarray(np.tile([3.0, 3.0] + [0.0] * (E - 2), (T, 1))), gate)
    assert float(expert_aux_loss(peaked, collapsed, 0.003)) > 1.3 * 0.003  # busy and preferred


def test_aux_free_update_follows_the_sign_rule():
    bias = jnp.asarray([0.5, 0.0, -0.2, 0.1])
    load = jnp.asarray([0.4, 0.25, 0.1, 0.25])  # mean 0.25: over, at, under, at
    new = aux_free_bias_update(bias, load, 0.01)
    np.testing.assert_allclose(np.asarray(new), [0.49, 0.0, -0.19, 0.1], rtol=1e-6)
    grad = jax.grad(lambda b: jnp.sum(aux_free_bias_update(b, load, 0.01) ** 2))(bias)
    assert not np.asarray(grad).any()  # outside the gradient


def test_aux_free_updates_move_a_skewed_load_toward_balance():
    E, K, T = 8, 2, 256
    skew = np.linspace(1.5, -1.5, E)  # expert 0 is preferred by everyone, expert 7 by no one
    scores = jax.nn.sigmoid(jnp.asarray(RNG.standard_normal((T, E)) + skew[None, :], jnp.float32))
    cfg = MoEConfig(n_routed_experts=E, experts_per_token=K)

    @jax.jit
    def step(bias, _):
        load = expert_load(select_experts(scores, bias, cfg)[0], E)
        return aux_free_bias_update(bias, load, 0.01), jnp.max(load) * E - 1

    _, max_vio = jax.lax.scan(step, jnp.zeros(E), length=300)
    max_vio = np.asarray(max_vio)
    assert max_vio[0] > 1.0, max_vio[0]
    assert max_vio[-20:].mean() < 0.25, max_vio[-20:]


def test_expert_load_and_capacity():
    np.testing.assert_allclose(
        np.asarray(expert_load(jnp.asarray([[0, 1], [0, 2]]), 4)), [0.5, 0.25, 0.25, 0.0]
    )
    assert expert_capacity(100, MoEConfig()) is None
    assert expert_capacity(100, MoEConfig(capacity_factor=1.0)) == 25  # 1.0 * 100 * 2 / 8
    assert expert_capacity(10, MoEConfig(capacity_factor=1.1)) == 3  # ceil(2.75)


# -------------------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize(
    "dispatch",
    [dispatch_reference, dispatch_blocks, dispatch_ragged],
    ids=["reference", "blocks", "ragged"],
)
def test_capacity_drops_exactly_the_hand_worked_assignments(dispatch):
    # T = 6, K = 1, E = 2, capacity factor 1.0: each expert keeps ceil(1.0 * 6 * 1 / 2) = 3.
    # Expert 0 is chosen by tokens 0, 1, 2, 3, 5: it keeps the first three and drops 3 and 5.
    E, D, F = 2, 4, 3
    x = jnp.asarray(RNG.standard_normal((6, D)), jnp.float32)
    indices = jnp.asarray([[0], [0], [0], [0], [1], [0]])
    gates = jnp.ones((6, 1))
    weights = expert_weights(E, D, F)
    capacity = expert_capacity(
        6, MoEConfig(n_routed_experts=E, experts_per_token=1, capacity_factor=1.0)
    )
    dispatch = jax.jit(dispatch, static_argnames="capacity")
    y, kept = dispatch(x, indices, gates, *weights, capacity=capacity)
    assert capacity == 3
    assert np.asarray(kept)[:, 0].tolist() == [True, True, True, False, True, False]
    full, _ = dispatch(x, indices, gates, *weights)
    np.testing.assert_allclose(
        np.asarray(y)[[0, 1, 2, 4]], np.asarray(full)[[0, 1, 2, 4]], atol=1e-6
    )
    assert not np.asarray(y)[[3, 5]].any()  # a dropped assignment contributes nothing
    # K = 2, E = 3, T = 3: capacity ceil(3 * 2 / 3) = 2. Expert 0 is chosen by tokens 0, 1, 2 and
    # drops token 2's first slot; expert 1 (tokens 0, 2) and expert 2 (token 1) keep everything.
    x3 = x[:3]
    y2, kept2 = dispatch(
        x3,
        jnp.asarray([[0, 1], [0, 2], [0, 1]]),
        jnp.ones((3, 2)),
        *expert_weights(3, D, F),
        capacity=2,
    )
    assert np.asarray(kept2).tolist() == [[True, True], [True, True], [False, True]]


def test_reference_dispatch_matches_a_loop_over_tokens():
    T, K, E, D, F = 5, 2, 4, 6, 3
    x = RNG.standard_normal((T, D))
    indices = np.asarray([[0, 3], [1, 2], [3, 0], [2, 1], [0, 1]])
    gates = RNG.uniform(0, 1, (T, K))
    w_gate, w_up, w_down = (np.asarray(w, np.float64) for w in expert_weights(E, D, F))
    want = np.zeros((T, D))
    for t in range(T):
        for k in range(K):
            e = indices[t, k]
            gate_h = x[t] @ w_gate[e]
            hidden = gate_h / (1 + np.exp(-gate_h)) * (x[t] @ w_up[e])
            want[t] += gates[t, k] * hidden @ w_down[e]
    got, _ = dispatch_reference(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(indices),
        jnp.asarray(gates, jnp.float32),
        *expert_weights(E, D, F),
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def _relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


@functools.cache
def _dispatch_loss(dispatch, with_capacity: bool):
    """Jitted value and gradients (x, gates, weights) of a squared error of the dispatch output
    (its gradient depends on the output, as a next layer's does)."""

    def loss(x, gates, w_gate, w_up, w_down, indices, target, capacity):
        y, kept = dispatch(
            x, indices, gates, w_gate, w_up, w_down, capacity=capacity if with_capacity else None
        )
        return 0.5 * jnp.sum((y - target) ** 2), kept

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))


@settings(max_examples=6)
@given(
    n_experts=st.sampled_from([4, 6]),
    top_k=st.integers(1, 3),
    capacity_factor=st.sampled_from([None, 0.5, 1.25]),
    seed=st.integers(0, 1000),
)
def test_dispatch_kernels_agree_with_the_reference_in_value_and_gradient(
    n_experts, top_k, capacity_factor, seed
):
    """The CPU kernel (blocks) and the GPU/TPU kernel (ragged_dot, run here on the CPU)."""
    T, D, F = 16, 8, 4
    cfg = MoEConfig(
        n_routed_experts=n_experts, experts_per_token=top_k, capacity_factor=capacity_factor
    )
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)
    indices, gates = select_experts(scores_like(T, n_experts, seed), jnp.zeros(n_experts), cfg)
    args = (
        x,
        gates,
        *expert_weights(n_experts, D, F, seed),
        indices,
        jnp.asarray(rng.standard_normal((T, D)), jnp.float32),
        jnp.int32(expert_capacity(T, cfg) or 0),
    )
    with_capacity = capacity_factor is not None
    (value_ref, kept_ref), grads_ref = _dispatch_loss(dispatch_reference, with_capacity)(*args)
    for kernel in (dispatch_blocks, dispatch_ragged):
        (value_fast, kept_fast), grads_fast = _dispatch_loss(kernel, with_capacity)(*args)
        assert _relative_error(value_fast, value_ref) < 1e-5, kernel.__name__
        for name, g_fast, g_ref in zip(
            ["x", "gates", "w_gate", "w_up", "w_down"], grads_fast, grads_ref, strict=True
        ):
            assert _relative_error(g_fast, g_ref) < 1e-5, f"{kernel.__name__}: d{name}"
        np.testing.assert_array_equal(np.asarray(kept_fast), np.asarray(kept_ref))
    if capacity_factor == 0.5:
        assert not np.asarray(kept_ref).all()  # some assignments were dropped


@pytest.mark.parametrize(
    "blocks, case",
    [
        ((64, 8, 6), "every pair in its expert's slots"),
        ((8, 4, 8), "slots, then one round of overflow blocks"),
        ((8, 4, 3), "too much overflow for one round of R blocks: more rounds"),
    ],
)
def test_block_dispatch_agrees_with_the_reference_in_each_of_its_branches(blocks, case):
    T, K, E, D, F = 32, 2, 6, 8, 4
    C, b, R = blocks
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)
    # Skewed routing: expert 0 is everyone's first choice, the second is spread over the rest.
    indices = jnp.asarray(np.stack([np.zeros(T, int), 1 + rng.integers(0, E - 1, T)], axis=1))
    gates = jnp.asarray(rng.uniform(0.1, 1.0, (T, K)), jnp.float32)
    counts = np.bincount(np.asarray(indices).ravel(), minlength=E)
    blocks_needed = int(np.sum(-(-np.maximum(counts - C, 0) // b)))
    assert (counts.max() <= C) == (case.startswith("every")), counts
    assert (blocks_needed > R) == ("more rounds" in case), (blocks_needed, R)
    target = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)
    weights = expert_weights(E, D, F)

    def loss(dispatch, x, gates, *weights):  # needs the output's value, as a next layer does
        return jnp.sum((dispatch(x, indices, gates, *weights)[0] - target) ** 2)

    fast = functools.partial(dispatch_blocks, blocks=blocks)
    got = jax.jit(jax.value_and_grad(functools.partial(loss, fast), argnums=(0, 1, 2, 3, 4)))
    want = jax.jit(
        jax.value_and_grad(functools.partial(loss, dispatch_reference), argnums=(0, 1, 2, 3, 4))
    )
    (v_got, g_got), (v_want, g_want) = got(x, gates, *weights), want(x, gates, *weights)
    assert _relative_error(v_got, v_want) < 1e-5, case
    for name, a, b_ in zip(["x", "gates", "w_gate", "w_up", "w_down"], g_got, g_want, strict=True):
        assert _relative_error(a, b_) < 1e-5, f"{case}: d{name}"


# ----------------------------------------------------------------------------------------- layer


@pytest.mark.parametrize("balancing", ["aux_free", "aux_loss", "aux_free+seq_aux_loss"])
def test_moe_layer_output_and_stats(balancing):
    model = MoE(model_cfg(balancing=balancing, aux_loss_alpha=0.01), rngs=nnx.Rngs(0))
    x = jnp.asarray(RNG.standard_normal((2, 6, 32)), jnp.float32)
    y, stats = nnx.jit(lambda m, x: m(x))(model, x)
    assert y.shape == (2, 6, 32) and y.dtype == jnp.float32
    load = np.asarray(stats["load"])
    assert load.shape == (8,) and load.sum() == pytest.approx(1.0)
    assert float(stats["max_vio"]) == pytest.approx(load.max() / load.mean() - 1, rel=1e-5)
    assert float(stats["dropped_frac"]) == 0.0
    if balancing == "aux_free":
        assert float(stats["aux_loss"]) == 0.0
    else:
        assert 0.005 < float(stats["aux_loss"]) < 0.08  # alpha times a number near 1


def test_moe_fast_and_reference_layers_agree_and_train_under_jit():
    cfg = model_cfg(capacity_factor=1.0, n_shared_experts=2)
    fast, reference = MoE(cfg, rngs=nnx.Rngs(3)), MoE(cfg, rngs=nnx.Rngs(3))
    reference.moe_cfg = dataclasses.replace(cfg.moe, dispatch="reference")
    x = jnp.asarray(RNG.standard_normal((2, 8, 32)), jnp.float32)

    @nnx.jit
    def grads(model, x):
        return nnx.grad(lambda m: jnp.sum(m(x)[0] ** 2))(model)

    g_fast, g_ref = grads(fast, x), grads(reference, x)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref), strict=True):
        assert _relative_error(a, b) < 1e-4
    dropped = [
        float(nnx.jit(lambda m, x: m(x)[1])(m, x)["dropped_frac"]) for m in (fast, reference)
    ]
    assert dropped[0] == dropped[1]


def test_bias_is_state_but_not_a_parameter():
    model = MoE(model_cfg(), rngs=nnx.Rngs(0))
    assert isinstance(model.aux_free_bias, AuxFreeBias)
    assert not isinstance(model.aux_free_bias, nnx.Param)
    flat_state = {".".join(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(model))}
    flat_params = {".".join(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert "aux_free_bias" in flat_state and "aux_free_bias" not in flat_params
    optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
    model.aux_free_bias[...] = jnp.full((8,), 0.5)
    x = jnp.asarray(RNG.standard_normal((2, 4, 32)), jnp.float32)

    @nnx.jit
    def train_step(model, optimizer, x):
        (_, stats), grads = nnx.value_and_grad(
            lambda m: (jnp.sum(m(x)[0] ** 2), m(x)[1]), has_aux=True
        )(model)
        optimizer.update(model, grads)
        model.update_bias(stats["load"])
        return grads

    grads = train_step(model, optimizer, x)
    assert "aux_free_bias" not in {".".join(map(str, k)) for k, _ in nnx.to_flat_state(grads)}
    moved = np.asarray(model.aux_free_bias[...]) - 0.5  # by the update alone: 0 or +-gamma
    assert np.all(np.isclose(np.abs(moved), 1e-3) | np.isclose(moved, 0.0, atol=1e-7)), moved
    assert np.abs(moved).max() > 0  # an untrained router is not perfectly balanced


def test_checkpoints_save_and_restore_the_bias(tmp_path):
    import orbax.checkpoint as ocp

    model = MoE(model_cfg(), rngs=nnx.Rngs(0))
    model.aux_free_bias[...] = jnp.arange(8, dtype=jnp.float32) / 100
    saved = np.asarray(model.aux_free_bias[...])
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", {"model": nnx.state(model)})
    checkpointer.wait_until_finished()
    fresh = MoE(model_cfg(), rngs=nnx.Rngs(1))
    restored = checkpointer.restore(tmp_path / "state", {"model": nnx.state(fresh)})
    nnx.update(fresh, restored["model"])
    np.testing.assert_array_equal(np.asarray(fresh.aux_free_bias[...]), saved)
    assert isinstance(fresh.aux_free_bias, AuxFreeBias)


def test_update_bias_is_a_no_op_without_aux_free():
    model = MoE(model_cfg(balancing="aux_loss"), rngs=nnx.Rngs(0))
    model.update_bias(jnp.asarray([0.5, 0.5, 0, 0, 0, 0, 0, 0]))
    assert not np.asarray(model.aux_free_bias[...]).any()


def test_moe_runs_in_bfloat16():
    cfg = dataclasses.replace(model_cfg(), dtype="bfloat16")
    model32, model16 = MoE(model_cfg(), rngs=nnx.Rngs(0)), MoE(cfg, rngs=nnx.Rngs(0))
    x = jnp.asarray(RNG.standard_normal((2, 4, 32)), jnp.float32)
    y16, _ = nnx.jit(lambda m, x: m(x))(model16, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    assert model16.expert_centroids[...].dtype == jnp.float32  # the gate keeps full precision
    assert _relative_error(y16, nnx.jit(lambda m, x: m(x))(model32, x)[0]) < 0.05


def test_param_counts_match_the_module():
    cfg = model_cfg(n_routed_experts=8, n_shared_experts=2, experts_per_token=3)
    model = MoE(cfg, rngs=nnx.Rngs(0))
    total, activated = moe_param_counts(cfg)
    assert total == sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    D, F = 32, 16
    assert activated == 8 * D + (2 + 3) * 3 * D * F


def test_bad_layer_input_raises():
    model = MoE(model_cfg(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="B, T, D"):
        model(jnp.zeros((4, 32 + 1)))
    with pytest.raises(TypeError, match="cfg.moe"):
        MoE(ModelConfig(), rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(experts_per_token=9), "experts_per_token"),
        (dict(n_groups=3), "n_groups"),
        (dict(n_groups=2, groups_per_token=3), "groups_per_token"),
        (dict(n_groups=4, groups_per_token=1, experts_per_token=3), "experts_per_token"),
        (dict(capacity_factor=0.0), "capacity_factor"),
        (dict(capacity_factor=-1.0), "capacity_factor"),
        (dict(gate="relu"), "gate"),
        (dict(balancing="switch"), "balancing"),
        (dict(dispatch="megablocks"), "dispatch"),
        (dict(n_routed_experts=0), "n_routed_experts"),
        (dict(n_shared_experts=-1), "n_shared_experts"),
        (dict(expert_ffn_dim=2.5), "expert_ffn_dim"),
        (dict(route_scale=0), "route_scale"),
        (dict(aux_loss_alpha=float("nan")), "aux_loss_alpha"),
        (dict(bias_update_speed=-0.1), "bias_update_speed"),
        (dict(n_dense_layers=True), "n_dense_layers"),
    ],
)
def test_bad_configs_raise_naming_the_field(fields, named):
    with pytest.raises(ValueError, match=named):
        MoEConfig(**{"n_routed_experts": 8, **fields})
