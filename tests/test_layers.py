"""The small pieces: RoPE, RMSNorm, SwiGLU, embedding, and scaled dot-product attention (MHA/GQA/MQA)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from minids.attention import attention_mask, causal_self_attention, dot_product_attention
from minids.config import preset
from minids.layers import Embedding, RMSNorm, SwiGLU, apply_rope, rope_angles

H = 16  # head dim used by the RoPE tests
RNG = np.random.default_rng(0)
Q = RNG.standard_normal((1, 1, 1, H)).astype(np.float32)
K = RNG.standard_normal((1, 1, 1, H)).astype(np.float32)


def _rope_at(x: np.ndarray, position: int) -> np.ndarray:
    return np.asarray(apply_rope(jnp.asarray(x), jnp.full((1, 1), position, jnp.int32)))


def _score(m: int, n: int) -> float:
    """<rope(q, m), rope(k, n)>: the attention logit of a query at position m and a key at n."""
    return float(np.sum(_rope_at(Q, m) * _rope_at(K, n)))


# ------------------------------------------------------------------------------------------ RoPE


def test_rope_matches_the_complex_rotation_reference():
    """Channel pair (i, i + H/2) is the complex number x_i + 1j x_{i+H/2}, turned by m theta^(-2i/H)."""
    B, T, N, theta = 2, 5, 3, 10_000.0
    x = RNG.standard_normal((B, T, N, H))
    positions = RNG.integers(0, 100, size=(B, T))
    z = x[..., : H // 2] + 1j * x[..., H // 2 :]
    freqs = theta ** (-np.arange(0, H, 2) / H)
    z = z * np.exp(1j * positions[:, :, None, None] * freqs)
    expected = np.concatenate([z.real, z.imag], axis=-1)
    got = apply_rope(jnp.asarray(x, jnp.float32), jnp.asarray(positions, jnp.int32), theta)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4)


@given(st.integers(0, 200), st.integers(0, 200), st.integers(0, 300))
def test_rope_dot_product_depends_only_on_the_relative_position(m, n, shift):
    assert _score(m + shift, n + shift) == pytest.approx(_score(m, n), abs=1e-3)


def test_rope_dot_product_changes_when_the_relative_position_changes():
    # The converse: RoPE is not the identity, so a different distance gives a different logit.
    assert abs(_score(5, 2) - _score(5, 3)) > 1e-2
    assert abs(_score(5, 2) - _score(2, 5)) > 1e-2  # and it knows which way the distance goes


@given(st.integers(0, 10_000))
def test_rope_preserves_the_norm_of_every_head(position):
    x = RNG.standard_normal((1, 1, 4, H)).astype(np.float32)
    rotated = _rope_at(x, position)
    np.testing.assert_allclose(
        np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5
    )


def test_rope_at_position_zero_is_the_identity_and_keeps_the_dtype():
    x = jnp.asarray(RNG.standard_normal((2, 3, 2, H)), jnp.bfloat16)
    out = apply_rope(x, jnp.zeros((2, 3), jnp.int32))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(x, np.float32))


def test_rope_angles_have_one_frequency_per_channel_pair():
    angles = rope_angles(jnp.array([[0, 1, 2]]), head_dim=8, theta=100.0)
    assert angles.shape == (1, 3, 4)
    np.testing.assert_allclose(
        np.asarray(angles[0, 1]), 100.0 ** (-np.arange(0, 8, 2) / 8), rtol=1e-6
    )
    np.testing.assert_allclose(np.asarray(angles[0, 2]), 2 * np.asarray(angles[0, 1]), rtol=1e-6)


# --------------------------------------------------------------------------------------- RMSNorm


def test_rmsnorm_gives_unit_root_mean_square_and_ignores_the_input_scale():
    norm = RMSNorm(32, eps=1e-8)
    x = jnp.asarray(RNG.standard_normal((2, 3, 32)) * 7.0, jnp.float32)
    y = np.asarray(norm(x))
    np.testing.assert_allclose(np.sqrt(np.mean(y**2, axis=-1)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(norm(0.01 * x)), y, rtol=1e-4, atol=1e-5)


def test_rmsnorm_scale_multiplies_each_channel():
    norm = RMSNorm(4, eps=1e-8)
    norm.scale[...] = jnp.array([1.0, 2.0, 0.0, -1.0])
    x = jnp.array([[[1.0, 1.0, 1.0, 1.0]]])
    np.testing.assert_allclose(np.asarray(norm(x)), [[[1.0, 2.0, 0.0, -1.0]]], rtol=1e-6)


def test_rmsnorm_returns_the_input_dtype():
    norm = RMSNorm(8)
    x = jnp.asarray(RNG.standard_normal((1, 2, 8)), jnp.bfloat16)
    assert norm(x).dtype == jnp.bfloat16


# -------------------------------------------------------------------------- SwiGLU and embedding


def test_swiglu_is_down_of_silu_gate_times_up():
    cfg = preset("tiny", d_model=8, ffn_dim=12, n_layers=1)
    ffn = SwiGLU(cfg, rngs=nnx.Rngs(0))
    x = RNG.standard_normal((2, 3, 8)).astype(np.float32)
    gate, up, down = (np.asarray(layer.kernel[...]) for layer in (ffn.gate, ffn.up, ffn.down))
    g = x @ gate
    expected = ((g / (1 + np.exp(-g))) * (x @ up)) @ down
    np.testing.assert_allclose(np.asarray(ffn(jnp.asarray(x))), expected, rtol=1e-4, atol=1e-5)


def test_embedding_attend_is_the_transposed_table():
    cfg = preset("tiny", d_model=8, vocab_size=16)
    emb = Embedding(cfg, rngs=nnx.Rngs(0))
    table = np.asarray(emb.embed.embedding[...])
    np.testing.assert_array_equal(np.asarray(emb(jnp.array([[3, 5]]))), table[[[3, 5]]])
    x = RNG.standard_normal((1, 2, 8)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(emb.attend(jnp.asarray(x))), x @ table.T, rtol=1e-5, atol=1e-5
    )


# ------------------------------------------------------------------------------------- attention


def _reference_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(H)) v in float64, with each of the M kv heads repeated for its G queries."""
    G = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)  # query head n uses kv head n // G
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(mask[:, None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", probs, v)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_dot_product_attention_matches_the_reference(n_kv_heads):
    B, T, N, Hd = 2, 6, 4, 8
    q = RNG.standard_normal((B, T, N, Hd))
    k = RNG.standard_normal((B, T, n_kv_heads, Hd))
    v = RNG.standard_normal((B, T, n_kv_heads, Hd))
    mask = np.asarray(attention_mask(T, T))
    mask = np.broadcast_to(mask, (B, T, T))
    got = dot_product_attention(
        *(jnp.asarray(a, jnp.float32) for a in (q, k, v)), jnp.asarray(mask)
    )
    np.testing.assert_allclose(np.asarray(got), _reference_attention(q, k, v, mask), atol=1e-5)


def test_causal_self_attention_first_position_sees_only_itself():
    q, k, v = (jnp.asarray(RNG.standard_normal((1, 4, 2, 8)), jnp.float32) for _ in range(3))
    out = causal_self_attention(q, k, v)
    np.testing.assert_allclose(np.asarray(out[:, 0]), np.asarray(v[:, 0]), atol=1e-6)


def test_attention_mask_is_causal_from_the_offset_and_hides_masked_keys():
    key_mask = jnp.array([[False, True, True, True, True]])
    mask = np.asarray(attention_mask(2, 5, offset=2, key_mask=key_mask))
    expected = np.array([[[False, True, True, False, False], [False, True, True, True, False]]])
    np.testing.assert_array_equal(mask, expected)


def test_a_fully_masked_query_gives_finite_output():
    q, k, v = (jnp.asarray(RNG.standard_normal((1, 2, 2, 8)), jnp.float32) for _ in range(3))
    out = dot_product_attention(q, k, v, jnp.zeros((1, 2, 2), bool))
    assert bool(jnp.all(jnp.isfinite(out)))


def test_attention_is_jit_compatible_with_a_traced_offset():
    mask = jax.jit(lambda i: attention_mask(1, 4, offset=i))(jnp.int32(2))
    np.testing.assert_array_equal(np.asarray(mask), [[[True, True, True, False]]])
