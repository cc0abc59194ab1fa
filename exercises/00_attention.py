"""Exercise 00: rotary position embeddings and causal self-attention.

Every DeepSeek layer starts from these two functions. You will write both, in plain JAX
(`jax.numpy` as `jnp`), for one batch of sequences:

1. `apply_rope`: tell each query and key vector where it sits in the sequence by rotating it.
2. `causal_self_attention`: let each position read from itself and the positions before it.

Shapes use one set of letters: B batch, T sequence length, N heads, H head dimension (even).

How to work:
- Replace each `raise NotImplementedError` with your code. Keep the names and signatures.
- Grade yourself with `pytest exercises/test_00_attention.py` (add `-x` to stop at the first
  failure, `-k rope` to run only the RoPE checks). Every failure message says what was expected.
- No Python loops over positions are needed: broadcasting and `jnp.einsum` do it all.
- Your code must work under `jax.jit` and `jax.grad`, so use `jnp`, not `np`, on the inputs.

When both pass, compare with `minids/layers.py::apply_rope` and
`minids/attention.py::causal_self_attention`, which the grader uses as the answer key.
"""

from __future__ import annotations

import jax  # noqa: F401  (you may want jax.nn.softmax)
import jax.numpy as jnp  # noqa: F401  (you will want jnp)
from jaxtyping import Array, Float, Int


def apply_rope(
    x: Float[Array, "B T N H"], positions: Int[Array, "B T"], theta: float = 10000.0
) -> Float[Array, "B T N H"]:
    """Rotary position embedding (RoPE, Su et al. 2021): rotate channel pairs by a position's angle.

    The idea. Split the H channels of each head into H/2 pairs and treat each pair as a point in
    a plane. At position m, turn pair i by the angle

        angle(m, i) = m * theta ** (-2 * i / H)        for i = 0, 1, ..., H/2 - 1

    so pair 0 turns by m radians and later pairs turn ever more slowly. The dot product of a
    query rotated for position m and a key rotated for position n then depends only on m - n:
    attention sees relative positions without any learned position table.

    The layout. Pair i is channel i together with channel i + H/2 (the "rotate half" layout of
    LLaMA and DeepSeek), not channels 2i and 2i + 1. Writing x1 = x[..., :H/2] and x2 = x[..., H/2:]
    and cos, sin for the cosine and sine of the angles, the rotated vector is

        concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    which is the 2D rotation (a, b) -> (a cos - b sin, b cos + a sin) applied to every pair.

    Args:
        x: queries or keys, shape (B, T, N, H), H even.
        positions: integer position of each token, shape (B, T). Rows may differ
            (e.g. [[0, 1, 2], [5, 6, 7]]); every head of a token uses the same position.
        theta: the base of the frequencies, 10000.0 as in the paper.

    Returns:
        The rotated x: same shape (B, T, N, H) and same dtype as x.

    Hints:
        - `jnp.arange(H // 2)` gives i; the angles have shape (B, T, H/2). Add a heads axis,
          (B, T, 1, H/2), so they broadcast over the N heads.
        - Compute in float32 (`x.astype(jnp.float32)`), then cast the result back with
          `.astype(x.dtype)`, so that a bfloat16 input gives a bfloat16 output.

    The grader checks: shape and dtype (float32 and bfloat16); position 0 leaves x unchanged;
    lengths (norms) are preserved; <rope(q, m), rope(k, n)> depends only on m - n; hand-computed
    values for H = 2 (a plain rotation by m radians) and H = 4 (frequencies 1 and theta ** -0.5);
    the `theta` argument is used; each batch row uses its own positions; it works under `jax.jit`.
    """
    raise NotImplementedError


def causal_self_attention(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B T N H"],
    v: Float[Array, "B T N H"],
    scale: float | None = None,
) -> Float[Array, "B T N H"]:
    """Causal scaled dot-product attention (Vaswani et al. 2017, eq. 1), every head on its own.

    For each batch entry b and head n, with q, k, v the (T, H) slices of that head:

        scores = q @ k.T / sqrt(H)                         (T, T): query t against key s
        scores[t, s] = -inf wherever s > t                  the causal mask: no peeking ahead
        weights = softmax(scores, axis=-1)                  each row sums to 1
        out = weights @ v                                   (T, H)

    Position t therefore returns a weighted average of v[0], ..., v[t], weighted by how well
    query t matches each key. Position 0 can only see itself, so it returns v[0] exactly.

    Args:
        q, k, v: queries, keys and values, shape (B, T, N, H) each.
        scale: multiplies the scores; None means 1 / sqrt(H), the only case the grader checks
            (MLA passes a scale of its own; see minids/mla.py).

    Returns:
        The attention output, shape (B, T, N, H), same dtype as v.

    Hints:
        - `jnp.einsum("BTNH,BSNH->BNTS", q, k)` computes all the scores at once, (B, N, T, T);
          `jnp.einsum("BNTS,BSNH->BTNH", weights, v)` brings the result back to (B, T, N, H).
        - `jnp.tril(jnp.ones((T, T), dtype=bool))` is True where s <= t. Use `jnp.where` to
          put a very negative number (or -jnp.inf) where the mask is False, *before* the softmax.
        - `jax.nn.softmax(scores, axis=-1)` is the numerically stable softmax.
        - Scale by sqrt(H), the head dimension, not by sqrt(T) or by H.

    The grader checks: shape and dtype (float32 and bfloat16); changing future tokens does not
    change earlier outputs; position 0 returns v[0]; with q = 0 the attention is uniform, so
    position t returns the mean of v[0..t]; a hand-computed case that pins the 1/sqrt(H) scale;
    agreement with a plain numpy version written in the grader; finite gradients under
    `jax.grad`; it works under `jax.jit`.
    """
    raise NotImplementedError
