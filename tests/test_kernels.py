"""Every kernel (minids/kernels/) computes what its plain form computes: values and gradients.

The kernels (see `benchmarks/bench_train.py` for what they buy):

- `blockwise_causal_attention`: causal attention one block of queries at a time, skipping the keys
  a block cannot see; plain form `dot_product_attention` with `attention_mask(T, T)`.
- `cpu_attention`: heads-first layout and a hand-written backward pass (custom VJP); plain form
  `dot_product_attention`, for any mask, including fully masked (padding) rows.
- `xla_causal_attention`, the GPU/TPU route (run here on the CPU); plain form `causal_self_attention`.
- `causal_attention` and the `Attention` / `Transformer` training path, which use them;
  plain form: the same call with an all-True `key_mask`, which takes the masked path.
- `SwiGLU` and the projections, which flatten (B, T, D) to (B*T, D) before each matmul.

The MoE dispatch kernels are checked against `dispatch_reference` in tests/test_moe.py and
tests/test_fp8_model.py, the limited-precision accumulator against its reference in tests/test_fp8.py.

Tolerances. float32: the fast paths add the same products in another order, so values agree to
`ATOL = 1e-5` (outputs are O(1)) and gradients to `GRAD_RTOL = 1e-4` of their largest entry.
bfloat16: both versions round to 8 bits of mantissa in different places, so each is compared with
the float32 reference, and the fast one must be no more than 1.5x further from it than the slow one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minids import attention
from minids.attention import Attention, attention_mask, causal_self_attention, dot_product_attention
from minids.config import preset
from minids.kernels.attention import (
    blockwise_causal_attention,
    causal_attention,
    causal_blocks,
    cpu_attention,
    xla_causal_attention,
)
from minids.layers import SwiGLU
from minids.model import Transformer

ATOL = 1e-5
GRAD_RTOL = 1e-4


def _qkv(B=2, T=16, N=4, M=2, H=8, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, N, H))
    k = rng.standard_normal((B, T, M, H))
    v = rng.standard_normal((B, T, M, H))
    return tuple(jnp.asarray(a, dtype) for a in (q, k, v))


def _value_and_grads(fn, q, k, v):
    """fn(q, k, v) and the gradients of a fixed random projection of it, in float32."""
    out = jax.jit(fn)(q, k, v)
    weights = jnp.asarray(np.random.default_rng(99).standard_normal(out.shape), jnp.float32)

    def loss(q, k, v):
        return jnp.sum(fn(q, k, v).astype(jnp.float32) * weights)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    return np.asarray(out, np.float32), [np.asarray(g, np.float32) for g in grads]


def _assert_same(fast, reference, what):
    (out, grads), (ref_out, ref_grads) = fast, reference
    np.testing.assert_allclose(out, ref_out, atol=ATOL, err_msg=f"{what}: values")
    for name, g, ref in zip("qkv", grads, ref_grads, strict=True):
        scale = max(float(np.max(np.abs(ref))), 1e-6)
        np.testing.assert_allclose(g, ref, atol=GRAD_RTOL * scale, err_msg=f"{what}: d{name}")


def _masks(B, T):
    """Causal; causal from an offset into a longer cache; left padding with a fully masked row."""
    key_mask = np.ones((B, T + 4), bool)
    key_mask[0, :7] = False  # batch row 0: the first 7 slots are padding
    return {
        "causal": attention_mask(T, T),
        "offset": attention_mask(T, T + 4, offset=4),
        "padded": attention_mask(T, T + 4, offset=4, key_mask=jnp.asarray(key_mask)),
    }


# ------------------------------------------------------------------ cpu_attention


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("mask_name", ["causal", "offset", "padded"])
def test_fast_attention_matches_the_reference_values_and_gradients(n_kv_heads, mask_name):
    B, T = 2, 12
    mask = _masks(B, T)[mask_name]
    q, k, v = _qkv(B=B, T=T, M=n_kv_heads)
    if mask.shape[-1] != T:  # keys from a longer cache
        _, k, v = _qkv(B=B, T=mask.shape[-1], M=n_kv_heads, seed=1)
    fast = _value_and_grads(lambda q, k, v: cpu_attention(q, k, v, mask), q, k, v)
    ref = _value_and_grads(lambda q, k, v: dot_product_attention(q, k, v, mask), q, k, v)
    _assert_same(fast, ref, f"{mask_name}, {n_kv_heads} kv heads")


def test_fast_attention_gives_the_reference_uniform_average_for_a_fully_masked_row():
    q, k, v = _qkv(B=1, T=3)
    mask = jnp.zeros((1, 3, 3), bool).at[:, 1:].set(attention_mask(2, 3, offset=1)[0])
    fast = cpu_attention(q, k, v, mask)
    np.testing.assert_allclose(
        np.asarray(fast), np.asarray(dot_product_attention(q, k, v, mask)), atol=ATOL
    )
    assert bool(jnp.all(jnp.isfinite(fast)))


def test_fast_attention_in_bfloat16_is_as_close_to_float32_as_the_reference():
    q32, k32, v32 = _qkv(B=2, T=32, N=4, M=2, H=16)
    mask = attention_mask(32, 32)
    exact = _value_and_grads(lambda q, k, v: dot_product_attention(q, k, v, mask), q32, k32, v32)
    bf16 = tuple(a.astype(jnp.bfloat16) for a in (q32, k32, v32))
    fast = _value_and_grads(lambda q, k, v: cpu_attention(q, k, v, mask), *bf16)
    slow = _value_and_grads(lambda q, k, v: dot_product_attention(q, k, v, mask), *bf16)
    assert jax.eval_shape(lambda: cpu_attention(*bf16, mask)).dtype == jnp.bfloat16
    for i, what in enumerate(["values", "dq", "dk", "dv"]):
        pick = (lambda r: r[0]) if i == 0 else (lambda r, i=i: r[1][i - 1])
        err_fast = np.max(np.abs(pick(fast) - pick(exact)))
        err_slow = np.max(np.abs(pick(slow) - pick(exact)))
        assert err_fast <= 1.5 * err_slow + 1e-3, (
            f"{what}: fast {err_fast:.3g}, reference {err_slow:.3g}"
        )


# ------------------------------------------------------------------ blockwise_causal_attention


@pytest.mark.parametrize("n_blocks", [1, 2, 4])
@pytest.mark.parametrize(
    "attend", [dot_product_attention, cpu_attention], ids=["reference", "fast"]
)
def test_blockwise_causal_attention_matches_full_causal_attention(n_blocks, attend):
    q, k, v = _qkv(B=2, T=24, N=4, M=2)
    mask = attention_mask(24, 24)
    blocks = _value_and_grads(
        lambda q, k, v: blockwise_causal_attention(q, k, v, n_blocks, attend), q, k, v
    )
    ref = _value_and_grads(lambda q, k, v: dot_product_attention(q, k, v, mask), q, k, v)
    _assert_same(blocks, ref, f"{n_blocks} blocks")


def test_blockwise_causal_attention_rejects_blocks_that_do_not_divide_the_sequence():
    q, k, v = _qkv(T=12)
    with pytest.raises(ValueError, match="n_blocks"):
        blockwise_causal_attention(q, k, v, 5, dot_product_attention)


def test_causal_blocks_are_at_least_64_rows_and_at_most_8():
    assert [causal_blocks(T) for T in (32, 64, 96, 128, 200, 256, 512, 4096)] == [
        1,
        1,
        1,
        2,
        2,
        4,
        8,
        8,
    ]


def test_causal_attention_kernel_of_a_long_sequence_takes_the_blockwise_path_and_matches():
    q, k, v = _qkv(B=1, T=256, N=4, M=2)
    assert causal_blocks(256) == 4
    fast = _value_and_grads(causal_attention, q, k, v)
    ref = _value_and_grads(causal_self_attention, q, k, v)
    _assert_same(fast, ref, "T=256")


@pytest.mark.parametrize("value_dim", [8, 5], ids=["Hv=H", "Hv<H (MLA)"])
def test_xla_route_for_gpu_and_tpu_matches_the_plain_form(value_dim):
    q, k, v = _qkv(B=2, T=16, N=4, M=2, H=8)
    v = v[..., :value_dim]
    fast = _value_and_grads(lambda q, k, v: xla_causal_attention(q, k, v, 0.3), q, k, v)
    ref = _value_and_grads(lambda q, k, v: causal_self_attention(q, k, v, 0.3), q, k, v)
    _assert_same(fast, ref, f"xla, Hv={value_dim}")


def test_the_training_attention_choice_is_the_kernel_and_the_plain_form_trains_the_same(
    monkeypatch,
):
    """`TRAINING_ATTENTION` is the one line that picks the kernel; setting it to the plain form gives
    the same loss and gradients, so a student can run the model on the code they read."""
    assert attention.TRAINING_ATTENTION is causal_attention
    cfg = preset("tiny", n_layers=1, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64)
    model = Transformer(cfg)
    tokens = jnp.asarray(np.random.default_rng(1).integers(3, 99, (2, 24)), jnp.int32)

    def loss(m):
        logits = m(tokens)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[..., 5])

    with_kernel = _param_grads(model, loss)
    monkeypatch.setattr(attention, "TRAINING_ATTENTION", causal_self_attention)
    plain = _param_grads(model, loss)
    for a, b in zip(with_kernel, plain, strict=True):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), atol=GRAD_RTOL * float(jnp.max(jnp.abs(b)))
        )


# ----------------------------------------------------------- the module and the model, end to end


def _apply(module, fn):
    """fn(module), compiled (eager op-by-op dispatch of a whole model is slow)."""
    graphdef, state = nnx.split(module)
    return jax.jit(lambda state: fn(nnx.merge(graphdef, state)))(state)


def _param_grads(module, fn):
    graphdef, params = nnx.split(module, nnx.Param)

    def loss(params):
        return fn(nnx.merge(graphdef, params))

    return jax.tree.leaves(jax.jit(jax.grad(loss))(params))


@pytest.mark.parametrize("T", [16, 128], ids=["one-block", "blockwise"])
def test_attention_training_path_matches_the_masked_reference_path(T):
    """Without a key_mask the layer takes the fast causal path; an all-True key_mask, the reference."""
    cfg = preset("tiny", d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=T)
    layer = Attention(cfg, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, T, 32)), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(T), (2, T))
    everything = jnp.ones((2, T), bool)
    fast = _apply(layer, lambda m: m(x, positions)[0])
    ref = _apply(layer, lambda m: m(x, positions, key_mask=everything)[0])
    np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), atol=ATOL)
    g_fast = _param_grads(layer, lambda m: jnp.sum(m(x, positions)[0] ** 2))
    g_ref = _param_grads(layer, lambda m: jnp.sum(m(x, positions, key_mask=everything)[0] ** 2))
    for a, b in zip(g_fast, g_ref, strict=True):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), atol=GRAD_RTOL * float(jnp.max(jnp.abs(b)))
        )


def test_transformer_logits_and_loss_gradients_match_the_reference_path():
    cfg = preset(
        "tiny",
        n_layers=2,
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        ffn_dim=64,
        max_seq_len=128,
    )
    model = Transformer(cfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 99, (2, 128)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(128), (2, 128))
    everything = jnp.ones((2, 128), bool)
    np.testing.assert_allclose(
        np.asarray(_apply(model, lambda m: m(tokens))),
        np.asarray(_apply(model, lambda m: m(tokens, positions, everything))),
        atol=ATOL,
    )

    def loss(m, key_mask):
        logits = m(tokens, positions, key_mask)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[..., 5])

    g_fast = _param_grads(model, lambda m: loss(m, None))
    g_ref = _param_grads(model, lambda m: loss(m, everything))
    for a, b in zip(g_fast, g_ref, strict=True):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), atol=GRAD_RTOL * float(jnp.max(jnp.abs(b)))
        )


def test_swiglu_on_flattened_tokens_matches_the_three_dimensional_formula():
    cfg = preset("tiny", d_model=16, ffn_dim=24)
    ffn = SwiGLU(cfg, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 16)), jnp.float32)

    def three_d(m):  # nnx.Linear applied to (B, T, D) directly, as written in the paper
        return m.down(jax.nn.silu(m.gate(x)) * m.up(x))

    np.testing.assert_allclose(np.asarray(ffn(x)), np.asarray(three_d(ffn)), atol=ATOL)
    g_fast = _param_grads(ffn, lambda m: jnp.sum(m(x) ** 2))
    g_ref = _param_grads(ffn, lambda m: jnp.sum(three_d(m) ** 2))
    for a, b in zip(g_fast, g_ref, strict=True):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), atol=GRAD_RTOL * float(jnp.max(jnp.abs(b)))
        )
