"""Causal attention for a training pass, fast: what `minids.attention.causal_self_attention` computes.

A training or scoring pass runs causal self-attention over whole sequences from position 0, with
no cache and no padding. `causal_attention` gives the numbers of the plain form
(`dot_product_attention(q, k, v, attention_mask(T, T))`, minids/attention.py), in value and gradient
(tests/test_kernels.py), by the route each backend runs best:

- CPU (XLA:CPU). Two tricks together make the attention of a `small` training step about 2.4x
  faster than autodiff of the plain form:
  - `blockwise_causal_attention` splits the queries into blocks and lets each block attend only to
    the keys it can see, so the scores above the diagonal blocks, which the causal mask throws away,
    are never computed (3/8 of all T x T scores for 4 blocks). FlashAttention skips the same blocks.
  - `cpu_attention` lays the G query heads that share a key/value head out as the rows of one
    matrix, adds the mask as a bias that fuses into the softmax, and writes the backward pass by
    hand (`jax.custom_vjp`) so that every matmul has a layout XLA:CPU runs well.
- GPU and TPU: `jax.nn.dot_product_attention(..., is_causal=True)`, XLA's own attention, with no
  CPU-specific layout forced on it.

Shapes (letters of minids/model.py): B batch, T queries, S keys, N query heads, M key/value heads,
G = N / M, H head dim (Hv the value head dim), Q = G*T query rows of one key/value head.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

MASKED = -1e30  # the score of a masked key: finite, so a fully masked row gives a uniform softmax


def causal_attention(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B T M H"],
    v: Float[Array, "B T M Hv"],
    scale: float | None = None,
) -> Float[Array, "B T N Hv"]:
    """Causal self-attention from position 0 (scale defaults to 1/sqrt(H)), by the backend's best route."""
    T = q.shape[1]
    if k.shape[1] != T:
        raise ValueError(
            f"causal_attention needs as many keys as queries, got {k.shape[1]} and {T}"
        )
    if jax.default_backend() != "cpu":
        return xla_causal_attention(q, k, v, scale)
    attend = partial(cpu_attention, every_query_sees_a_key=True)  # each causal query sees itself
    n_blocks = causal_blocks(T)
    if n_blocks > 1:
        return blockwise_causal_attention(q, k, v, n_blocks, attend, scale)
    return attend(q, k, v, causal_mask(T, T), scale)


def causal_mask(q_len: int, kv_len: int, offset: int = 0) -> Bool[Array, "1 T S"]:
    """True where query t (at position offset + t) may see key s: s <= offset + t."""
    return (jnp.arange(kv_len)[None, :] <= offset + jnp.arange(q_len)[:, None])[None]


# ---------------------------------------------------------------------------------- GPU / TPU


def xla_causal_attention(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B T M H"],
    v: Float[Array, "B T M Hv"],
    scale: float | None = None,
) -> Float[Array, "B T N Hv"]:
    """`jax.nn.dot_product_attention`, which wants values as wide as keys: a narrower value (MLA's
    Hv < Hn + R) is padded with zero channels, which give zero outputs, sliced off after."""
    H, Hv = q.shape[-1], v.shape[-1]
    if Hv < H:
        v = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, H - Hv)))
    scale = H**-0.5 if scale is None else scale
    out = jax.nn.dot_product_attention(
        q, k, v.astype(k.dtype), scale=scale, is_causal=True, implementation="xla"
    )
    return out[..., :Hv]


# ---------------------------------------------------------------------------------------- CPU


def causal_blocks(T: int) -> int:
    """How many query blocks the CPU path uses: up to 8, of at least 64 rows each.

    Blocks much smaller than 64 rows cost more in per-operation overhead than they save (measured on
    CPU for T = 32 .. 256); the cap keeps the unrolled graph small for long sequences.
    """
    for n in (8, 4, 2):
        if T % n == 0 and T // n >= 64:
            return n
    return 1


def blockwise_causal_attention(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B T M H"],
    v: Float[Array, "B T M Hv"],
    n_blocks: int,
    attend: Callable[..., Array],
    scale: float | None = None,
) -> Float[Array, "B T N Hv"]:
    """Causal attention computed one block of queries at a time, skipping the keys a block can't see.

    Split the T queries into `n_blocks` blocks of T/n rows. Block i (queries iT/n .. (i+1)T/n - 1)
    can only see keys 0 .. (i+1)T/n - 1, so it attends to those alone, with the causal mask offset
    to its first row. The scores above the diagonal blocks are never computed: (n + 1) / (2n) of
    the work (5/8 for 4 blocks), in smaller score tensors that stay in cache. `attend(q, k, v, mask,
    scale)` is `minids.attention.dot_product_attention` or anything with its contract.
    """
    T = q.shape[1]
    if T % n_blocks or k.shape[1] != T:
        raise ValueError(f"n_blocks ({n_blocks}) must divide T ({T}), and k must have T positions")
    rows = T // n_blocks
    blocks = []
    for i in range(n_blocks):
        seen = (i + 1) * rows  # keys 0 .. seen-1
        mask = causal_mask(rows, seen, offset=i * rows)
        blocks.append(attend(q[:, i * rows : seen], k[:, :seen], v[:, :seen], mask, scale))
    return jnp.concatenate(blocks, axis=1)


def cpu_attention(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B S M H"],
    v: Float[Array, "B S M Hv"],
    mask: Bool[Array, "#B T S"],
    scale: float | None = None,
    *,
    every_query_sees_a_key: bool = False,
) -> Float[Array, "B T N Hv"]:
    """`minids.attention.dot_product_attention`, laid out and differentiated for XLA:CPU.

    `every_query_sees_a_key=True` promises that no row of `mask` is all False (true of causal
    attention from position 0) and skips the work that gives such a row a zero gradient.

    - Heads first: the G query heads that share key/value head m are stacked as the rows of one
      (G*T, H) matrix, so the scores of each (batch, kv head) are one plain matmul, and no
      (B, M, G, T, S)-sized transpose is needed (the plain form's einsum makes one).
    - The scale multiplies q (T*H numbers), not the scores (T*S numbers).
    - The mask is added as a 0 / -1e30 bias instead of selected with `where`: the probabilities
      are identical (a score plus -1e30 rounds to -1e30), and the add fuses into the softmax.
    - The backward pass is written out (`_attend_backward`) so that every matmul has a layout
      XLA:CPU runs fast.

    Forward + backward about 1.7x faster than autodiff of the plain form (B=16, T=256, 8 query /
    4 kv heads of 32, CPU); the outputs agree to float32 rounding.
    """
    B, T, N, H = q.shape
    M, Hv = k.shape[2], v.shape[-1]
    G = N // M
    scale = H**-0.5 if scale is None else scale
    q = (q * scale).reshape(B, T, M, G, H).transpose(0, 2, 3, 1, 4).reshape(B, M, G * T, H)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, M, S, H) and (B, M, S, Hv)
    out = _attend(q, k, v, mask, G, every_query_sees_a_key)  # (B, M, G*T, Hv)
    return out.reshape(B, M, G, T, Hv).transpose(0, 3, 1, 2, 4).reshape(B, T, N, Hv)


def _transposed(x: Array) -> Array:
    """x with its last two axes swapped, as a real copy in memory.

    Without the barrier XLA folds the transpose back into the next matmul, which then contracts the
    long G*T axis of both operands: a batched "transposed" matmul that XLA:CPU runs about 5x slower.
    """
    return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attend(q, k, v, mask, groups: int, every_query_sees_a_key: bool):
    """Attention on heads-first tensors: q (B, M, G*T, H) already scaled, k (B, M, S, H), v (B, M, S, Hv)."""
    return _attend_forward(q, k, v, mask, groups, every_query_sees_a_key)[0]


def _attend_forward(q, k, v, mask, groups, every_query_sees_a_key):
    scores = jnp.einsum("BMQH,BMSH->BMQS", q, k, preferred_element_type=jnp.float32)
    # The mask as an added 0 / -1e30 bias, repeated for the G query heads of each row block: XLA:CPU
    # fuses this add into the matmul + softmax, but a `where`, or a reshape of the scores to
    # (B, M, G, T, S) to broadcast the mask, made that fusion 2-3x slower.
    bias = jnp.tile(jnp.where(mask, 0.0, MASKED), (1, groups, 1))[:, None]  # (B, 1, G*T, S)
    probs = jax.nn.softmax(scores + bias, axis=-1)  # (B, M, G*T, S)
    out = jnp.einsum("BMQS,BMSH->BMQH", probs.astype(v.dtype), v)
    # A query that sees no key at all (padding) gets uniform probabilities, as in the plain form;
    # there `where` passes it no gradient, here the bias would: `sees_a_key` zeroes it. Causal
    # attention from position 0 has no such query, and skips this pass over the scores.
    sees_a_key = None
    if not every_query_sees_a_key:
        sees_a_key = jnp.tile(jnp.any(mask, axis=-1), (1, groups))[
            :, None, :, None
        ]  # (B, 1, G*T, 1)
    return out, (q, k, v, probs, sees_a_key)


def _attend_backward(groups, every_query_sees_a_key, residuals, d_out):
    """The backward pass of softmax attention, written out (FlashAttention's, without the tiling).

    The residuals are q, k, v and the probabilities P (one float32 per score, as autodiff keeps).

    With P = softmax(S) and O = P V: dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dP * P)),
    dQ = dS K, dK = dS^T Q. The two products that contract over the queries (dV, dK) get their
    small operand (dO, Q) transposed in memory first (`_transposed`).
    """
    q, k, v, probs, sees_a_key = residuals
    f32 = jnp.float32
    d_probs = jnp.einsum("BMQH,BMSH->BMQS", d_out, v, preferred_element_type=f32)
    d_scores = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True))
    if sees_a_key is not None:
        d_scores = jnp.where(sees_a_key, d_scores, 0.0)
    d_scores = d_scores.astype(q.dtype)
    dq = jnp.einsum("BMQS,BMSH->BMQH", d_scores, k)
    # dK^T and dV^T, (B, M, H, S): asking einsum for (B, M, S, H) makes it swap the operands back.
    dk = jnp.einsum("BMHQ,BMQS->BMHS", _transposed(q), d_scores)
    dv = jnp.einsum("BMHQ,BMQS->BMHS", _transposed(d_out), probs.astype(d_out.dtype))
    dk, dv = jnp.swapaxes(dk, -1, -2), jnp.swapaxes(dv, -1, -2)  # (B, M, S, H)
    return dq, dk.astype(k.dtype), dv.astype(v.dtype), None


_attend.defvjp(_attend_forward, _attend_backward)
