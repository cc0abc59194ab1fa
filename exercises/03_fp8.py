"""Exercise 03: tile-wise FP8 quantisation, as DeepSeek-V3 trains with it.

An FP8 number has 8 bits. E4M3 (`jnp.float8_e4m3fn`: 4 exponent bits, 3 mantissa bits) holds
values up to 448, with about two significant digits; E5M2 (`jnp.float8_e5m2`) reaches 57344 with
even fewer. So before a tensor is cast to FP8 it is divided by a *scale*, which brings its largest
value to the format's largest, and the scale is kept beside it (in float32) to undo the division:

    q = cast_to_fp8(x / s)          x  ~  q * s        s = max |x| / 448      (for E4M3)

DeepSeek-V3 (arXiv 2412.19437, §3.3.2) does not use one scale for a whole tensor: a single
outlier would set it, and the small values would round to zero. It uses one scale per *tile*:
per 1x128 tile of activations (each token's 128 channels) and per 128x128 block of weights. You
will write `quantize` and `dequantize` for any such block shape, in plain JAX (notebook 03 writes
them in numpy), and then the next piece, which the notebook only calls:

`quantize_delayed`: the per-tensor *delayed* scaling that FP8 training used before V3 (NVIDIA's
Transformer Engine): the scale comes from the largest |x| of the last few steps, not of this
tensor, so no extra pass over the data is needed, but a new outlier has no room and saturates.
V3 chose fine-grained *online* scales (yours above) precisely to avoid this (§3.3.2).

Points: 23 in all (quantize and dequantize 15, quantize_delayed 8); a check is worth 1 point
unless its line below says 2.

Shapes: x is a matrix (R, C), R rows and C columns; a block (br, bc) must divide it, giving
(R / br) x (C / bc) blocks, each with its own scale.

How to work:
- Replace each `raise NotImplementedError` with your code. Keep the names and signatures.
- Grade yourself with `pytest exercises/test_03_fp8.py` (add `-x` to stop at the first failure,
  `-k scale` to run only the scale checks). Every failure message says what was expected.
- No Python loops over blocks are needed: reshape (R, C) to (R/br, br, C/bc, bc) and reduce over
  axes 1 and 3.
- Your code must work under `jax.jit`, so use `jnp`, not `np`, on the inputs.

When all checks pass, compare with `minids/fp8.py` (`quantize`, `dequantize`), which the grader
uses as the answer key.
"""

from __future__ import annotations

import jax  # noqa: F401  (you may want jax.lax)
import jax.numpy as jnp  # noqa: F401  (you will want jnp)
from jaxtyping import Array, Float

# The largest finite value of each format, and its jnp dtype.
FORMAT_MAX = {"e4m3": 448.0, "e5m2": 57344.0}
FORMAT_DTYPE = {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2}


def quantize(
    x: Float[Array, "R C"],
    fmt: str = "e4m3",
    block: tuple[int, int] | None = (1, 128),
    pow2_scale: bool = False,
) -> tuple[Array, Float[Array, "..."]]:
    """Cast x to FP8 block by block: return (q, scale).

    The idea. Cut x into blocks of shape `block`. For each block b:

        scale_b = max(|x| over the block) / FORMAT_MAX[fmt]
        q       = cast(x / scale_b)  for every value of the block, to FORMAT_DTYPE[fmt]

    so the largest value of each block lands exactly on the format's largest, and every other
    value keeps its size relative to it. Three traps:

    - Casting a value beyond the format's max to `float8_e4m3fn` gives NaN, not 448 (try
      `jnp.asarray(500.0).astype(jnp.float8_e4m3fn)`). Dividing by the scale is what brings every
      value within range; a `jnp.clip` to [-max, max] before the cast is cheap insurance.
    - An all-zero block has max 0: do not divide by zero. Floor the max at a tiny positive number
      (say 1e-30) before dividing by the format's max; such a block then quantises to zeros.
    - `block=None` means one scale for the whole tensor: scale is then a scalar, shape ().

    With `pow2_scale=True`, round every scale *up* to the next power of two (2^k with k an integer;
    a scale that is already a power of two stays). Scales then carry only an exponent, and
    multiplying by them is exact. DeepSeek-V3 already trained with such scales for a few
    activations (§3.3.3): the inputs of the linear layer after attention, whose 1x128 tiles are
    re-tiled to 128x1 for the backward pass without extra rounding error this way, and likewise
    the activations dispatched to the MoE up-projections and the activation gradients before the
    MoE down-projections. DeepSeek-V3.1 later stored its scales as UE8M0, an unsigned 8-bit
    exponent with no mantissa, which can hold nothing but a power of two.

    Args:
        x: the matrix to quantise, (R, C), float32.
        fmt: "e4m3" or "e5m2".
        block: (br, bc) dividing (R, C); (1, 128) is a 1x128 tile, (128, 128) a weight block;
            None is one scale for all of x.
        pow2_scale: round the scales up to powers of two.

    Returns:
        q: (R, C) array of dtype FORMAT_DTYPE[fmt].
        scale: float32, shape (R / br, C / bc), one entry per block (shape () for block=None).

    Raises:
        ValueError: if `block` does not divide x's shape; say so, with the shapes, in the message.

    Hints:
        - `x.reshape(R // br, br, C // bc, bc)` puts block (i, j) at [i, :, j, :].
        - `jnp.max(jnp.abs(tiles), axis=(1, 3))` is then each block's max |x|, shape (R/br, C/bc).
        - To divide every value by its block's scale, index the scale as `scale[:, None, :, None]`
          (shape (R/br, 1, C/bc, 1)) so that it lines up with the tiles, then reshape back.
        - For powers of two, `jnp.exp2(jnp.ceil(jnp.log2(s)))` is a start, but `log2` of an exact
          power of two may come out a hair above the integer; `m, e = jnp.frexp(s)` (s = m * 2^e
          with 0.5 <= m < 1) is exact.

    The grader checks (1 point per check): dtypes and scale shapes for 1x128 tiles, 128x128 blocks and per-tensor;
    scale values against max|x| / 448 (and / 57344 for E5M2) worked out by hand; that the round
    trip through `dequantize` is within half an FP8 spacing; that 500, 1e6 and an all-zero block
    never give NaN; that an outlier changes only its own tile; powers of two; the ValueError; and
    that it works under `jax.jit`.
    """
    raise NotImplementedError


def dequantize(
    q: Array, scale: Float[Array, "..."], block: tuple[int, int] | None = (1, 128)
) -> Float[Array, "R C"]:
    """Undo `quantize`: every value of q, as float32, times its own block's scale.

    Args:
        q: (R, C) FP8 values (any dtype that converts to float32).
        scale: one float32 per block, (R / br, C / bc), or a scalar for block=None.
        block: the block shape `quantize` used.

    Returns:
        float32 (R, C): q * scale, each block multiplied by its own scale.

    Hint: the same reshape as in `quantize`, multiply by `scale[:, None, :, None]`, reshape back.

    The grader checks (1 point per check): a hand-made example with a different scale for every tile; the round trip
    with `quantize`; per-tensor scales.
    """
    raise NotImplementedError


def quantize_delayed(
    x: Float[Array, "..."], amax_history: Float[Array, " H"], fmt: str = "e4m3"
) -> tuple[Array, Float[Array, ""], Float[Array, " H"]]:
    """Delayed per-tensor scaling: quantize x with a scale from earlier steps, then record this one.

    Transformer Engine keeps, per tensor, the max |x| of its last H steps (`amax_history`, most
    recent first). At each step:

        scale = max(amax_history) / FORMAT_MAX[fmt]       one float32 number, from the past only
        q = cast_to_fp8(clip(x / scale, -FORMAT_MAX, FORMAT_MAX))
        new_history = [max |x|, amax_history[0], ..., amax_history[H - 2]]   (drop the oldest)

    The clip matters: if x holds a value above what the history predicted, x / scale exceeds
    the format's max; E4M3 has no infinity, so an unclipped cast gives NaN. Clipped, the outlier
    saturates at +-FORMAT_MAX * scale instead, an error the next step's scale will fix.

    To keep a scale from being zero when the history holds only zeros, use
    max(max(amax_history), 1e-12).

    Args:
        x: any shape, float32. amax_history: (H,) float32. fmt: "e4m3" or "e5m2".

    Returns:
        (q, scale, new_history): q has x's shape and the FP8 dtype, scale is a float32 scalar,
        new_history has the history's shape and dtype.

    The grader checks (8 points): the three outputs' shapes and dtypes (1); the scale is the
    history's max over 448, not this x's (2); an outlier saturates at +-448, never NaN (2); the
    history shifts by one with max |x| in front (2); it works under `jax.jit` (1).
    """
    raise NotImplementedError
