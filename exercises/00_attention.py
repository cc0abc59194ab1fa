"""Exercise 00: rotary position embeddings, causal self-attention, and the KV-cache decode step.

Every DeepSeek layer starts from these functions. You will write them in plain JAX (`jax.numpy` as
`jnp`), for one batch of sequences:

1. `apply_rope`: tell each query and key vector where it sits in the sequence by rotating it.
2. `causal_self_attention`: let each position read from itself and the positions before it.
   (Notebook 00 writes these two in numpy; here they must also work under jit and grad.)
3. `attention_mask`: which cache slots a query may read when it is not at position 0 (the next
   piece: generating with a KV cache, where a new token at slot `offset` reads slots 0..offset).
4. `dot_product_attention`: attention with that mask and with grouped-query heads, N query heads
   sharing M key/value heads (GQA): the layer notebook 00 uses, which it does not write out.

Shapes use one set of letters: B batch, T query length, S key length (cache slots), N query heads,
M key/value heads (N = M * G), H head dimension (even), Hv value head dimension.

Points: 47 in all (apply_rope 10, causal_self_attention 9, attention_mask 10, dot_product_attention
18); a check is worth 1 point unless its line below says 2.

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
from jaxtyping import Array, Bool, Float, Int


def apply_rope(
    x: Float[Array, "B T N H"],
    positions: Int[Array, "B T"],
    theta: float = 10000.0,
    yarn: object = None,
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
        yarn: always None here, and you may ignore it. It is there so that your function has
            minids' signature: minids uses it for YaRN's longer contexts (notebook 09).

    Returns:
        The rotated x: same shape (B, T, N, H) and same dtype as x.

    Hints:
        - `jnp.arange(H // 2)` gives i; the angles have shape (B, T, H/2). Add a heads axis,
          (B, T, 1, H/2), so they broadcast over the N heads.
        - Compute in float32 (`x.astype(jnp.float32)`), then cast the result back with
          `.astype(x.dtype)`, so that a bfloat16 input gives a bfloat16 output.

    The grader checks (10 points, 1 per check): shape and dtype (float32 and bfloat16); position 0 leaves x unchanged;
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

    The grader checks (9 points, 1 per check): shape and dtype (float32 and bfloat16); changing future tokens does not
    change earlier outputs; position 0 returns v[0]; with q = 0 the attention is uniform, so
    position t returns the mean of v[0..t]; a hand-computed case that pins the 1/sqrt(H) scale;
    agreement with a plain numpy version written in the grader; finite gradients under
    `jax.grad`; it works under `jax.jit`.
    """
    raise NotImplementedError


def attention_mask(
    q_len: int,
    kv_len: int,
    offset: Int[Array, ""] | int = 0,
    key_mask: Bool[Array, "B S"] | None = None,
) -> Bool[Array, "#B T S"]:
    """Which key slots each query may read, when the queries sit at slots offset .. offset + T - 1.

    During generation a model keeps the keys and values of every earlier token in a cache of S
    slots. A step that feeds T new tokens stores them at slots offset, ..., offset + T - 1, and
    query t (at slot offset + t) may read every slot s <= offset + t: itself and all before it.
    With offset = 0 and T = S this is the ordinary causal (lower-triangular) mask.

    `key_mask` (B, S), when given, marks the slots that hold real tokens (False for left padding
    of a short prompt in a batch, and for slots not written yet); a query may read slot s only if
    key_mask[b, s] is also True, so the result then has a batch axis.

    Args:
        q_len: T, the number of new queries.
        kv_len: S, the number of cache slots.
        offset: the slot of the first new query; a Python int or a jnp integer scalar (it changes
            at every decode step, so under `jax.jit` it is a traced value: do not use `int()`).
        key_mask: optional bool (B, S).

    Returns:
        bool, shape (1, T, S) without key_mask, (B, T, S) with it.

    Hints: `jnp.arange(kv_len)[None, :] <= (offset + jnp.arange(q_len))[:, None]` is (T, S).

    The grader checks (10 points): shape and dtype (1); offset 0 is lower-triangular (1); a decode
    step, T = 1 at offset 3, reads slots 0..3 (2); a prefill of T = 3 at offset 2 (1); key_mask
    is combined with AND and gives a batch axis (2); a traced offset under `jax.jit` (2); a key
    slot may be read by a later query but never by an earlier one (1).
    """
    raise NotImplementedError


def dot_product_attention(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B S M H"],
    v: Float[Array, "B S M Hv"],
    mask: Bool[Array, "#B T S"],
    scale: float | None = None,
) -> Float[Array, "B T N Hv"]:
    """softmax(q k^T * scale, masked) v with grouped-query heads: the attention of a decode step.

    Grouped-query attention (Ainslie et al. 2023) stores only M key/value heads and lets G = N / M
    query heads share each one: query heads 0..G-1 read key/value head 0, heads G..2G-1 read head
    1, and so on (head n reads head n // G). M = N is ordinary multi-head attention, M = 1 is
    multi-query attention; a cache of M heads is N / M times smaller.

    For batch entry b, query head n (key/value head m = n // G), query t and key slot s:

        scores[t, s] = q[b, t, n] . k[b, s, m] * scale           (scale = 1 / sqrt(H) if None)
        scores[t, s] = a very negative number where mask[b, t, s] is False   (mask[0] if #B = 1)
        out[b, t, n] = sum_s softmax(scores[t])[s] * v[b, s, m]

    Args:
        q: (B, T, N, H) queries; k: (B, S, M, H) keys; v: (B, S, M, Hv) values (Hv may differ from
            H); N must be a multiple of M.
        mask: bool (B, T, S) or (1, T, S): True where query t may read slot s (`attention_mask`).
        scale: multiplies the scores; None means 1 / sqrt(H).

    Returns:
        (B, T, N, Hv), the dtype of v.

    Hints:
        - Reshape q to (B, T, M, G, H) so that each key/value head meets its G query heads:
          `jnp.einsum("BTMGH,BSMH->BMGTS", ...)`. Do not copy k and v N / M times (that would
          undo the memory GQA saves), and do not pair head n with n % M.
        - Mask with a large finite negative number (e.g. -1e30) rather than -inf: a query whose
          every slot is masked (a padding position) then gets a uniform softmax, not NaN.

    The grader checks (18 points): shape and dtype with M < N and Hv != H (1); bfloat16 in,
    bfloat16 out (1); head n reads key/value head n // G (2); M = N equals multi-head attention
    (1); M = 1 equals multi-query attention (1); masked slots have no effect (2); a decode step
    over a cache equals the last row of full causal attention (2); a fully masked row is finite
    (2); the `scale` argument is used (1); agreement with a numpy version in the grader (2);
    finite gradients under `jax.grad` (1); it works under `jax.jit` (2).
    """
    raise NotImplementedError
