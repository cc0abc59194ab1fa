"""Grader for exercise 00 (RoPE and causal self-attention): `pytest exercises/test_00_attention.py`.

Each test checks one property of your `apply_rope` or `causal_self_attention` in
`exercises/00_attention.py` and, when it fails, says what it expected and what it got. With
`MINIDS_EXERCISES=solutions` the same tests grade minids' own implementations (the answer key).

The expected numbers are worked out here from first principles (a 2D rotation, a softmax written
with numpy), never by calling the answer key, so reading a test tells you what the function must do.
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
    load_exercise,
)

exercise = load_exercise(
    Path(__file__).with_name("00_attention.py"),
    solutions={"apply_rope": "minids.layers", "causal_self_attention": "minids.attention"},
)
apply_rope = exercise.apply_rope
causal_self_attention = exercise.causal_self_attention

ROPE, ATTENTION = "apply_rope", "causal_self_attention"
SHAPE = "B T N H"
# Most checks use one small shape with a different size on every axis, so that a mixed-up axis
# shows in the shapes, and JAX compiles each operation once for all of them.
B, T, N, H = 2, 5, 3, 8


def random_array(shape=(B, T, N, H), seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def positions_from(rows):
    return jnp.asarray(rows, dtype=jnp.int32)


def counting_positions():
    """[[0, 1, ..., T-1], ...]: the positions of an ordinary batch of sequences, (B, T)."""
    return positions_from(np.broadcast_to(np.arange(T), (B, T)))


# ----------------------------------------------------------------------------------------------
# apply_rope
# ----------------------------------------------------------------------------------------------


def rope_reference(x, positions, theta=10000.0):
    """RoPE from the formula, in float64: pair (i, i + H/2) turns by positions * theta^(-2i/H)."""
    x = np.asarray(x, dtype=np.float64)
    half = x.shape[-1] // 2
    frequencies = theta ** (-2.0 * np.arange(half) / x.shape[-1])  # (H/2,)
    positions = np.asarray(positions, dtype=np.float64)[:, :, None, None]  # (B, T, 1, 1)
    angles = positions * frequencies  # (B, T, 1, H/2): every head of a token turns alike
    a, b = x[..., :half], x[..., half:]
    return np.concatenate(
        [a * np.cos(angles) - b * np.sin(angles), b * np.cos(angles) + a * np.sin(angles)], axis=-1
    )


def test_rope_output_shape_and_dtype():
    out = apply_rope(random_array(), counting_positions())
    check_shape(ROPE, out, (B, T, N, H), letters=SHAPE)
    check_dtype(ROPE, out, jnp.float32)


def test_rope_keeps_bfloat16():
    x = random_array(dtype=jnp.bfloat16)
    positions = counting_positions()
    out = apply_rope(x, positions)
    check_shape(ROPE, out, (B, T, N, H), letters=SHAPE)
    check_dtype(
        ROPE,
        out,
        jnp.bfloat16,
        hint="Compute in float32 if you like, then return `result.astype(x.dtype)`.",
    )
    in_float32 = apply_rope(x.astype(jnp.float32), positions)
    check_shape(ROPE, in_float32, x.shape, letters=SHAPE)
    check_close(
        ROPE,
        out,
        in_float32,
        atol=0.05,
        what="a bfloat16 input should give your float32 answer to bfloat16 precision",
    )


def test_rope_position_zero_is_identity():
    x = random_array(seed=1)
    out = apply_rope(x, positions_from(np.zeros((B, T))))
    check_close(
        ROPE,
        out,
        x,
        atol=1e-6,
        what="at position 0 every angle is 0, so x should come back unchanged",
    )


def test_rope_preserves_norm():
    x = random_array(seed=2)
    positions = positions_from(np.random.default_rng(2).integers(0, 1000, size=(B, T)))
    out = apply_rope(x, positions)
    check_shape(ROPE, out, x.shape, letters=SHAPE)
    check_close(
        ROPE,
        np.linalg.norm(np.asarray(out, np.float64), axis=-1),
        np.linalg.norm(x, axis=-1),
        atol=1e-4,
        what="a rotation keeps the length of every head's vector (the norm over H)",
        hint="each pair (x[i], x[i + H/2]) must be rotated, (a, b) -> (a cos - b sin, b cos + a sin).",
    )


def test_rope_depends_only_on_relative_position():
    # Row 0 holds the same query q at every token, row 1 the same key k; token t of row 0 sits
    # two positions after token t of row 1, so every <rope(q, m), rope(k, n)> has m - n = 2.
    q, k = random_array((N, H), seed=3), random_array((N, H), seed=4)
    x = jnp.asarray(np.broadcast_to(np.stack([q, k])[:, None], (B, T, N, H)))
    m, n = [2, 3, 7, 12, 40], [0, 1, 5, 10, 38]
    pairs = list(zip(m, n, strict=True))
    out = apply_rope(x, positions_from([m, n]))
    check_shape(ROPE, out, (B, T, N, H), letters=SHAPE)
    out = np.asarray(out, np.float64)
    scores = (out[0] * out[1]).sum(-1)  # (T, N): <rope(q, m), rope(k, n)> for each pair and head
    check_close(
        ROPE,
        scores,
        np.broadcast_to(scores[:1], scores.shape),
        atol=1e-4,
        what=f"<rope(q, m), rope(k, n)> should be the same for every (m, n) in {pairs}, "
        "since m - n = 2 in all of them",
        hint="q and k must turn by the same frequencies; only their positions differ.",
    )


def test_rope_two_channels_is_a_plane_rotation():
    # H = 2: one pair (x[0], x[1]), turning by m * theta^0 = m radians, counter-clockwise.
    x = np.asarray([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    out = apply_rope(jnp.asarray(x[None, :, None, :]), positions_from([[0, 1, 2, 3]]))  # B=N=1
    c1, s1 = math.cos(1), math.sin(1)  # 0.5403, 0.8415
    c2, s2 = math.cos(2), math.sin(2)  # -0.4161, 0.9093
    c3, s3 = math.cos(3), math.sin(3)  # -0.9900, 0.1411
    want = [
        [1.0, 0.0],  # (1, 0) at position 0: not turned
        [c1, s1],  # (1, 0) turned by 1 radian
        [-s2, c2],  # (0, 1) turned by 2 radians
        [3 * c3 - 4 * s3, 4 * c3 + 3 * s3],  # (3, 4) turned by 3 radians
    ]
    check_close(
        ROPE,
        out,
        np.asarray(want)[None, :, None, :],
        atol=1e-5,
        what="with H = 2, position m is a rotation by m radians",
        hint="(a, b) at position m becomes (a cos m - b sin m, b cos m + a sin m).",
    )


def test_rope_four_channels_hand_computed():
    # H = 4, theta = 10000: pair 0 is channels (0, 2) and turns by m; pair 1 is channels (1, 3)
    # and turns by m * 10000^(-2/4) = m / 100.
    x = jnp.asarray([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    out = apply_rope(x[None, :, None, :], positions_from([[2, 2, 5]]))
    slow2, slow5 = 2 / 100, 5 / 100
    want = [
        [math.cos(2), math.cos(slow2), math.sin(2), math.sin(slow2)],
        [-math.sin(2), -math.sin(slow2), math.cos(2), math.cos(slow2)],
        [
            # channels 0 and 2 hold (1, 3) and turn by 5 radians,
            # channels 1 and 3 hold (2, 4) and turn by 5 / 100 radians.
            1 * math.cos(5) - 3 * math.sin(5),
            2 * math.cos(slow5) - 4 * math.sin(slow5),
            3 * math.cos(5) + 1 * math.sin(5),
            4 * math.cos(slow5) + 2 * math.sin(slow5),
        ],
    ]
    check_close(
        ROPE,
        out,
        np.asarray(want)[None, :, None, :],
        atol=1e-5,
        what="H = 4 worked by hand",
        hint="pair i is channel i with channel i + H/2, so for H = 4 the pairs are (0, 2), turning "
        "by m, and (1, 3), turning by m * theta ** (-2/4) = m / 100. Not (0, 1) and (2, 3).",
    )


def test_rope_uses_theta():
    # theta = 16 and H = 4: the second pair turns by m * 16^(-1/2) = m / 4.
    x = jnp.asarray([[[[1.0, 1.0, 0.0, 0.0]]]])  # (1, 1, 1, 4)
    out = apply_rope(x, positions_from([[2]]), theta=16.0)
    want = [math.cos(2), math.cos(0.5), math.sin(2), math.sin(0.5)]
    check_close(
        ROPE,
        out,
        np.asarray(want).reshape(1, 1, 1, 4),
        atol=1e-5,
        what="with theta = 16, position 2 turns the pairs by 2 and 2 / 4 radians",
        hint="the frequencies are theta ** (-2i / H): use the `theta` argument, not 10000.",
    )


def test_rope_each_row_uses_its_own_positions():
    x = random_array(seed=5)
    positions = positions_from([[0, 1, 2, 3, 4], [5, 9, 4, 0, 100]])
    out = apply_rope(x, positions)
    check_close(
        ROPE,
        out,
        rope_reference(x, positions),
        atol=1e-5,
        rtol=1e-5,
        what="token (b, t) should turn by positions[b, t], the same angle for all of its heads",
        hint="angles of shape (B, T, H/2) need a heads axis, (B, T, 1, H/2), to broadcast over N.",
    )


def test_rope_works_under_jit():
    x = random_array(seed=6)
    positions = positions_from([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    eager = apply_rope(x, positions)
    check_shape(ROPE, eager, x.shape, letters=SHAPE)
    with explain_tracer_errors(ROPE, "jax.jit"):
        out = jax.jit(apply_rope)(x, positions)
    check_close(
        ROPE,
        out,
        eager,
        atol=1e-5,
        rtol=1e-5,
        what="under jax.jit the result should be the one you get without it",
    )


# ----------------------------------------------------------------------------------------------
# causal_self_attention
# ----------------------------------------------------------------------------------------------


def attention_reference(q, k, v):
    """Causal attention with numpy loops, in float64: one batch entry, one head, one query at a time."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    B, T, N, H = q.shape
    out = np.zeros_like(v)
    for b in range(B):
        for n in range(N):
            for t in range(T):
                scores = k[b, : t + 1, n] @ q[b, t, n] / math.sqrt(H)  # keys 0..t only
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[b, t, n] = weights @ v[b, : t + 1, n]
    return out


def qkv(seed=0, dtype=jnp.float32):
    return tuple(random_array(seed=seed + i, dtype=dtype) for i in range(3))


def test_attention_output_shape_and_dtype():
    out = causal_self_attention(*qkv())
    check_shape(ATTENTION, out, (B, T, N, H), letters=SHAPE)
    check_dtype(ATTENTION, out, jnp.float32)


def test_attention_keeps_bfloat16():
    q, k, v = qkv(dtype=jnp.bfloat16)
    out = causal_self_attention(q, k, v)
    check_shape(ATTENTION, out, (B, T, N, H), letters=SHAPE)
    check_dtype(
        ATTENTION,
        out,
        jnp.bfloat16,
        hint="Compute the softmax in float32 if you like, then return `out.astype(v.dtype)`.",
    )
    in_float32 = causal_self_attention(*(a.astype(jnp.float32) for a in (q, k, v)))
    check_shape(ATTENTION, in_float32, q.shape, letters=SHAPE)
    check_close(
        ATTENTION,
        out,
        in_float32,
        atol=0.05,
        what="bfloat16 inputs should give your float32 answer to bfloat16 precision",
    )


def test_attention_is_causal():
    q, k, v = qkv(seed=10)
    other_q, other_k, other_v = qkv(seed=20)
    future = (np.arange(T) >= 3)[None, :, None, None]  # positions 3 and 4
    out = causal_self_attention(q, k, v)
    changed = causal_self_attention(
        *(
            jnp.asarray(np.where(future, b, a))
            for a, b in [(q, other_q), (k, other_k), (v, other_v)]
        )
    )
    check_shape(ATTENTION, out, (B, T, N, H), letters=SHAPE)
    check_shape(ATTENTION, changed, (B, T, N, H), letters=SHAPE)
    check_close(
        ATTENTION,
        np.asarray(changed)[:, :3],
        np.asarray(out)[:, :3],
        atol=1e-6,
        what="changing the tokens at positions 3 and 4 changed the output at positions 0, 1, 2",
        hint="position t may only read keys and values at positions s <= t: set scores[t, s] to "
        "a very negative number for s > t, before the softmax.",
    )


def test_attention_first_position_returns_first_value():
    q, k, v = qkv(seed=30)
    out = causal_self_attention(q, k, v)
    check_shape(ATTENTION, out, (B, T, N, H), letters=SHAPE)
    check_close(
        ATTENTION,
        np.asarray(out)[:, 0],
        v[:, 0],
        atol=1e-5,
        what="the output at position 0 should equal v[:, 0]",
        hint="position 0 sees only itself, so after the mask its softmax puts weight 1 on key 0.",
    )


def test_attention_zero_queries_average_the_past():
    _, k, v = qkv(seed=40)
    out = causal_self_attention(jnp.asarray(np.zeros((B, T, N, H), np.float32)), k, v)
    running_mean = np.cumsum(np.asarray(v, np.float64), axis=1) / np.arange(1, T + 1)[:, None, None]
    check_close(
        ATTENTION,
        out,
        running_mean,
        atol=1e-5,
        what="with q = 0 all scores are equal, so position t should return mean(v[0..t])",
        hint="if every position gave the mean of all T values, the causal mask is missing; "
        "if only the last position is right, the mask is the wrong way round (keep s <= t).",
    )


def test_attention_scales_by_sqrt_head_dim():
    # T = 2, H = 4. Position 1 scores key 0 (all zeros) and key 1 (all ones) with its query of ones:
    # (0, 4) / sqrt(4) = (0, 2). Softmax weight on key 1: e^2 / (1 + e^2) = 0.8808; v[1] = ones.
    zeros_then_ones = jnp.asarray([[[[0.0] * 4], [[1.0] * 4]]])  # (1, 2, 1, 4)
    q = k = v = zeros_then_ones
    out = causal_self_attention(q, k, v)
    weight = math.exp(2) / (1 + math.exp(2))
    want = np.stack([np.zeros(4), np.full(4, weight)])[None, :, None, :]
    check_close(
        ATTENTION,
        out,
        want,
        atol=1e-5,
        what="a case worked by hand",
        hint="scores are q . k / sqrt(H) = (0, 4 / 2) here, so position 1 returns 0.8808 * v[1]. "
        "Without the scale you would get 0.9820; dividing by H instead gives 0.7311.",
    )


def test_attention_matches_numpy_reference():
    q, k, v = qkv(seed=50)
    out = causal_self_attention(q, k, v)
    check_close(
        ATTENTION,
        out,
        attention_reference(q, k, v),
        atol=1e-5,
        rtol=1e-5,
        what="compared with the numpy loops in attention_reference (in this file)",
        hint="each head is separate: scores (B, N, T, T) come from q and k of the same head.",
    )


def test_attention_gradients_are_finite():
    q, k, v = qkv(seed=60)
    weights = random_array(seed=63)

    def loss(q, k, v):
        return jnp.sum(causal_self_attention(q, k, v) * weights)

    # jit makes XLA compile the forward and backward pass once, rather than op by op.
    with explain_tracer_errors(ATTENTION, "jax.jit(jax.grad(...))"):
        gradients = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    for wrt, gradient in zip("qkv", gradients, strict=True):
        check_shape(ATTENTION, gradient, (B, T, N, H), letters=SHAPE)
        check_finite(
            ATTENTION,
            gradient,
            what=f"the gradient with respect to {wrt}",
            hint="a NaN often comes from 0 * inf, such as multiplying by a mask that holds inf: "
            "mask with jnp.where(mask, scores, -jnp.inf) (or -1e30) instead.",
        )


def test_attention_works_under_jit():
    q, k, v = qkv(seed=70)
    eager = causal_self_attention(q, k, v)
    check_shape(ATTENTION, eager, q.shape, letters=SHAPE)
    with explain_tracer_errors(ATTENTION, "jax.jit"):
        out = jax.jit(causal_self_attention)(q, k, v)
    check_close(
        ATTENTION,
        out,
        eager,
        atol=1e-5,
        rtol=1e-5,
        what="under jax.jit the result should be the one you get without it",
    )
