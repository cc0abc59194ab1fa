"""Exercise 02: multi-head latent attention, the latent cache and the absorbed score.

DeepSeek-V2 and V3 (arXiv 2405.04434 §2.1, 2412.19437 §2.1.1) shrink the key/value cache by caching
one small latent vector per token instead of every head's key and value. You will write the two
pieces that make this work, in plain JAX:

1. `latent_kv`: what one token leaves in the cache: the latent c_kv and the decoupled RoPE key.
2. `absorbed_scores`: attention scores computed straight from the cached latents, without ever
   rebuilding a key.
3. `absorbed_attention`: the whole absorbed attention, values included: the next piece, which
   notebook 02 only draws (its from-scratch MLA rebuilds keys and values at every step).

Points: 22 in all (latent_kv 8, absorbed_scores 6, absorbed_attention 8); a check is worth 1 point
unless its line below says 2.

Shapes use one set of letters: B batch, T query tokens, S cached tokens, D model width, N heads,
C latent width (kv_lora_rank), R RoPE width, Hn the per-head key width without position,
Hv the per-head value width.

How to work:
- Replace each `raise NotImplementedError` with your code. Keep the names and signatures.
- Grade yourself with `pytest exercises/test_02_mla.py` (add `-x` to stop at the first failure,
  `-k absorbed` to run only the absorbed-score checks). Every failure message says what was expected.
- `jnp.einsum` with the letters above does every product; no Python loops are needed.
- Your code must work under `jax.jit` and `jax.grad`, so use `jnp`, not `np`, on the inputs.

When both pass, compare with `minids/mla.py` (`latent_kv`, `absorbed_scores`), which the grader uses
as the answer key, and see them at work in `minids.mla.MLA`.
"""

from __future__ import annotations

import jax  # noqa: F401  (you may want jax.lax.rsqrt)
import jax.numpy as jnp  # noqa: F401  (you will want jnp)
from jaxtyping import Array, Bool, Float, Int

from minids.layers import apply_rope  # noqa: F401  (exercise 00's RoPE: rotate-half pairs (i, i + H/2))


def latent_kv(
    x: Float[Array, "B T D"],
    w_dkv: Float[Array, "D CR"],
    norm_scale: Float[Array, " C"],
    positions: Int[Array, "B T"],
    kv_lora_rank: int,
    rope_theta: float = 10_000.0,
    eps: float = 1e-6,
    yarn: object = None,
) -> tuple[Float[Array, "B T C"], Float[Array, "B T R"]]:
    """The two things MLA caches for each token (V2 eqs. 9 and 15).

    The idea. One matrix w_dkv (D x (C + R)) maps each token's hidden state x to C + R numbers:

        kv     = x @ w_dkv                                  (B, T, C + R)
        c_kv   = RMSNorm(kv[..., :C]) * norm_scale          the latent: keys and values are rebuilt
                                                            from it by up-projections later
        k_rope = RoPE(kv[..., C:], positions)               one small key that carries position,
                                                            shared by every head

    RMSNorm divides each token's C numbers by sqrt(mean of their squares + eps), then multiplies by
    the learned per-channel `norm_scale`. RoPE rotates the R channels of k_rope by the token's
    position, exactly as in exercise 00 (you may call `apply_rope`, which wants a heads axis:
    give it k_rope[:, :, None, :] and take [:, :, 0, :] of the result).

    Why only these: everything else (per-head keys and values) is a fixed linear function of c_kv,
    so the cache needs C + R numbers per token per layer instead of 2 * N * H (DeepSeek-V3: 576
    instead of 32768).

    Args:
        x: hidden states (after the block's RMSNorm), shape (B, T, D).
        w_dkv: the down-projection, shape (D, C + R): the first C output columns make the latent.
        norm_scale: RMSNorm's learned scale for the latent, shape (C,).
        positions: each token's position, shape (B, T), integers.
        kv_lora_rank: C, a Python int.
        rope_theta: RoPE's frequency base.
        eps: RMSNorm's epsilon.
        yarn: always None here, and you may ignore it. It is there so that your function has
            minids' signature: minids uses it for YaRN's longer contexts (notebook 09).

    Returns:
        c_kv (B, T, C) and k_rope (B, T, R), in x's dtype.

    The grader checks (8 points, 1 per check): shapes and that together they hold exactly C + R numbers per token; c_kv
    against a hand-computed RMSNorm; that norm_scale multiplies it; k_rope unrotated at position 0
    and rotated by RoPE elsewhere; that scores between rope keys depend only on position
    differences; and that it works under `jax.jit`.
    """
    raise NotImplementedError


def absorbed_scores(
    q_nope: Float[Array, "B T N Hn"],
    q_rope: Float[Array, "B T N R"],
    c_kv: Float[Array, "B S C"],
    k_rope: Float[Array, "B S R"],
    w_uk: Float[Array, "C N Hn"],
    scale: float,
) -> Float[Array, "B N T S"]:
    """Attention scores of every query against every cached token, in latent space.

    The naive way. Rebuild each cached token's per-head key from its latent, then take dot products:

        k_nope[b, s, n, :] = sum_c c_kv[b, s, c] * w_uk[c, n, :]          (B, S, N, Hn)
        score[b, n, t, s]  = scale * (q_nope[b, t, n] . k_nope[b, s, n]  +  q_rope[b, t, n] . k_rope[b, s])

    That costs S * C * N * Hn multiply-adds per step, for every cached token, at every step.

    The absorbed way (V2 §2.1.2). The key up-projection is linear, so move it to the query side:
    q_nope . (W_UK c_kv) = (W_UK^T q_nope) . c_kv. Map each query into latent space once,

        q_latent[b, t, n, c] = sum_h q_nope[b, t, n, h] * w_uk[c, n, h]     (B, T, N, C)

    and score it against the cached latents directly; the rope part is unchanged (k_rope is shared
    by all heads, so there is no head axis on it):

        score[b, n, t, s] = scale * (q_latent[b, t, n] . c_kv[b, s]  +  q_rope[b, t, n] . k_rope[b, s])

    Same numbers, but no key is ever built. (This only works because RoPE is kept out of c_kv: a
    rotation between q and W_UK would depend on the key's position. That is why the decoupled
    k_rope exists.)

    Args:
        q_nope: the position-free part of the queries, (B, T, N, Hn).
        q_rope: the rotated part of the queries, (B, T, N, R).
        c_kv: cached latents, (B, S, C).
        k_rope: cached rope keys, (B, S, R).
        w_uk: the key up-projection, one (C, Hn) matrix per head: (C, N, Hn).
        scale: the softmax scale, 1 / sqrt(Hn + R) in MLA.

    Returns:
        Scores (B, N, T, S), float32, before masking and softmax.

    The grader checks (6 points, 1 per check): shape and dtype; equality with the naive computation (and, if they differ,
    which term is off: the scale, the rope part or the latent part); a hand-computed case; that
    `scale` multiplies both parts; gradients; and that it works under `jax.jit`.
    """
    raise NotImplementedError


def absorbed_attention(
    q_nope: Float[Array, "B T N Hn"],
    q_rope: Float[Array, "B T N R"],
    c_kv: Float[Array, "B S C"],
    k_rope: Float[Array, "B S R"],
    w_uk: Float[Array, "C N Hn"],
    w_uv: Float[Array, "C N Hv"],
    mask: Bool[Array, "#B T S"],
    scale: float,
) -> Float[Array, "B T N Hv"]:
    """MLA attention straight from the latent cache: W_UK folded into the query, W_UV applied last.

    The naive way rebuilds every cached token's value per head, v[s, n] = W_UV[:, n]^T c_kv[s]
    (S·N·Hv numbers per step), then takes the softmax-weighted sum over s. But the weighted sum is
    linear, so

        sum_s p[n, t, s] * (W_UV[:, n]^T c_kv[s]) = W_UV[:, n]^T (sum_s p[n, t, s] * c_kv[s])

    Average the latents first, one C-vector per head and query, then lift that one vector with
    W_UV. Nothing of size S·N·Hv is ever built (DeepSeek-V2 §2.1.2, "absorb W_UV into W_O").

    Steps:
        scores = absorbed_scores(...)                          (B, N, T, S), your function above
        scores = a very negative number where mask is False   (mask (B or 1, T, S) -> add an N axis)
        p = softmax(scores, axis=-1)
        latent_out = sum_s p * c_kv[s]                         (B, T, N, C)
        out = latent_out @ W_UV per head                       (B, T, N, Hv)

    Args: as absorbed_scores, plus w_uv (C, N, Hv), the value up-projection, and mask, bool,
        True where query t may read cached slot s.

    Returns: (B, T, N, Hv), the dtype of c_kv.

    The grader checks (8 points): shape and dtype (1); equality with attention over rebuilt keys
    and values, computed in the grader (2); masked slots have no effect (2); a fully masked row is
    finite (1); gradients equal the naive computation's (1); it works under `jax.jit` (1).
    """
    raise NotImplementedError
