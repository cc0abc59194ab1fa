"""Grader for exercise 02 (multi-head latent attention): `pytest exercises/test_02_mla.py`.

Each test checks one property of your `latent_kv` or `absorbed_scores` in `exercises/02_mla.py` and,
when it fails, says what it expected and what it got. With `MINIDS_EXERCISES=solutions` the same
tests grade minids' own implementations (the answer key).

The expected numbers are worked out here with a few lines of numpy, never by calling the answer key,
so reading a test tells you what the function must do.
"""

from __future__ import annotations

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
    Path(__file__).with_name("02_mla.py"),
    solutions={
        "latent_kv": "minids.mla",
        "absorbed_scores": "minids.mla",
        "absorbed_attention": "minids.mla",
    },
)
latent_kv = exercise.latent_kv
absorbed_scores = exercise.absorbed_scores
absorbed_attention = exercise.absorbed_attention

LATENT, ABSORBED = "latent_kv", "absorbed_scores"
B, T, S, D, N, C, R, HN = 2, 5, 7, 12, 3, 6, 4, 8


def randn(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def rope_np(x, positions, theta=10_000.0):
    """RoPE on the last axis of x (..., R), rotate-half pairs (i, i + R/2), in numpy."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-np.arange(0, 2 * half, 2) / (2 * half))
    angles = positions[..., None].astype(np.float64) * inv_freq
    cos, sin = np.cos(angles), np.sin(angles)
    x1, x2 = x[..., :half].astype(np.float64), x[..., half:].astype(np.float64)
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def latent_inputs(seed=0):
    x, w = randn((B, T, D), seed), randn((D, C + R), seed + 1) / np.sqrt(D)
    scale = 1.0 + 0.1 * randn((C,), seed + 2)
    positions = np.broadcast_to(np.arange(T) + 3, (B, T)).astype(np.int32)
    return x, w, scale, positions


def call_latent(x, w, scale, positions, eps=1e-6):
    result = latent_kv(
        jnp.asarray(x), jnp.asarray(w), jnp.asarray(scale), jnp.asarray(positions), C, 10_000.0, eps
    )
    if not isinstance(result, tuple | list) or len(result) != 2:
        fail(f"{LATENT} should return a pair (c_kv, k_rope), got {type(result).__name__}")
    c_kv, k_rope = result
    check_shape(LATENT, c_kv, (x.shape[0], x.shape[1], C), letters="B T C")
    check_shape(LATENT, k_rope, (x.shape[0], x.shape[1], R), letters="B T R")
    return np.asarray(c_kv, np.float64), np.asarray(k_rope, np.float64)


def score_inputs(seed=10):
    return (
        randn((B, T, N, HN), seed),
        randn((B, T, N, R), seed + 1),
        randn((B, S, C), seed + 2),
        randn((B, S, R), seed + 3),
        randn((C, N, HN), seed + 4) / np.sqrt(C),
    )


def naive_np(q_nope, q_rope, c_kv, k_rope, w_uk, scale, nope=True, rope=True):
    """Rebuild every key, then dot products: the obvious computation, in float64."""
    k_nope = np.einsum("bsc,cnh->bsnh", c_kv, w_uk.astype(np.float64))
    out = np.zeros((q_nope.shape[0], q_nope.shape[2], q_nope.shape[1], c_kv.shape[1]))
    if nope:
        out += np.einsum("btnh,bsnh->bnts", q_nope, k_nope)
    if rope:
        out += np.einsum("btnr,bsr->bnts", q_rope, k_rope)
    return scale * out


def call_absorbed(*args):
    got = absorbed_scores(*[jnp.asarray(a) for a in args[:5]], args[5])
    check_shape(
        ABSORBED,
        got,
        (args[0].shape[0], args[0].shape[2], args[0].shape[1], args[2].shape[1]),
        letters="B N T S",
    )
    return got


# ----------------------------------------------------------------------------------------------
# latent_kv
# ----------------------------------------------------------------------------------------------


def test_latent_shapes_hold_exactly_c_plus_r_numbers_per_token():
    c_kv, k_rope = call_latent(*latent_inputs())
    per_token = (c_kv.size + k_rope.size) / (B * T)
    if per_token != C + R:
        fail(f"{LATENT}: the cache should hold C + R = {C + R} numbers per token, got {per_token}")


def test_latent_is_the_rms_normalised_first_c_channels():
    x, w, scale, positions = latent_inputs()
    c_kv, _ = call_latent(x, w, np.ones(C, np.float32), positions)
    kv = np.einsum("btd,dk->btk", x.astype(np.float64), w)
    latent = kv[..., :C]
    want = latent / np.sqrt(np.mean(latent**2, axis=-1, keepdims=True) + 1e-6)
    check_close(
        LATENT,
        c_kv,
        want,
        atol=1e-4,
        what="c_kv with norm_scale = 1",
        hint="c_kv = kv[..., :C] / sqrt(mean(kv[..., :C]**2 over the C channels) + eps), "
        "with kv = x @ w_dkv; the mean runs over the last axis only.",
    )


def test_norm_scale_multiplies_the_latent():
    x, w, scale, positions = latent_inputs()
    plain, _ = call_latent(x, w, np.ones(C, np.float32), positions)
    scaled, _ = call_latent(x, w, scale, positions)
    check_close(
        LATENT,
        scaled,
        plain * scale.astype(np.float64),
        atol=1e-4,
        what="c_kv with a norm_scale against c_kv with norm_scale = 1, times norm_scale",
        hint="multiply the normalised latent by norm_scale, channel by channel.",
    )


def test_rope_key_is_unrotated_at_position_zero():
    x, w, scale, _ = latent_inputs()
    _, k_rope = call_latent(x, w, scale, np.zeros((B, T), np.int32))
    want = np.einsum("btd,dk->btk", x.astype(np.float64), w)[..., C:]
    check_close(
        LATENT,
        k_rope,
        want,
        atol=1e-4,
        what="k_rope at position 0 (no rotation)",
        hint="k_rope is the last R channels of x @ w_dkv (after the C latent channels); it "
        "is not normalised.",
    )


def test_rope_key_is_rotated_by_its_position():
    x, w, scale, positions = latent_inputs()
    _, k_rope = call_latent(x, w, scale, positions)
    raw = np.einsum("btd,dk->btk", x.astype(np.float64), w)[..., C:]
    check_close(
        LATENT,
        k_rope,
        rope_np(raw, positions),
        atol=1e-4,
        what="k_rope at positions 3..7",
        hint="rotate the last R channels with RoPE (pairs (i, i + R/2)) at each token's "
        "position: apply_rope(k[:, :, None, :], positions)[:, :, 0, :].",
    )


def test_rope_scores_depend_only_on_the_position_difference():
    x, w, scale, _ = latent_inputs()
    near = np.broadcast_to(np.arange(T), (B, T)).astype(np.int32)
    _, k_a = call_latent(x, w, scale, near)
    _, k_b = call_latent(x, w, scale, near + 20)
    dots_a = np.einsum("btr,bsr->bts", k_a, k_a)
    dots_b = np.einsum("btr,bsr->bts", k_b, k_b)
    check_close(
        LATENT,
        dots_b,
        dots_a,
        atol=1e-3,
        what="k_rope(m) . k_rope(n) with every position shifted by 20",
        hint="a rotation by each position's angle keeps dot products a function of m - n.",
    )


def test_latent_kv_works_under_jit():
    x, w, scale, positions = latent_inputs()
    eager = call_latent(x, w, scale, positions)
    with explain_tracer_errors(LATENT, "jax.jit"):
        jitted = jax.jit(latent_kv, static_argnums=(4,))(
            jnp.asarray(x), jnp.asarray(w), jnp.asarray(scale), jnp.asarray(positions), C
        )
    for name, got, want in zip(("c_kv", "k_rope"), jitted, eager, strict=True):
        check_close(LATENT, got, want, atol=1e-5, what=f"{name} under jax.jit against eager")


def test_latent_kv_keeps_the_input_dtype():
    x, w, scale, positions = latent_inputs()
    c_kv, k_rope = latent_kv(
        jnp.asarray(x, jnp.bfloat16),
        jnp.asarray(w, jnp.bfloat16),
        jnp.asarray(scale),
        jnp.asarray(positions),
        C,
    )
    check_dtype(LATENT, c_kv, jnp.bfloat16, hint="cast the normalised latent back to x.dtype.")
    check_dtype(LATENT, k_rope, jnp.bfloat16)


# ----------------------------------------------------------------------------------------------
# absorbed_scores
# ----------------------------------------------------------------------------------------------


def test_absorbed_scores_shape_and_dtype():
    got = call_absorbed(*score_inputs(), 0.25)
    check_dtype(ABSORBED, got, jnp.float32)


def test_absorbed_scores_equal_the_naive_scores():
    args = score_inputs()
    got = np.asarray(call_absorbed(*args, 0.25), np.float64)
    want = naive_np(*args, 0.25)
    if np.allclose(got, want, atol=1e-4):
        return
    # Say which term is off.
    hints = {
        "the scale is missing": naive_np(*args, 1.0),
        "only the latent (nope) term is there; add q_rope . k_rope": naive_np(
            *args, 0.25, rope=False
        ),
        "only the rope term is there; add the latent term": naive_np(*args, 0.25, nope=False),
    }
    for hint, wrong in hints.items():
        if np.allclose(got, wrong, atol=1e-4):
            fail(f"{ABSORBED}: differs from the naive scores: {hint}.")
    check_close(
        ABSORBED,
        got,
        want,
        atol=1e-4,
        what="against the naive scores (rebuild keys, then q . k)",
        hint="q_latent = einsum('BTNH,CNH->BTNC', q_nope, w_uk), then "
        "einsum('BTNC,BSC->BNTS', q_latent, c_kv) + einsum('BTNR,BSR->BNTS', q_rope, k_rope), "
        "all times scale.",
    )


def test_absorbed_scores_by_hand():
    # One batch, one query, two cached tokens, one head; C = 2, Hn = 1, R = 2.
    # w_uk = [[1], [2]]: q_latent = q_nope * [1, 2] = [3, 6] for q_nope = 3.
    # token 0: c = [1, 0], k_rope = [0, 1]; q_rope = [1, 1]: 3 + 1 = 4
    # token 1: c = [0, 1], k_rope = [1, 1]:                 6 + 2 = 8;  times scale 0.5 -> [2, 4]
    q_nope = np.array([[[[3.0]]]], np.float32)
    q_rope = np.array([[[[1.0, 1.0]]]], np.float32)
    c_kv = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)
    k_rope = np.array([[[0.0, 1.0], [1.0, 1.0]]], np.float32)
    w_uk = np.array([[[1.0]], [[2.0]]], np.float32)
    got = call_absorbed(q_nope, q_rope, c_kv, k_rope, w_uk, 0.5)
    check_close(
        ABSORBED,
        got,
        [[[[2.0, 4.0]]]],
        atol=1e-5,
        what="the hand-worked example",
        hint="scores = scale * (q_latent . c_kv + q_rope . k_rope) with q_latent[c] = "
        "sum_h q_nope[h] * w_uk[c, n, h].",
    )


def test_scale_multiplies_both_terms():
    args = score_inputs(seed=20)
    one = np.asarray(call_absorbed(*args, 1.0), np.float64)
    third = np.asarray(call_absorbed(*args, 1 / 3), np.float64)
    check_close(
        ABSORBED,
        third,
        one / 3,
        atol=1e-4,
        what="scores at scale 1/3 against scale 1, / 3",
        hint="multiply the sum of both terms by scale.",
    )


def test_absorbed_scores_gradient_matches_the_naive_one():
    args = [jnp.asarray(a) for a in score_inputs(seed=30)]
    probe = jnp.asarray(randn((B, N, T, S), 40))

    def naive(q_nope, q_rope, c_kv, k_rope, w_uk):
        k_nope = jnp.einsum("BSC,CNH->BSNH", c_kv, w_uk)
        return 0.25 * (
            jnp.einsum("BTNH,BSNH->BNTS", q_nope, k_nope)
            + jnp.einsum("BTNR,BSR->BNTS", q_rope, k_rope)
        )

    with explain_tracer_errors(ABSORBED, "jax.grad"):
        got = jax.grad(lambda *a: jnp.sum(absorbed_scores(*a, 0.25) * probe), argnums=(0, 2, 4))(
            *args
        )
    want = jax.grad(lambda *a: jnp.sum(naive(*a) * probe), argnums=(0, 2, 4))(*args)
    for name, g, w in zip(("q_nope", "c_kv", "w_uk"), got, want, strict=True):
        check_close(ABSORBED, g, np.asarray(w), atol=1e-4, what=f"gradient with respect to {name}")


def test_absorbed_scores_work_under_jit():
    args = score_inputs(seed=50)
    eager = np.asarray(call_absorbed(*args, 0.25))
    with explain_tracer_errors(ABSORBED, "jax.jit"):
        jitted = jax.jit(absorbed_scores, static_argnums=(5,))(
            *[jnp.asarray(a) for a in args], 0.25
        )
    check_close(ABSORBED, jitted, eager, atol=1e-5, what="under jax.jit against eager")


# ----------------------------------------------------------------------------------------------
# absorbed_attention
# ----------------------------------------------------------------------------------------------

ATTEND, HV = "absorbed_attention", 5


def attention_inputs(seed=20):
    return (*score_inputs(seed), randn((C, N, HV), seed + 5) / np.sqrt(C))


def causal_mask(offset=S - T):
    """Queries at slots offset .. offset + T - 1 of the S cached tokens: (1, T, S)."""
    return (np.arange(S)[None, :] <= offset + np.arange(T)[:, None])[None]


def rebuilt_np(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, mask, scale):
    """The naive way, float64: scores from rebuilt keys, then the weights times rebuilt values."""
    scores = naive_np(q_nope, q_rope, c_kv, k_rope, w_uk, scale)  # (B, N, T, S)
    scores = np.where(np.asarray(mask)[:, None], scores, -1e30)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    v = np.einsum("bsc,cnh->bsnh", c_kv, np.asarray(w_uv, np.float64))  # every value, per head
    return np.einsum("bnts,bsnh->btnh", p, v)


def call_attend(*args):
    got = absorbed_attention(*[jnp.asarray(a) for a in args[:7]], args[7])
    check_shape(ATTEND, got, (B, T, N, HV), letters="B T N Hv")
    return got


def test_attend_shape_and_dtype():
    got = call_attend(*attention_inputs(), causal_mask(), 0.3)
    check_dtype(ATTEND, got, jnp.float32)


@pytest.mark.points(2)
def test_attend_equals_attention_over_rebuilt_keys_and_values():
    args = (*attention_inputs(21), causal_mask(), 0.3)
    check_close(
        ATTEND,
        call_attend(*args),
        rebuilt_np(*args),
        atol=1e-5,
        rtol=1e-4,
        what="compared with rebuilding every key and value (rebuilt_np in this file)",
        hint="after the softmax, sum the latents c_kv with the weights (B, T, N, C), then apply "
        "W_UV per head: einsum('BTNC,CNH->BTNH'). The value width is Hv, not Hn.",
    )


@pytest.mark.points(2)
def test_attend_masked_slots_have_no_effect():
    q_nope, q_rope, c_kv, k_rope, w_uk, w_uv = attention_inputs(22)
    mask = causal_mask(
        offset=1
    )  # slots 6 and beyond are never readable... and slot 7 does not exist
    changed_c = np.asarray(c_kv).copy()
    changed_c[:, -1] += 100.0  # the last slot is masked for every query
    mask = mask & (np.arange(S) < S - 1)[None, None, :]
    out = call_attend(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, mask, 0.3)
    changed = call_attend(q_nope, q_rope, changed_c, k_rope, w_uk, w_uv, mask, 0.3)
    check_close(
        ATTEND,
        changed,
        out,
        atol=1e-5,
        what="changing a latent in a slot the mask forbids changed the output",
        hint="set the scores to a very negative number where mask is False (mask[:, None] adds "
        "the heads axis), before the softmax.",
    )


def test_attend_fully_masked_row_is_finite():
    mask = causal_mask().copy()
    mask[:, 0] = False
    got = call_attend(*attention_inputs(23), mask, 0.3)
    check_finite(ATTEND, got, hint="mask with a large finite negative number, not -inf.")


def test_attend_gradient_matches_the_naive_one():
    q_nope, q_rope, c_kv, k_rope, w_uk, w_uv = (jnp.asarray(a) for a in attention_inputs(24))
    mask = jnp.asarray(causal_mask())

    def naive(q):
        k_nope = jnp.einsum("BSC,CNH->BSNH", c_kv, w_uk)
        scores = jnp.einsum("BTNH,BSNH->BNTS", q, k_nope) + jnp.einsum(
            "BTNR,BSR->BNTS", q_rope, k_rope
        )
        scores = jnp.where(mask[:, None], scores * 0.3, -1e30)
        v = jnp.einsum("BSC,CNH->BSNH", c_kv, w_uv)
        return jnp.sum(jnp.einsum("BNTS,BSNH->BTNH", jax.nn.softmax(scores, -1), v) ** 2)

    def absorbed(q):
        return jnp.sum(absorbed_attention(q, q_rope, c_kv, k_rope, w_uk, w_uv, mask, 0.3) ** 2)

    with explain_tracer_errors(ATTEND, "jax.grad"):
        got = jax.jit(jax.grad(absorbed))(q_nope)
    check_close(
        ATTEND,
        got,
        jax.jit(jax.grad(naive))(q_nope),
        atol=1e-4,
        rtol=1e-4,
        what="the gradient with respect to q_nope, compared with the naive computation's",
    )


def test_attend_works_under_jit():
    args = (*(jnp.asarray(a) for a in attention_inputs(25)), jnp.asarray(causal_mask()))
    eager = call_attend(*args, 0.3)
    with explain_tracer_errors(ATTEND, "jax.jit"):
        got = jax.jit(absorbed_attention, static_argnums=7)(*args, 0.3)
    check_close(ATTEND, got, eager, atol=1e-5, rtol=1e-5, what="under jax.jit and without it")
