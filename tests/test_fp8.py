"""minids.fp8: formats, blockwise quantisation, the limited-precision accumulator, and Fp8Linear."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from minids.fp8 import (
    FORMATS,
    FP8Config,
    Fp8Linear,
    dequantize,
    fake_quantize,
    fit_block,
    fp8_linear,
    fp8_matmul,
    fp8_round_trip,
    limited_precision_matmul,
    limited_precision_matmul_reference,
    quantize,
    quantize_delayed,
    quantize_grad,
    representable_values,
)

RNG = np.random.default_rng(0)


def _normal(shape, seed=0, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# --------------------------------------------------------------------------------------- formats


def test_format_constants_match_the_paper():
    assert FORMATS["e4m3"].max == 448.0 and FORMATS["e5m2"].max == 57344.0
    assert FORMATS["e4m3"].mantissa_bits == 3 and FORMATS["e5m2"].mantissa_bits == 2
    assert FORMATS["e4m3"].min_normal == 2.0**-6 and FORMATS["e4m3"].min_subnormal == 2.0**-9
    values = representable_values("e4m3")
    assert values.max() == 448.0 and values.min() == -448.0
    assert len(values) == 253  # 256 patterns - 2 NaNs - the duplicate zero (-0 == 0)
    assert representable_values("e5m2").max() == 57344.0


def test_an_unscaled_500_becomes_nan_but_quantize_keeps_it():
    assert bool(jnp.isnan(jnp.asarray(500.0).astype(jnp.float8_e4m3fn).astype(jnp.float32)))
    q, scale = quantize(jnp.asarray([[500.0, -1.0]]), "e4m3", None)
    back = dequantize(q, scale, None)
    assert bool(jnp.all(jnp.isfinite(back)))
    np.testing.assert_allclose(np.asarray(back), [[500.0, -1.0]], rtol=2.0**-4)


# --------------------------------------------------------------------------- quantise / dequantise


def _bound(x, scale, block, fmt):
    """Round-to-nearest error bound: half a spacing, relative in the normal range, absolute below."""
    f = FORMATS[fmt]
    s = np.asarray(scale, np.float64)
    if block is not None:
        s = np.repeat(np.repeat(s, block[0], axis=-2), block[1], axis=-1)
    rel = 2.0 ** -(f.mantissa_bits + 1) * np.abs(np.asarray(x, np.float64))
    return np.maximum(rel, 0.5 * f.min_subnormal * s) * (1 + 1e-6)


GRANULARITIES = {
    "tensor": ((8, 64), None),
    "tile": ((4, 256), (1, 128)),
    "block": ((256, 256), (128, 128)),
    "odd": ((6, 12), (3, 4)),
}


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("granularity", list(GRANULARITIES))
@given(
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.floats(-30, 30),
    n_outliers=st.integers(0, 4),
    outlier=st.floats(1, 1e4),
    zero_frac=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_round_trip_error_is_within_the_format_bound(
    fmt, granularity, seed, log_scale, n_outliers, outlier, zero_frac
):
    shape, block = GRANULARITIES[granularity]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 10.0**log_scale
    x[rng.random(shape) < zero_frac] = 0.0
    flat = x.reshape(-1)
    flat[rng.integers(0, flat.size, n_outliers)] *= outlier  # a few outliers
    x = jnp.asarray(x, jnp.float32)
    q, scale = quantize(x, fmt, block)
    back = np.asarray(dequantize(q, scale, block), np.float64)
    assert np.isfinite(back).all() and np.isfinite(np.asarray(scale)).all()
    err = np.abs(back - np.asarray(x, np.float64))
    assert (err <= _bound(x, scale, block, fmt)).all(), float(
        np.max(err - _bound(x, scale, block, fmt))
    )


@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-30, 37))
def test_huge_and_tiny_values_never_become_nan(seed, log_scale):
    x = _normal((2, 128), seed, 10.0**log_scale)
    for fmt in FORMATS:
        q, scale = quantize(x, fmt, (1, 128), pow2_scale=True)
        assert bool(jnp.all(jnp.isfinite(q.astype(jnp.float32))))
        assert bool(jnp.all(jnp.isfinite(dequantize(q, scale, (1, 128)))))


def test_scale_shapes():
    assert quantize(jnp.ones((4, 256)), block=(1, 128))[1].shape == (4, 2)
    assert quantize(jnp.ones((256, 384)), block=(128, 128))[1].shape == (2, 3)
    assert quantize(jnp.ones((256, 384)), block=(128, 1))[1].shape == (2, 384)
    assert quantize(jnp.ones((256, 384)), block=None)[1].shape == ()
    assert quantize(jnp.ones((3, 256, 128)), block=(128, 128))[1].shape == (3, 2, 1)  # per expert


def test_scale_is_the_block_max_over_the_format_max():
    x = np.zeros((2, 256), np.float32)
    x[0, 5], x[0, 200], x[1, 130] = -7.0, 3.0, 0.25
    for fmt, top in (("e4m3", 448.0), ("e5m2", 57344.0)):
        scale = np.asarray(quantize(jnp.asarray(x), fmt, (1, 128))[1])
        np.testing.assert_allclose(scale[0], [7.0 / top, 3.0 / top], rtol=1e-7)
        np.testing.assert_allclose(scale[1, 1], 0.25 / top, rtol=1e-7)
        assert 0 < scale[1, 0] < 1e-20  # the all-zero tile gets the floor, not 0
    q, scale = quantize(jnp.zeros((1, 128)), "e4m3", (1, 128))
    assert not np.asarray(q.astype(jnp.float32)).any()
    assert not np.asarray(dequantize(q, scale, (1, 128))).any()


@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-20, 20))
def test_pow2_scales_are_the_next_power_of_two(seed, log_scale):
    x = _normal((4, 256), seed, 10.0**log_scale)
    scale = np.asarray(quantize(x, "e4m3", (1, 128), pow2_scale=True)[1], np.float64)
    exact = np.asarray(quantize(x, "e4m3", (1, 128))[1], np.float64)
    mantissa, _ = np.frexp(scale)
    assert (mantissa == 0.5).all(), "every pow2 scale is an exact power of two"
    assert (scale >= exact).all() and (scale < 2 * exact).all()


def test_bad_shapes_formats_and_blocks_raise_value_error():
    with pytest.raises(ValueError, match="does not divide into blocks"):
        quantize(jnp.ones((4, 200)), block=(1, 128))
    with pytest.raises(ValueError, match="fmt must be one of"):
        quantize(jnp.ones((4, 128)), fmt="e3m4")
    with pytest.raises(ValueError, match="block must be None or a pair"):
        quantize(jnp.ones((4, 128)), block=(0, 128))
    with pytest.raises(ValueError, match="does not divide into blocks"):
        dequantize(jnp.ones((4, 200)), jnp.ones((4, 2)), (1, 128))
    assert fit_block((128, 128), (64, 256)) == (64, 128)  # clipped to a short axis
    with pytest.raises(ValueError, match="fp8_matmul needs"):
        fp8_matmul(jnp.ones((4, 8)), jnp.ones((4, 8)))
    with pytest.raises(ValueError, match="promote_every"):
        limited_precision_matmul(jnp.ones((4, 64)), jnp.ones((64, 4)), 13, 32, 48)


def test_delayed_scaling_saturates_a_new_outlier_without_nan():
    history = jnp.full((4,), 2.0)  # earlier steps saw max |x| = 2
    x = jnp.asarray([[1.0, 100.0]])  # a new outlier, 50x the history
    q, scale, new_history = quantize_delayed(x, history, "e4m3")
    back = np.asarray(q.astype(jnp.float32) * scale)
    np.testing.assert_allclose(float(scale), 2.0 / 448.0, rtol=1e-7)
    assert back[0, 1] == pytest.approx(2.0) and np.isfinite(back).all()  # clipped to the old max
    assert float(new_history[0]) == 100.0  # ... and remembered for the next step


# ------------------------------------------------------------------------------ the accumulator

ACCUMULATORS = [(13, 32, 128), (13, 32, None), (10, 16, 64), (13, 32, 96), (None, 32, 128)]


@pytest.mark.parametrize("bits, k_slice, promote", ACCUMULATORS)
def test_fast_accumulator_equals_the_reference_loop_on_exact_integers(bits, k_slice, promote):
    # Non-negative integer products: every float32 sum is exact whatever its order, while the
    # running sums exceed 2^14, so the 13-bit truncation really drops bits.
    a = jnp.asarray(RNG.integers(0, 16, (24, 1000)), jnp.float32)
    b = jnp.asarray(RNG.integers(0, 16, (1000, 40)), jnp.float32)
    fast = np.asarray(limited_precision_matmul(a, b, bits, k_slice, promote))
    ref = np.asarray(limited_precision_matmul_reference(a, b, bits, k_slice, promote))
    np.testing.assert_array_equal(fast, ref)
    if bits is not None and promote is None:
        assert (fast != np.asarray(a @ b)).any(), "the truncation should have lost something"


@pytest.mark.parametrize("bits, k_slice, promote", ACCUMULATORS)
def test_fast_accumulator_matches_the_reference_loop_on_random_values(bits, k_slice, promote):
    a, b = _normal((600, 256), 1), _normal((256, 48), 2)  # 600 rows: more than one row chunk
    fast = np.asarray(limited_precision_matmul(a, b, bits, k_slice, promote))
    ref = np.asarray(limited_precision_matmul_reference(a, b, bits, k_slice, promote))
    np.testing.assert_allclose(fast, ref, rtol=0, atol=2.0**-10 * np.abs(ref).max())


def test_fp8_matmul_with_a_full_accumulator_equals_dequantize_then_matmul():
    a, b = _normal((64, 256), 3), _normal((256, 384), 4)
    qa, sa = quantize(a, "e4m3", (1, 128))
    qb, sb = quantize(b, "e4m3", (128, 128))
    want = np.asarray(dequantize(qa, sa, (1, 128)) @ dequantize(qb, sb, (128, 128)))
    np.testing.assert_array_equal(np.asarray(fp8_matmul(a, b, acc_mantissa_bits=None)), want)
    full = fp8_matmul(a, b, acc_mantissa_bits=23)  # every slice kept in full float32
    np.testing.assert_allclose(np.asarray(full), want, rtol=1e-5, atol=1e-4)
    # ... and the FP8 product is close to, but not equal to, the float32 one.
    exact = np.asarray(a @ b)
    rel = np.linalg.norm(want - exact) / np.linalg.norm(exact)
    assert 1e-3 < rel < 0.05


def _accumulation_error(K, promote, seed):
    a, b = _normal((32, K), seed), _normal((K, 32), seed + 1)
    exact = np.asarray(jnp.dot(a, b, precision="highest"), np.float64)
    got = np.asarray(limited_precision_matmul(a, b, 13, 32, promote), np.float64)
    return np.linalg.norm(got - exact) / np.linalg.norm(exact)


def test_error_grows_with_k_without_promotion_and_not_with_it():
    never = [np.mean([_accumulation_error(K, None, s) for s in (0, 10)]) for K in (256, 4096)]
    every = [np.mean([_accumulation_error(K, 128, s) for s in (0, 10)]) for K in (256, 4096)]
    assert never[1] > 4 * never[0], never  # K 16x longer: the truncation error builds up
    assert every[1] < 2 * every[0], every  # promotion every 128: it stays at one window's error
    assert every[1] < never[1] / 10, (every, never)


# ------------------------------------------------------------------------------------ Fp8Linear


def test_fp8_linear_gradients_equal_the_hand_written_fp8_backward():
    cfg = FP8Config()
    x, w, probe = _normal((200, 256), 5), _normal((256, 128), 6, 0.06), _normal((200, 128), 7)
    loss = lambda x, w: jnp.sum(fp8_linear(x, w, cfg) * probe)  # noqa: E731
    dx, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)

    @jax.jit
    def by_hand(x, w, dy):
        acc = lambda a, b: limited_precision_matmul(a, b, 13, 32, 128)  # noqa: E731
        w8 = dequantize(*quantize(w, "e4m3", (128, 128)), (128, 128))
        # Dgrad: dy in 1x128 tiles, times the forward's FP8 weight, transposed.
        dx = acc(dequantize(*quantize(dy, "e4m3", (1, 128)), (1, 128)), w8.T)
        # Wgrad: x from its stored FP8 copy; x^T and dy^T re-tiled 1x128 along the 200 tokens, the
        # last tile 72 tokens long (zero-padded to 128 for its max).
        x8 = dequantize(*quantize(x, "e4m3", (1, 128)), (1, 128))
        pad = ((0, 0), (0, 56))
        xt8 = dequantize(*quantize(jnp.pad(x8.T, pad), "e4m3", (1, 128)), (1, 128))[:, :200]
        dyt8 = dequantize(*quantize(jnp.pad(dy.T, pad), "e4m3", (1, 128)), (1, 128))[:, :200]
        return dx, acc(xt8, dyt8.T)

    want_dx, want_dw = by_hand(x, w, probe)
    for got, want in ((dx, want_dx), (dw, want_dw)):
        # Equal up to the order of float32 additions inside a slice, which can move a truncation
        # by one step of the 13-bit accumulator (2^-13 relative).
        want = np.asarray(want)
        np.testing.assert_allclose(
            np.asarray(got), want, rtol=2.0**-12, atol=2.0**-13 * np.abs(want).max()
        )
    # ... and both are close to the float32 layer's gradients.
    for got, exact in ((dx, probe @ w.T), (dw, x.T @ probe)):
        rel = np.linalg.norm(np.asarray(got - exact)) / np.linalg.norm(np.asarray(exact))
        assert 1e-4 < rel < 0.06, rel


def test_fp8_linear_layer_matches_nnx_linear_from_the_same_key():
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")
    fp8 = Fp8Linear(128, 384, FP8Config(), kernel_init=init, rngs=nnx.Rngs(3))
    plain = nnx.Linear(128, 384, use_bias=False, kernel_init=init, rngs=nnx.Rngs(3))
    np.testing.assert_array_equal(np.asarray(fp8.kernel[...]), np.asarray(plain.kernel[...]))
    assert fp8.kernel[...].dtype == jnp.float32  # master weights stay float32
    x = _normal((2, 5, 128), 8)
    y, want = fp8(x), plain(x)
    assert y.shape == (2, 5, 384)
    rel = float(jnp.linalg.norm(y - want) / jnp.linalg.norm(want))
    assert 1e-4 < rel < 0.05, rel


def test_a_partial_last_block_is_zero_padded_for_its_max():
    x = _normal((4, 192), 12)  # 192 = one full 128-wide tile and a 64-wide one
    want = dequantize(*quantize(jnp.pad(x, ((0, 0), (0, 64))), "e4m3", (1, 128)), (1, 128))[:, :192]
    np.testing.assert_array_equal(np.asarray(fp8_round_trip(x, "e4m3", (1, 128))), np.asarray(want))
    tail = np.asarray(x)[:, 128:]  # the partial tile's scale is its own 64 values' max / 448
    y = np.asarray(fp8_round_trip(jnp.asarray(tail), "e4m3", (1, 128)))
    np.testing.assert_array_equal(np.asarray(want)[:, 128:], y)
    # ... and a layer of such widths runs: its forward is the FP8 GEMM of the round-tripped operands.
    layer = Fp8Linear(192, 64, FP8Config(), rngs=nnx.Rngs(0))
    got = layer(x)
    w = layer.kernel[...]
    expected = limited_precision_matmul(
        fp8_round_trip(x, "e4m3", (1, 128)), fp8_round_trip(w, "e4m3", (128, 128))
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, atol=1e-6)


def test_per_tensor_scaling_loses_small_channels_to_an_outlier():
    x = np.array(_normal((16, 256), 9))
    x[:, 3] *= 1e5  # one outlier channel, in the first 128-channel tile of every token
    errors = {}
    for name, block in (("tensor", None), ("tile", (1, 128))):
        back = np.asarray(fake_quantize(jnp.asarray(x), "e4m3", block))
        clean = slice(128, 256)  # the tile without the outlier
        errors[name] = np.abs(back - x)[:, clean].mean() / np.abs(x)[:, clean].mean()
    # E4M3's relative spacing is 1/8, so a well-scaled tile is off by ~2%; scaled by the outlier,
    # the same values land among the subnormals (or at zero).
    assert errors["tile"] < 0.04 and errors["tensor"] > 0.2, errors


def test_quantize_grad_is_the_identity_forward_and_quantizes_the_gradient():
    y, g = _normal((4, 128), 10), _normal((4, 128), 11)
    np.testing.assert_array_equal(
        np.asarray(quantize_grad(y, "e4m3", (1, 128), False)), np.asarray(y)
    )
    _, vjp = jax.vjp(lambda y: quantize_grad(y, "e4m3", (1, 128), False), y)
    want = dequantize(*quantize(g, "e4m3", (1, 128)), (1, 128))
    np.testing.assert_array_equal(np.asarray(vjp(g)[0]), np.asarray(want))
    _, vjp = jax.vjp(lambda y: fake_quantize(y, "e4m3", (1, 128), False), y)
    np.testing.assert_array_equal(np.asarray(vjp(g)[0]), np.asarray(g))  # straight through


# ------------------------------------------------------------------------------------- FP8Config


def test_fp8_config_validates_and_round_trips_through_json_lists():
    cfg = FP8Config()
    assert (cfg.fmt, cfg.act_block, cfg.weight_block, cfg.acc_mantissa_bits, cfg.promote_every) == (
        "e4m3",
        (1, 128),
        (128, 128),
        13,
        128,
    )
    as_json = {"act_block": [1, 128], "weight_block": [128, 128], "grad_block": [1, 128]}
    assert FP8Config(**as_json) == cfg and FP8Config(**as_json).act_block == (1, 128)
    bad = [
        dict(fmt="e3m4"),
        dict(scaling="channel"),
        dict(act_block=(1, 0)),
        dict(act_block=None),
        dict(acc_mantissa_bits=30),
        dict(k_slice=0),
        dict(promote_every=100),
        dict(pow2_scale=1),
        dict(grad_fmt="fp16"),
    ]
    for fields in bad:
        name = next(iter(fields))
        with pytest.raises(ValueError, match=name):
            FP8Config(**fields)
    assert FP8Config(scaling="tensor").blocks() == (None, None, None)
