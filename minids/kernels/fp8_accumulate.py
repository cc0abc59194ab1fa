"""A GEMM through a limited-precision accumulator, fast: what `minids.fp8.limited_precision_matmul_reference` computes.

The plain form (minids/fp8.py) walks the contraction axis one MMA slice of `k_slice` elements at a
time: add the slice's float32 partial product to the accumulator, truncate the accumulator to
`acc_mantissa_bits` fraction bits, and every `promote_every` elements add it to a float32 total.
This kernel does the same additions in the same order, so the results are equal bit for bit
(tests/test_kernels.py), but compiles and runs fast on every backend:

- the slices of one promotion window are unrolled (so XLA fuses each add-and-truncate with its
  neighbours), or scanned when a window has more than 8;
- the windows are a `jax.lax.scan`, not a Python loop, so the program size does not grow with K;
- the rows are cut into chunks whose accumulator fits in a CPU core's cache (about 1 MB): the sums
  pass over the accumulator once per slice, which is memory-bound (4x slower) when it does not.

Shapes: M rows (tokens), I inputs (the contraction axis), O outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from minids.config import check_accumulator

_EXACT = jax.lax.Precision.HIGHEST  # float32 products even where the default is TF32 (GPUs)


def _truncate(x: Float[Array, "..."], bits: int) -> Float[Array, "..."]:
    """float32 x with only `bits` fraction bits kept, rounded toward zero (clear the low bits)."""
    mask = np.uint32((0xFFFFFFFF << (23 - bits)) & 0xFFFFFFFF)
    return jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(x, jnp.uint32) & mask, jnp.float32
    )


def limited_precision_matmul(
    a: Float[Array, "M I"],
    b: Float[Array, "I O"],
    acc_mantissa_bits: int | None = 13,
    k_slice: int = 32,
    promote_every: int | None = 128,
) -> Float[Array, "M O"]:
    """a @ b through a tensor-core accumulator of `acc_mantissa_bits` fraction bits (minids/fp8.py)."""
    check_accumulator(acc_mantissa_bits, k_slice, promote_every)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if acc_mantissa_bits is None:
        return jnp.dot(a, b, precision=_EXACT, preferred_element_type=jnp.float32)
    pad = (-a.shape[1]) % (promote_every or k_slice)  # zeros add nothing: trunc(acc + 0) = acc
    a, b = jnp.pad(a, ((0, 0), (0, pad))), jnp.pad(b, ((0, pad), (0, 0)))
    (M, n_in), n_out = a.shape, b.shape[1]
    window = promote_every or n_in  # elements between promotions
    n_windows, W = n_in // window, window // k_slice  # W: slices (MMA instructions) per window

    def window_sum(a_w, b_w):  # (m, window) @ (window, O) through the limited accumulator
        m = a_w.shape[0]

        def mma(acc, ab):
            return _truncate(acc + jnp.dot(*ab, precision=_EXACT), acc_mantissa_bits), None

        slices = (a_w.reshape(m, W, k_slice).transpose(1, 0, 2), b_w.reshape(W, k_slice, n_out))
        acc = jnp.zeros((m, n_out), jnp.float32)
        if W > 8:
            return jax.lax.scan(mma, acc, slices)[0]
        for w in range(W):  # unrolled, so that XLA fuses each add-and-truncate with its neighbours
            acc = mma(acc, (slices[0][w], slices[1][w]))[0]
        return acc

    def rows_sum(a_m):  # (m, I) @ (I, O): the windows one after the other, promoted in float32
        m = a_m.shape[0]
        if n_windows == 1:
            return window_sum(a_m, b)
        windows = (
            a_m.reshape(m, n_windows, window).transpose(1, 0, 2),
            b.reshape(n_windows, window, n_out),
        )
        promote = lambda total, ab: (total + window_sum(*ab), None)  # noqa: E731
        return jax.lax.scan(promote, jnp.zeros((m, n_out), jnp.float32), windows)[0]

    # Rows in chunks whose accumulator fits in a CPU core's cache (about 1 MB): the sums above pass
    # over the accumulator once per slice, which is memory-bound when it does not (4x slower).
    rows = max(8, 1 << max(0, (2**18 // n_out).bit_length() - 1))
    if M <= rows:
        return rows_sum(a)
    n_chunks = -(-M // rows)
    chunks = jnp.pad(a, ((0, n_chunks * rows - M), (0, 0))).reshape(n_chunks, rows, n_in)
    return jax.lax.map(rows_sum, chunks).reshape(n_chunks * rows, n_out)[:M]
