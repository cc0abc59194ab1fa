"""Grader for exercise 03 (tile-wise FP8 quantisation): `pytest exercises/test_03_fp8.py`.

Each test checks one property of your `quantize` or `dequantize` in `exercises/03_fp8.py` and,
when it fails, says what it expected and what it got. With `MINIDS_EXERCISES=solutions` the same
tests grade minids' own implementations (the answer key).

The expected numbers are worked out here by hand or with a few lines of numpy, never by calling the
answer key, so reading a test tells you what the functions must do.
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
    Path(__file__).with_name("03_fp8.py"),
    solutions={
        "quantize": "minids.fp8",
        "dequantize": "minids.fp8",
        "quantize_delayed": "minids.fp8",
    },
)
quantize_delayed = exercise.quantize_delayed
quantize = exercise.quantize
dequantize = exercise.dequantize

QUANTIZE, DEQUANTIZE = "quantize", "dequantize"
E4M3_MAX, E5M2_MAX = 448.0, 57344.0
# Half the spacing between neighbouring FP8 values: relative for normal numbers (3 and 2 mantissa
# bits), and, below the smallest normal, half the subnormal spacing times the scale.
HALF_SPACING = {"e4m3": (2.0**-4, 2.0**-10), "e5m2": (2.0**-3, 2.0**-17)}


def random_matrix(shape, seed=0, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def pair(result, name=QUANTIZE):
    if not isinstance(result, tuple | list) or len(result) != 2:
        fail(f"{name} should return a pair (q, scale), got {type(result).__name__}")
    return result


def spread(scale, block, shape):
    """Each block's scale repeated over its block: an (R, C) array (numpy, float64)."""
    s = np.asarray(scale, np.float64)
    if block is None:
        return np.full(shape, float(s))
    return np.repeat(np.repeat(s, block[0], axis=0), block[1], axis=1)


def check_round_trip(x, fmt, block, what):
    q, scale = pair(quantize(x, fmt, block))
    back = dequantize(q, scale, block)
    check_shape(DEQUANTIZE, back, x.shape, letters="R C")
    check_finite(DEQUANTIZE, back, what="the round trip")
    rel, absolute = HALF_SPACING[fmt]
    x64 = np.asarray(x, np.float64)
    allowed = np.maximum(rel * np.abs(x64), absolute * spread(scale, block, x.shape)) * (1 + 1e-6)
    err = np.abs(np.asarray(back, np.float64) - x64)
    if (err > allowed).any():
        i = tuple(int(k) for k in np.unravel_index(np.argmax(err - allowed), err.shape))
        fail(
            f"{QUANTIZE}/{DEQUANTIZE}: {what}: the round trip is off by {err[i]:.3g} at index {i} "
            f"(x = {x64[i]:.6g}, got back {float(np.asarray(back)[i]):.6g}); half an FP8 spacing "
            f"there is {allowed[i]:.3g}.\nHint: q = cast(x / s) with each block's own s = max|x| / "
            "max_of_format, and dequantize multiplies by the same s."
        )


# ----------------------------------------------------------------------------------------------
# quantize: dtypes, shapes and scale values
# ----------------------------------------------------------------------------------------------


def test_quantize_returns_fp8_values_and_float32_scales():
    q, scale = pair(quantize(random_matrix((4, 256)), "e4m3", (1, 128)))
    check_shape(QUANTIZE, q, (4, 256), letters="R C")
    check_dtype(QUANTIZE, q, jnp.float8_e4m3fn, hint="cast with .astype(jnp.float8_e4m3fn)")
    check_dtype(QUANTIZE, scale, jnp.float32)
    q, _ = pair(quantize(random_matrix((4, 256)), "e5m2", (1, 128)))
    check_dtype(QUANTIZE, q, jnp.float8_e5m2, hint="fmt='e5m2' casts to jnp.float8_e5m2")


def test_scale_shape_of_1x128_tiles():
    _, scale = pair(quantize(random_matrix((4, 384)), "e4m3", (1, 128)))
    check_shape(QUANTIZE, scale, (4, 3), letters="R/1 C/128")


def test_scale_shape_of_128x128_blocks():
    _, scale = pair(quantize(random_matrix((256, 384)), "e4m3", (128, 128)))
    check_shape(QUANTIZE, scale, (2, 3), letters="R/128 C/128")


def test_scale_shape_per_tensor():
    _, scale = pair(quantize(random_matrix((8, 64)), "e4m3", None))
    check_shape(QUANTIZE, scale, (), letters="")


def test_scale_values_are_block_max_over_448():
    # Row 0: tile 0 holds -7 (its max |x|), tile 1 holds 3. Row 1: tile 0 holds 0.5, tile 1 is 2.
    x = np.zeros((2, 256), np.float32)
    x[0, 5], x[0, 9], x[0, 200], x[1, 0], x[1, 128:] = -7.0, 1.0, 3.0, 0.5, 2.0
    _, scale = pair(quantize(jnp.asarray(x), "e4m3", (1, 128)))
    check_close(
        QUANTIZE,
        scale,
        [[7 / 448, 3 / 448], [0.5 / 448, 2 / 448]],
        atol=0,
        rtol=1e-6,
        what="scales of the tiles [row 0: max |x| 7 and 3; row 1: 0.5 and 2]",
        hint="scale = max |x| over the tile (absolute value!) / 448, one per 1x128 tile.",
    )


def test_e5m2_scales_use_its_own_max():
    x = np.zeros((128, 128), np.float32)
    x[3, 4] = -1000.0
    _, scale = pair(quantize(jnp.asarray(x), "e5m2", (128, 128)))
    check_close(
        QUANTIZE,
        jnp.reshape(scale, (1,)),
        [1000.0 / E5M2_MAX],
        atol=0,
        rtol=1e-6,
        what="one 128x128 block with max |x| 1000 in E5M2",
        hint="E5M2's largest value is 57344, not 448.",
    )


def test_an_outlier_changes_only_its_own_tile():
    x = random_matrix((4, 256), seed=1)
    spiked = x.at[2, 10].set(5000.0)  # row 2, tile 0
    _, scale = pair(quantize(x, "e4m3", (1, 128)))
    _, scale2 = pair(quantize(spiked, "e4m3", (1, 128)))
    keep = np.ones((4, 2), bool)
    keep[2, 0] = False
    check_close(
        QUANTIZE,
        np.asarray(scale2)[keep],
        np.asarray(scale, np.float64)[keep],
        atol=0,
        what="scales of the tiles without the outlier",
        hint="each 1x128 tile takes its own max: reduce over the tile, not the row or tensor.",
    )
    if not float(np.asarray(scale2)[2, 0]) > 10 * float(np.asarray(scale)[2, 0]):
        fail(
            f"{QUANTIZE}: the tile holding the outlier 5000 should get a much larger scale "
            f"(about 5000 / 448 = 11.2), got {float(np.asarray(scale2)[2, 0]):.4g}"
        )


# ----------------------------------------------------------------------------------------------
# round trips and NaN safety
# ----------------------------------------------------------------------------------------------


def test_round_trip_of_1x128_tiles_with_outlier_channels():
    x = np.array(random_matrix((8, 256), seed=2))
    x[:, [7, 130]] *= 300.0  # two outlier channels
    for fmt in ("e4m3", "e5m2"):
        check_round_trip(jnp.asarray(x), fmt, (1, 128), f"1x128 tiles, {fmt}, outlier channels")


def test_round_trip_of_128x128_blocks_and_per_tensor():
    check_round_trip(
        random_matrix((256, 256), seed=3, scale=0.02),
        "e4m3",
        (128, 128),
        "128x128 blocks of small weights",
    )
    check_round_trip(
        random_matrix((8, 64), seed=4, scale=1e4), "e4m3", None, "one scale per tensor"
    )


def test_large_values_never_become_nan():
    x = jnp.asarray([[500.0, -1e6, 3.0, 0.001] * 32], jnp.float32)  # (1, 128)
    q, scale = pair(quantize(x, "e4m3", (1, 128)))
    check_finite(
        QUANTIZE,
        q.astype(jnp.float32),
        what="q for an input holding 500 and -1e6",
        hint="divide by the scale before the cast, and clip to [-448, 448].",
    )
    check_round_trip(x, "e4m3", (1, 128), "a tile holding 500 and -1e6")


def test_an_all_zero_tile_quantizes_to_zeros():
    x = jnp.zeros((2, 256), jnp.float32).at[0, 200].set(1.0)  # three all-zero tiles, one not
    q, scale = pair(quantize(x, "e4m3", (1, 128)))
    check_finite(
        QUANTIZE, scale, what="the scales", hint="floor max |x| at a tiny positive number."
    )
    if not (np.asarray(scale) > 0).all():
        fail(f"{QUANTIZE}: every scale should be positive (floor the max), got {np.asarray(scale)}")
    check_close(
        QUANTIZE,
        dequantize(q, scale, (1, 128)),
        np.asarray(x),
        atol=0,
        what="zeros stay zeros and the single 1.0 comes back exactly",
    )


def test_pow2_scales_are_the_next_power_of_two():
    x = random_matrix((4, 256), seed=5, scale=3.0).at[1, 0].set(448.0 * 0.25)  # a tile with max 112
    q, scale = pair(quantize(x, "e4m3", (1, 128), pow2_scale=True))
    s = np.asarray(scale, np.float64)
    amax = np.abs(np.asarray(x, np.float64)).reshape(4, 1, 2, 128).max(axis=(1, 3))
    exponent = np.log2(s)
    if not np.array_equal(exponent, np.round(exponent)):
        fail(
            f"{QUANTIZE}: with pow2_scale=True every scale should be a power of two, got {s.tolist()}"
        )
    want = 2.0 ** np.ceil(np.log2(amax / E4M3_MAX))
    want[1, 0] = 0.25  # 112 / 448 = 0.25 is already a power of two: it must stay
    check_close(
        QUANTIZE,
        s,
        want,
        atol=0,
        what="pow2 scales: the smallest power of two >= max|x|/448",
        hint="round up, not to the nearest; an exact power of two stays as it is.",
    )
    check_round_trip(x, "e4m3", (1, 128), "pow2 scales")


# ----------------------------------------------------------------------------------------------
# dequantize, errors, jit
# ----------------------------------------------------------------------------------------------


def test_dequantize_uses_each_tiles_own_scale():
    q = jnp.asarray([[1, 2, 3, 4], [-1, -2, -3, -4]], jnp.float32).astype(jnp.float8_e4m3fn)
    scale = jnp.asarray([[10.0, 100.0], [0.5, 2.0]], jnp.float32)  # (2, 2) for (1, 2) tiles
    check_close(
        DEQUANTIZE,
        dequantize(q, scale, (1, 2)),
        [[10, 20, 300, 400], [-0.5, -1, -6, -8]],
        atol=0,
        what="q = [[1, 2, 3, 4], [-1, -2, -3, -4]] with 1x2 tiles of scales [[10, 100], [0.5, 2]]",
        hint="tile (i, j) covers q[i, 2j:2j+2] and is multiplied by scale[i, j].",
    )
    check_close(
        DEQUANTIZE,
        dequantize(q, jnp.float32(0.5), None),
        0.5 * np.asarray(q.astype(jnp.float32)),
        atol=0,
        what="one scale 0.5 for the tensor",
    )


def test_a_block_that_does_not_divide_raises_value_error():
    try:
        quantize(random_matrix((4, 200)), "e4m3", (1, 128))
    except ValueError:
        return
    fail(
        f"{QUANTIZE}: x of shape (4, 200) cannot be cut into (1, 128) tiles; raise a ValueError "
        "that says so (check the shape before reshaping)."
    )


def test_quantize_works_under_jit():
    x = random_matrix((4, 256), seed=6)
    eager_q, eager_scale = pair(quantize(x, "e4m3", (1, 128)))
    with explain_tracer_errors(QUANTIZE, "jax.jit"):
        q, scale = pair(jax.jit(quantize, static_argnums=(1, 2, 3))(x, "e4m3", (1, 128), False))
    check_close(
        QUANTIZE, scale, np.asarray(eager_scale, np.float64), atol=0, what="scales under jit"
    )
    check_close(
        QUANTIZE,
        q.astype(jnp.float32),
        np.asarray(eager_q.astype(jnp.float32), np.float64),
        atol=0,
        what="q under jit",
    )


# ----------------------------------------------------------------------------------------------
# quantize_delayed
# ----------------------------------------------------------------------------------------------

DELAYED = "quantize_delayed"
HISTORY = jnp.asarray([2.0, 8.96, 4.0, 0.5], jnp.float32)  # max 8.96: scale 8.96 / 448 = 0.02


def delayed(x, history=HISTORY, fmt="e4m3"):
    result = quantize_delayed(jnp.asarray(x, jnp.float32), history, fmt)
    if not isinstance(result, tuple | list) or len(result) != 3:
        fail(
            f"{DELAYED} should return a triple (q, scale, new_history), got {type(result).__name__}"
        )
    q, scale, new_history = result
    check_shape(DELAYED, q, np.shape(x))
    check_shape(DELAYED, scale, ())
    check_shape(DELAYED, new_history, history.shape)
    return q, scale, new_history


def test_delayed_shapes_and_dtypes():
    q, scale, new_history = delayed(np.ones((3, 4)))
    check_dtype(DELAYED, q, jnp.float8_e4m3fn)
    check_dtype(DELAYED, scale, jnp.float32)
    check_dtype(DELAYED, new_history, jnp.float32)


@pytest.mark.points(2)
def test_delayed_scale_comes_from_the_history():
    x = np.full((2, 4), 1.0)  # this step's max |x| is 1, far below the history's 8.96
    q, scale, _ = delayed(x)
    check_close(
        DELAYED,
        scale,
        8.96 / 448,
        rtol=1e-6,
        what="the scale should be max(history) / 448 = 0.02, whatever this x holds",
        hint="delayed scaling uses the past steps' amax only: that is what saves a pass over x.",
    )
    check_close(
        DELAYED,
        np.asarray(q, np.float64),
        np.full((2, 4), 48.0),
        atol=0,
        what="1.0 / 0.02 = 50 rounds to 48 in E4M3 (its neighbours are 48 and 52)",
    )


@pytest.mark.points(2)
def test_delayed_outlier_saturates_and_never_becomes_nan():
    x = np.asarray([[1.0, -100.0, 100.0, 3.0]])  # 100 / 0.02 = 5000, far above 448
    q, _, _ = delayed(x)
    values = np.asarray(q, np.float64)
    check_finite(
        DELAYED,
        values,
        hint="clip x / scale to [-448, 448] before the cast: E4M3 has no infinity, so an "
        "out-of-range cast gives NaN.",
    )
    check_close(
        DELAYED,
        values,
        [[48.0, -448.0, 448.0, 144.0]],  # 3 / 0.02 = 150 rounds to 144 (E4M3 steps by 16 there)
        atol=0,
        what="values beyond the history's range saturate at +-448",
    )


@pytest.mark.points(2)
def test_delayed_history_shifts_with_this_steps_amax_in_front():
    x = np.asarray([[0.5, -7.25], [3.0, 1.0]])
    _, _, new_history = delayed(x)
    check_close(
        DELAYED,
        new_history,
        [7.25, 2.0, 8.96, 4.0],
        atol=1e-6,
        what="the new history is [max |x|, then the old one without its last entry]",
        hint="max |x| here is 7.25 (an absolute value); jnp.roll(history, 1).at[0].set(amax).",
    )


def test_delayed_works_under_jit():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8)), jnp.float32)
    with explain_tracer_errors(DELAYED, "jax.jit"):
        q, scale, new_history = jax.jit(quantize_delayed, static_argnums=2)(x, HISTORY, "e4m3")
    eager = delayed(x)
    check_close(DELAYED, np.asarray(q, np.float64), np.asarray(eager[0], np.float64), atol=0,
                what="q under jax.jit and without it")  # fmt: skip
    check_close(DELAYED, new_history, eager[2], atol=0, what="the history under jax.jit")
