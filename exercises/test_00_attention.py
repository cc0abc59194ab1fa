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
import pytest

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
    solutions={
        "apply_rope": "minids.layers",
        "causal_self_attention": "minids.attention",
        "attention_mask": "minids.attention",
        "dot_product_attention": "minids.attention",
    },
)
apply_rope = exercise.apply_rope
causal_self_attention = exercise.causal_self_attention
attention_mask = exercise.attention_mask
dot_product_attention = exercise.dot_product_attention

ROPE, ATTENTION = "apply_rope", "causal_self_attention"
MASK, DPA = "attention_mask", "dot_product_attention"
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


# ----------------------------------------------------------------------------------------------
# attention_mask: the decode step's mask
# ----------------------------------------------------------------------------------------------


def mask_reference(q_len, kv_len, offset=0, key_mask=None):
    """Slot s is readable by query t when s <= offset + t (and key_mask[b, s], when given)."""
    mask = np.arange(kv_len)[None, :] <= offset + np.arange(q_len)[:, None]  # (T, S)
    if key_mask is None:
        return mask[None]
    return mask[None] & np.asarray(key_mask)[:, None, :]


def check_mask(got, want, what, hint=""):
    want = np.asarray(want)
    check_shape(MASK, got, want.shape, letters="#B T S")
    check_dtype(MASK, got, np.bool_, hint="compare with <= to get booleans, not 0/1 numbers.")
    check_close(MASK, np.asarray(got, np.float64), want, atol=0, what=what, hint=hint)


def test_mask_shape_and_dtype():
    got = attention_mask(4, 6)
    check_shape(MASK, got, (1, 4, 6), letters="#B T S")
    check_dtype(MASK, got, np.bool_, hint="compare with <= to get booleans, not 0/1 numbers.")


def test_mask_offset_zero_is_causal():
    check_mask(
        attention_mask(5, 5),
        mask_reference(5, 5),
        "with offset 0 and T = S the mask should be lower-triangular (s <= t)",
        hint="query t may read slots 0..t: True on and below the diagonal.",
    )


@pytest.mark.points(2)
def test_mask_decode_step_reads_every_filled_slot():
    check_mask(
        attention_mask(1, 6, 3),
        mask_reference(1, 6, 3),
        "one new token stored at slot 3 of a 6-slot cache should read slots 0, 1, 2, 3",
        hint="query t sits at slot offset + t: compare the key slot s with offset + t, not with t.",
    )


def test_mask_prefill_at_an_offset():
    check_mask(
        attention_mask(3, 7, 2),
        mask_reference(3, 7, 2),
        "three tokens stored at slots 2, 3, 4 of a 7-slot cache",
    )


@pytest.mark.points(2)
def test_mask_combines_the_key_mask():
    key_mask = np.asarray([[False, False, True, True, True], [True, True, True, True, False]])
    check_mask(
        attention_mask(2, 5, 3, jnp.asarray(key_mask)),
        mask_reference(2, 5, 3, key_mask),
        "with a key_mask (B, S) the result should be (B, T, S): causal AND key_mask[b, s]",
        hint="broadcast key_mask[:, None, :] against the causal (1, T, S) mask with &.",
    )


@pytest.mark.points(2)
def test_mask_works_with_a_traced_offset():
    def decode_mask(offset):
        return attention_mask(1, 6, offset)

    with explain_tracer_errors(MASK, "jax.jit (offset is a traced integer)"):
        got = jax.jit(decode_mask)(jnp.asarray(4, jnp.int32))
    check_mask(
        got,
        mask_reference(1, 6, 4),
        "under jax.jit, with offset = jnp.asarray(4)",
        hint="the sizes q_len and kv_len are Python ints, the offset may be traced: add it to "
        "jnp.arange(q_len) rather than using it in range() or int().",
    )


def test_mask_later_queries_see_more():
    got = np.asarray(attention_mask(4, 9, 5))
    check_shape(MASK, got, (1, 4, 9), letters="#B T S")
    counts = got[0].sum(axis=1)
    check_close(
        MASK,
        counts,
        np.arange(6, 10),
        atol=0,
        what="queries at slots 5, 6, 7, 8 should read 6, 7, 8, 9 slots",
    )


# ----------------------------------------------------------------------------------------------
# dot_product_attention: grouped-query heads and a mask
# ----------------------------------------------------------------------------------------------

S, N_Q, M_KV, HV = 7, 6, 2, 5  # 7 cache slots, 6 query heads sharing 2 key/value heads, Hv = 5


def dpa_reference(q, k, v, mask, scale=None):
    """Grouped-query attention with numpy loops, float64: query head n reads head n // G."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    mask = np.broadcast_to(np.asarray(mask), (q.shape[0], q.shape[1], k.shape[1]))
    B, T, N, H = q.shape
    G = N // k.shape[2]
    scale = 1 / math.sqrt(H) if scale is None else scale
    out = np.zeros((B, T, N, v.shape[-1]))
    for b in range(B):
        for n in range(N):
            for t in range(T):
                scores = np.where(mask[b, t], k[b, :, n // G] @ q[b, t, n] * scale, -1e30)
                weights = np.exp(scores - scores.max())
                out[b, t, n] = weights / weights.sum() @ v[b, :, n // G]
    return out


def gqa_inputs(T_q=3, M=M_KV, seed=0, dtype=jnp.float32):
    q = random_array((B, T_q, N_Q, H), seed=seed, dtype=dtype)
    k = random_array((B, S, M, H), seed=seed + 1, dtype=dtype)
    v = random_array((B, S, M, HV), seed=seed + 2, dtype=dtype)
    return q, k, v


def decode_mask_np(T_q=3, offset=4):
    return jnp.asarray(mask_reference(T_q, S, offset))


def test_dpa_output_shape_and_dtype():
    out = dot_product_attention(*gqa_inputs(), decode_mask_np())
    check_shape(DPA, out, (B, 3, N_Q, HV), letters="B T N Hv")
    check_dtype(DPA, out, jnp.float32)


def test_dpa_keeps_bfloat16():
    out = dot_product_attention(*gqa_inputs(dtype=jnp.bfloat16), decode_mask_np())
    check_shape(DPA, out, (B, 3, N_Q, HV), letters="B T N Hv")
    check_dtype(
        DPA, out, jnp.bfloat16, hint="softmax in float32 if you like, then `.astype(v.dtype)`."
    )


@pytest.mark.points(2)
def test_dpa_query_head_n_reads_kv_head_n_over_g():
    # Key/value head 0 holds values 0, head 1 holds values 1: each output shows which head it read.
    q, k, _ = gqa_inputs(seed=10)
    v = jnp.asarray(
        np.broadcast_to(np.arange(M_KV, dtype=np.float32)[None, None, :, None], (B, S, M_KV, HV))
    )
    out = dot_product_attention(q, k, v, decode_mask_np())
    want = np.broadcast_to((np.arange(N_Q) // (N_Q // M_KV))[None, None, :, None], (B, 3, N_Q, HV))
    check_close(
        DPA,
        out,
        want,
        atol=1e-5,
        what="value head m holds the number m everywhere, so query head n should return n // G "
        f"(G = {N_Q // M_KV}: heads 0-2 read head 0, heads 3-5 read head 1)",
        hint="reshape q to (B, T, M, G, H): consecutive query heads share a key/value head; "
        "pairing head n with n % M (or repeating k with jnp.tile) gives the wrong pairs.",
    )


def test_dpa_equals_multi_head_attention_when_m_equals_n():
    q, k, v = gqa_inputs(M=N_Q, seed=20)
    mask = decode_mask_np()
    check_close(
        DPA,
        dot_product_attention(q, k, v, mask),
        dpa_reference(q, k, v, mask),
        atol=1e-5,
        rtol=1e-5,
        what="with M = N every query head has its own key/value head (multi-head attention)",
    )


def test_dpa_equals_multi_query_attention_when_m_is_one():
    q, k, v = gqa_inputs(M=1, seed=30)
    mask = decode_mask_np()
    check_close(
        DPA,
        dot_product_attention(q, k, v, mask),
        dpa_reference(q, k, v, mask),
        atol=1e-5,
        rtol=1e-5,
        what="with M = 1 every query head reads the one key/value head (multi-query attention)",
    )


@pytest.mark.points(2)
def test_dpa_masked_slots_have_no_effect():
    q, k, v = gqa_inputs(seed=40)
    mask = decode_mask_np(offset=2)  # slots 5 and 6 are never readable
    _, other_k, other_v = gqa_inputs(seed=50)
    unread = (np.arange(S) >= 5)[None, :, None, None]
    out = dot_product_attention(q, k, v, mask)
    changed = dot_product_attention(
        q, jnp.where(unread, other_k, k), jnp.where(unread, other_v, v), mask
    )
    check_shape(DPA, out, (B, 3, N_Q, HV), letters="B T N Hv")
    check_close(
        DPA,
        changed,
        out,
        atol=1e-6,
        what="changing the keys and values in slots the mask forbids changed the output",
        hint="put a very negative number into the scores where mask is False, before the softmax.",
    )


@pytest.mark.points(2)
def test_dpa_decode_step_equals_the_full_causal_pass():
    # Full causal attention over 5 tokens, then the last token alone against a 7-slot cache
    # (slots 0-4 hold the same keys and values, slots 5-6 garbage): the last rows must agree.
    q, k, v = gqa_inputs(T_q=5, seed=60)
    k, v = np.asarray(k).copy(), np.asarray(v).copy()
    full = dpa_reference(q, k[:, :5], v[:, :5], mask_reference(5, 5))
    k[:, 5:], v[:, 5:] = 1e3, -1e3  # unwritten slots: the mask must hide them
    step = dot_product_attention(q[:, 4:], jnp.asarray(k), jnp.asarray(v), decode_mask_np(1, 4))
    check_close(
        DPA,
        step,
        full[:, 4:],
        atol=1e-5,
        rtol=1e-5,
        what="the new token at slot 4, attending over the cache, should give the last row of "
        "full causal attention over the 5 tokens",
    )


@pytest.mark.points(2)
def test_dpa_fully_masked_row_is_finite():
    q, k, v = gqa_inputs(seed=70)
    mask = np.asarray(decode_mask_np()).copy()
    mask[:, 0] = False  # query 0 may read nothing (a padding position)
    out = dot_product_attention(q, k, v, jnp.asarray(mask))
    check_finite(
        DPA,
        out,
        hint="with -inf in every slot the softmax is 0/0 = NaN: mask with a large finite "
        "negative number such as -1e30 instead (the row then averages v, which is harmless).",
    )


def test_dpa_uses_scale():
    q, k, v = gqa_inputs(seed=80)
    mask = decode_mask_np()
    check_close(
        DPA,
        dot_product_attention(q, k, v, mask, 0.7),
        dpa_reference(q, k, v, mask, 0.7),
        atol=1e-5,
        rtol=1e-5,
        what="with scale = 0.7 the scores are q . k * 0.7",
        hint="use the `scale` argument when it is not None, 1 / sqrt(H) otherwise.",
    )


@pytest.mark.points(2)
def test_dpa_matches_numpy_reference():
    q, k, v = gqa_inputs(seed=90)
    mask = jnp.asarray(mask_reference(3, S, 4, np.random.default_rng(9).random((B, S)) > 0.3))
    check_close(
        DPA,
        dot_product_attention(q, k, v, mask),
        dpa_reference(q, k, v, mask),
        atol=1e-5,
        rtol=1e-5,
        what="compared with the numpy loops in dpa_reference (in this file), with a (B, T, S) mask",
        hint="a (B, T, S) mask needs a heads axis to broadcast against the scores.",
    )


def test_dpa_gradients_are_finite():
    q, k, v = gqa_inputs(seed=100)
    mask = decode_mask_np()

    def loss(q, k, v):
        return jnp.sum(dot_product_attention(q, k, v, mask) ** 2)

    with explain_tracer_errors(DPA, "jax.jit(jax.grad(...))"):
        gradients = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    for wrt, gradient, shape in zip("qkv", gradients, (q.shape, k.shape, v.shape), strict=True):
        check_shape(DPA, gradient, shape)
        check_finite(DPA, gradient, what=f"the gradient with respect to {wrt}")


@pytest.mark.points(2)
def test_dpa_works_under_jit():
    q, k, v = gqa_inputs(seed=110)
    mask = decode_mask_np()
    eager = dot_product_attention(q, k, v, mask)
    check_shape(DPA, eager, (B, 3, N_Q, HV), letters="B T N Hv")
    with explain_tracer_errors(DPA, "jax.jit"):
        out = jax.jit(dot_product_attention)(q, k, v, mask)
    check_close(DPA, out, eager, atol=1e-5, rtol=1e-5, what="under jax.jit and without it")
