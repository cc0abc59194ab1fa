"""Multi-head latent attention (MLA): a key/value cache of one small latent per token.

DeepSeek-V2 §2.1 (eqs. 1-19), kept unchanged in DeepSeek-V3 §2.1.1. With standard multi-head
attention each token caches N keys and N values of H numbers each, 2·N·H per layer. MLA caches one
latent vector instead and rebuilds the keys and values from it:

    c_kv   = RMSNorm(W_DKV h)                        (C numbers: the latent, eq. 9)
    k_nope = W_UK c_kv,   v = W_UV c_kv              (per head, Hn and Hv numbers: eqs. 10-11)

RoPE does not fit that scheme (see "decoupled RoPE" below), so position goes into a separate,
small key shared by all heads, and a matching part of each query:

    k_rope = RoPE(W_KR h)                            (R numbers, one for all heads: eq. 15)
    q      = W_UQ RMSNorm(W_DQ h)  -> per head [q_nope (Hn) ; RoPE(q_rope) (R)]   (eqs. 12-14)
    score  = (q_nope · k_nope + q_rope · k_rope) / sqrt(Hn + R)                     (eqs. 16-18)

Only c_kv and k_rope are cached: C + R numbers per token per layer (V3: 512 + 64 = 576, against
2·128·128 = 32768 for MHA with the same heads). V2-Lite skips query compression (`q_lora_rank=0`:
q = W_Q h). In code, W_DKV and W_KR are one matrix `wkv_a` (D -> C + R), and W_UK and W_UV are one
matrix `wkv_b` (C -> N·(Hn + Hv)), as in DeepSeek's released weights.

Two ways to decode from the latent cache (both tested equal to the full-sequence forward pass):

- naive: rebuild every cached token's k_nope and v with `wkv_b` at each step, then attend as usual.
  Work per step grows as S·C·N·(Hn + Hv).
- absorbed (V2 §2.1.2): q_nope · (W_UK c_kv) = (W_UK^T q_nope) · c_kv, so fold W_UK into the query
  once per step and score against the latents directly; likewise apply W_UV after the weighted sum
  of latents. Attention then runs in latent space, like multi-query attention with one key of
  width C + R and one value of width C: per new token, scoring costs S·N·(C + R) and the weighted
  sum of latents S·N·C, so the work grows only as S·N·(2C + R).

Why decoupled RoPE: RoPE multiplies a key by a position-dependent rotation, RoPE(W_UK c_kv) =
Rot(s) W_UK c_kv, and Rot(s) sits between the query and W_UK, so W_UK can no longer be folded into
the query once for all cached tokens (notebook 02 shows it numerically). The rotation is applied
only to the extra k_rope part, which is cached already rotated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from minids.attention import (
    MASKED,
    attention_mask,
    dot_product_attention,
    is_full_causal_pass,
    write_cache,
)
from minids.config import MLAConfig, ModelConfig, YaRNConfig
from minids.kernels import attention as kernel_attention
from minids.layers import RMSNorm, apply_rope, dense, yarn_softmax_factor

# The RMSNorms on the query and key/value latents use this eps whatever `ModelConfig.norm_eps` says,
# as DeepSeek's released code does (only the blocks' norms take the configured eps).
LATENT_NORM_EPS = 1e-6


# ------------------------------------------------------------------------- the pieces, as functions


def split_latent(
    kv: Float[Array, "B T CR"],
    norm_scale: Float[Array, " C"],
    positions: Int[Array, "B T"],
    kv_lora_rank: int,
    rope_theta: float = 10_000.0,
    eps: float = 1e-6,
    yarn: YaRNConfig | None = None,
) -> tuple[Float[Array, "B T C"], Float[Array, "B T R"]]:
    """Split W_DKV h into the normalised latent c_kv and the rotated shared key k_rope."""
    c_kv, k_rope = kv[..., :kv_lora_rank], kv[..., kv_lora_rank:]
    c32 = c_kv.astype(jnp.float32)
    rms = jax.lax.rsqrt(jnp.mean(c32 * c32, axis=-1, keepdims=True) + eps)
    c_kv = (c32 * rms * norm_scale.astype(jnp.float32)[None, None, :]).astype(kv.dtype)
    k_rope = apply_rope(k_rope[:, :, None, :], positions, rope_theta, yarn)[:, :, 0, :]  # 1 "head"
    return c_kv, k_rope


def latent_kv(
    x: Float[Array, "B T D"],
    w_dkv: Float[Array, "D CR"],
    norm_scale: Float[Array, " C"],
    positions: Int[Array, "B T"],
    kv_lora_rank: int,
    rope_theta: float = 10_000.0,
    eps: float = 1e-6,
    yarn: YaRNConfig | None = None,
) -> tuple[Float[Array, "B T C"], Float[Array, "B T R"]]:
    """What MLA caches for each token (V2 eqs. 9 and 15): exercise 02 asks students to write it.

    x @ w_dkv gives C + R numbers per token; the first C, RMS-normalised with `norm_scale`, are the
    latent c_kv; the last R, rotated by RoPE at each token's position, are the shared key k_rope.
    """
    kv = jnp.einsum("BTD,DK->BTK", x, w_dkv.astype(x.dtype))
    return split_latent(kv, norm_scale, positions, kv_lora_rank, rope_theta, eps, yarn)


def naive_scores(
    q_nope: Float[Array, "B T N Hn"],
    q_rope: Float[Array, "B T N R"],
    c_kv: Float[Array, "B S C"],
    k_rope: Float[Array, "B S R"],
    w_uk: Float[Array, "C N Hn"],
    scale: float,
) -> Float[Array, "B N T S"]:
    """Attention scores the obvious way: rebuild k_nope = W_UK c_kv for every key, then q · k."""
    k_nope = jnp.einsum("BSC,CNH->BSNH", c_kv, w_uk)
    f32 = jnp.float32
    nope = jnp.einsum("BTNH,BSNH->BNTS", q_nope, k_nope, preferred_element_type=f32)
    rope = jnp.einsum("BTNR,BSR->BNTS", q_rope, k_rope, preferred_element_type=f32)
    return (nope + rope) * scale


def absorbed_scores(
    q_nope: Float[Array, "B T N Hn"],
    q_rope: Float[Array, "B T N R"],
    c_kv: Float[Array, "B S C"],
    k_rope: Float[Array, "B S R"],
    w_uk: Float[Array, "C N Hn"],
    scale: float,
) -> Float[Array, "B N T S"]:
    """The same scores with W_UK absorbed into the query (exercise 02): never builds a key.

    q_nope · (W_UK c_kv) = (W_UK^T q_nope) · c_kv: each query moves into latent space once
    (N·Hn·C work per query), then scores against every cached latent directly.
    """
    f32 = jnp.float32
    q_latent = jnp.einsum("BTNH,CNH->BTNC", q_nope, w_uk)  # (B, T, N, C)
    nope = jnp.einsum("BTNC,BSC->BNTS", q_latent, c_kv, preferred_element_type=f32)
    rope = jnp.einsum("BTNR,BSR->BNTS", q_rope, k_rope, preferred_element_type=f32)
    return (nope + rope) * scale


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
    """Absorbed attention to the end (exercise 02): W_UK into the query, W_UV after the weighted sum.

    sum_s p_s (W_UV c_s) = W_UV (sum_s p_s c_s): average the cached latents with the attention
    weights first, then lift the one average to each head's value (N·C·Hv work per query instead
    of S·C·N·Hv). `mask` is True where query t may read key slot s.
    """
    scores = absorbed_scores(q_nope, q_rope, c_kv, k_rope, w_uk, scale)  # (B, N, T, S)
    scores = jnp.where(mask[:, None, :, :], scores, MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(c_kv.dtype)
    latent_out = jnp.einsum("BNTS,BSC->BTNC", probs, c_kv)  # a weighted sum of latents per head
    return jnp.einsum("BTNC,CNH->BTNH", latent_out, w_uv)


# ------------------------------------------------------------------------------------- the module


class MLA(nnx.Module):
    """Multi-head latent attention with a latent cache {"c_kv": (B, S, C), "k_rope": (B, S, R)}."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        m: MLAConfig = cfg.mla
        D, N = cfg.d_model, cfg.n_heads
        self.n_heads, self.rope_theta, self.eps = N, cfg.rope_theta, LATENT_NORM_EPS
        self.rank, self.nope, self.rope, self.v_dim = (
            m.kv_lora_rank,
            m.qk_nope_head_dim,
            m.qk_rope_head_dim,
            m.v_head_dim,
        )
        self.decode, self.dtype, self.yarn = m.decode, cfg.compute_dtype, cfg.yarn
        self.scale = m.softmax_scale * yarn_softmax_factor(cfg.yarn)  # YaRN sharpens (layers.py)
        q_out = N * m.qk_head_dim
        if m.q_lora_rank:
            self.wq_a = dense(D, m.q_lora_rank, cfg, rngs=rngs)  # W_DQ
            self.q_norm = RMSNorm(m.q_lora_rank, eps=LATENT_NORM_EPS, param_dtype=cfg.weight_dtype)
            self.wq_b = dense(m.q_lora_rank, q_out, cfg, rngs=rngs)  # W_UQ and W_QR
            self.wq = None
        else:
            self.wq_a = self.q_norm = self.wq_b = None
            self.wq = dense(D, q_out, cfg, rngs=rngs)
        self.wkv_a = dense(D, m.kv_lora_rank + m.qk_rope_head_dim, cfg, rngs=rngs)  # W_DKV and W_KR
        self.kv_norm = RMSNorm(m.kv_lora_rank, eps=LATENT_NORM_EPS, param_dtype=cfg.weight_dtype)
        self.wkv_b = dense(m.kv_lora_rank, N * (m.qk_nope_head_dim + m.v_head_dim), cfg, rngs=rngs)
        self.wo = dense(N * m.v_head_dim, D, cfg, rngs=rngs, scale=1.0 / (2 * cfg.n_layers))

    def init_cache(self, batch: int, max_len: int) -> dict[str, Array]:
        """Zeroed latent cache for one layer: C + R numbers per slot, nothing else."""
        return {
            "c_kv": jnp.zeros((batch, max_len, self.rank), self.dtype),
            "k_rope": jnp.zeros((batch, max_len, self.rope), self.dtype),
        }

    def up_projections(self) -> tuple[Float[Array, "C N Hn"], Float[Array, "C N Hv"]]:
        """W_UK and W_UV, read out of `wkv_b`'s kernel, per head."""
        w = (
            self.wkv_b.kernel[...]
            .astype(self.dtype)
            .reshape(self.rank, self.n_heads, self.nope + self.v_dim)
        )
        return w[..., : self.nope], w[..., self.nope :]

    def queries(self, tokens: Float[Array, "BT D"], positions: Int[Array, "B T"], q_latent=None):
        """q_nope (B, T, N, Hn) and the rotated q_rope (B, T, N, R).

        `q_latent`, the normalised query latent RMSNorm(W_DQ h), when the caller has it already.
        """
        B, T = positions.shape
        if self.wq is None:
            q = self.wq_b(self.q_norm(self.wq_a(tokens)) if q_latent is None else q_latent)
        else:
            q = self.wq(tokens)
        q = q.reshape(B, T, self.n_heads, self.nope + self.rope)
        q_rope = apply_rope(q[..., self.nope :], positions, self.rope_theta, self.yarn)
        return q[..., : self.nope], q_rope

    def expand(self, c_kv: Float[Array, "B S C"], k_rope: Float[Array, "B S R"]):
        """Full per-head keys [k_nope ; k_rope] (B, S, N, Hn + R) and values (B, S, N, Hv)."""
        B, S, C = c_kv.shape
        kv = self.wkv_b(c_kv.reshape(B * S, C)).reshape(B, S, self.n_heads, self.nope + self.v_dim)
        k_nope, v = kv[..., : self.nope], kv[..., self.nope :]
        shared = jnp.broadcast_to(k_rope[:, :, None, :], (B, S, self.n_heads, self.rope))
        return jnp.concatenate([k_nope, shared], axis=-1), v

    def __call__(
        self,
        x: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        *,
        key_mask: Bool[Array, "B S"] | None = None,
        cache: dict[str, Array] | None = None,
        index: Int[Array, ""] | int = 0,
    ) -> tuple[Float[Array, "B T D"], dict[str, Array] | None]:
        """Same contract as `minids.attention.Attention`, with the latent cache."""
        B, T, D = x.shape
        tokens = x.reshape(B * T, D)  # one row per token (see the note in layers.py)
        q_nope, q_rope = self.queries(tokens, positions)
        kv = self.wkv_a(tokens).reshape(B, T, self.rank + self.rope)
        c_kv, k_rope = split_latent(
            kv, self.kv_norm.scale[...], positions, self.rank, self.rope_theta, self.eps, self.yarn
        )
        if cache is not None:
            cache = write_cache(cache, {"c_kv": c_kv, "k_rope": k_rope}, index)
            c_kv, k_rope = cache["c_kv"], cache["k_rope"]
        q = jnp.concatenate([q_nope, q_rope], axis=-1)  # (B, T, N, Hn + R)
        if is_full_causal_pass(cache, key_mask, index):
            k, v = self.expand(c_kv, k_rope)  # training: full keys for T tokens
            # Kernel: the same numbers as `minids.attention.causal_self_attention(q, k, v,
            # self.scale)`, faster (minids/kernels/attention.py; tests/test_kernels.py).
            out = kernel_attention.causal_attention(q, k, v, self.scale)
        else:
            mask = attention_mask(T, c_kv.shape[1], index, key_mask)
            if self.decode == "absorbed" and cache is not None:
                out = self._absorbed(q_nope, q_rope, c_kv, k_rope, mask)
            else:
                k, v = self.expand(c_kv, k_rope)
                out = dot_product_attention(q, k, v, mask, self.scale)
        out = out.reshape(B * T, self.n_heads * self.v_dim)
        return self.wo(out).reshape(B, T, D), cache

    def _absorbed(self, q_nope, q_rope, c_kv, k_rope, mask) -> Float[Array, "B T N Hv"]:
        """Attend in latent space: scores against c_kv, weighted sum of c_kv, then W_UV."""
        w_uk, w_uv = self.up_projections()
        return absorbed_attention(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, mask, self.scale)


# ----------------------------------------------------------------------------- cache accounting


def kv_cache_elements_per_token(cfg: ModelConfig) -> int:
    """Numbers one token leaves in one layer's cache (V2 Table 1).

    MHA 2·N·H, GQA 2·M·H (M key/value heads), MQA 2·H, MLA C + R.
    """
    if cfg.mla is not None:
        return cfg.mla.kv_lora_rank + cfg.mla.qk_rope_head_dim
    return 2 * cfg.n_kv_heads * cfg.head_dim


def kv_cache_bytes_per_token(cfg: ModelConfig, dtype: str | None = None) -> int:
    """Bytes one token adds to the cache, over all layers, in `dtype` (default: the compute dtype).

    DeepSeek-V3: 576 numbers x 61 layers x 2 bytes (bf16) = 70,272 bytes.
    """
    itemsize = jnp.dtype(dtype or cfg.compute_dtype).itemsize
    return kv_cache_elements_per_token(cfg) * cfg.n_layers * itemsize
