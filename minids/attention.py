"""Causal multi-head and grouped-query attention with a key/value cache: the baseline MLA improves on.

Scaled dot-product attention (Vaswani et al., 2017, eq. 1): softmax(Q K^T / sqrt(H)) V, with a causal
mask so that position t sees only positions <= t. Grouped-query attention (Ainslie et al., 2023) lets
G = N / M query heads share one of M key/value heads: M = N is multi-head attention, M = 1 is
multi-query attention. Fewer key/value heads means a smaller cache, which is what DeepSeek-V2's
multi-head latent attention pushes much further (see `minids/mla.py` and DeepSeek-V2 Table 1).

The cache. When generating, each new token needs the keys and values of every earlier token. Instead
of recomputing them, each layer keeps them in a fixed-size buffer of S slots, writes the new ones at
`index` and attends over the slots filled so far. A `key_mask` marks which slots hold real tokens, so
prompts of different lengths can be left-padded into one batch and decoded together. The cache holds
2 * M * H numbers per token per layer.

The kernel. A training pass (causal, from position 0, no cache, no padding) is the one place
speed matters most, so `Attention` runs it through `minids.kernels.attention.causal_attention`:
the same numbers as `causal_self_attention` below, in value and gradient (tests/test_kernels.py),
computed blockwise with a hand-written backward pass on a CPU and by XLA's own attention on a GPU
or TPU. The choice is the one line `TRAINING_ATTENTION = ...` below; set it to
`causal_self_attention` to train with the plain form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from minids.config import ModelConfig
from minids.kernels import attention as kernel_attention
from minids.layers import apply_rope, dense, yarn_softmax_factor

MASKED = -1e30  # finite, so a fully masked row (a padding query) gives a uniform softmax, not NaN


def attention_mask(
    q_len: int,
    kv_len: int,
    offset: Int[Array, ""] | int = 0,
    key_mask: Bool[Array, "B S"] | None = None,
) -> Bool[Array, "#B T S"]:
    """True where query t (stored at slot offset + t) may attend to key slot s: s <= offset + t."""
    q_slot = offset + jnp.arange(q_len)
    mask = jnp.arange(kv_len)[None, :] <= q_slot[:, None]  # (T, S)
    mask = mask[None]  # (1, T, S)
    if key_mask is not None:
        mask = mask & key_mask[:, None, :]
    return mask


def dot_product_attention(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B S M H"],
    v: Float[Array, "B S M Hv"],
    mask: Bool[Array, "#B T S"],
    scale: float | None = None,
) -> Float[Array, "B T N Hv"]:
    """softmax(q k^T * scale + mask) v, with N = M * G query heads sharing M key/value heads.

    `scale` defaults to 1/sqrt(H). Values may have their own head dim Hv (MLA's differs from H).
    """
    B, T, N, H = q.shape
    M, Hv = k.shape[2], v.shape[-1]
    scale = H**-0.5 if scale is None else scale
    q = q.reshape(B, T, M, N // M, H)  # (B, T, M, G, H)
    scores = jnp.einsum("BTMGH,BSMH->BMGTS", q, k, preferred_element_type=jnp.float32)
    scores = scores * scale
    scores = jnp.where(mask[:, None, None, :, :], scores, MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("BMGTS,BSMH->BTMGH", probs, v)
    return out.reshape(B, T, N, Hv)


def causal_self_attention(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B T M H"],
    v: Float[Array, "B T M Hv"],
    scale: float | None = None,
) -> Float[Array, "B T N Hv"]:
    """Causal attention over whole sequences: each position attends to itself and the ones before.

    The function exercise 00 asks students to write. `scale` defaults to 1/sqrt(H); values may have
    their own head dim (MLA's does).
    """
    T = q.shape[1]
    return dot_product_attention(q, k, v, attention_mask(T, k.shape[1]), scale)


# Kernel choice for a training pass: the same numbers as `causal_self_attention`, about 2.4x faster
# on a CPU (blockwise, hand-written backward) and XLA's own attention on a GPU or TPU;
# tests/test_kernels.py checks values and gradients. `causal_self_attention` is the plain form.
TRAINING_ATTENTION = kernel_attention.causal_attention


def write_cache(
    cache: dict[str, Array], new: dict[str, Array], index: Int[Array, ""] | int
) -> dict[str, Array]:
    """Each cache buffer (B, S, ...) with the new tokens' entries (B, T, ...) written at slot `index`."""
    return {
        name: jax.lax.dynamic_update_slice(
            cache[name], value.astype(cache[name].dtype), (0, index) + (0,) * (value.ndim - 2)
        )
        for name, value in new.items()
    }


def is_full_causal_pass(
    cache: dict[str, Array] | None, key_mask: Bool[Array, "B S"] | None, index: Int[Array, ""] | int
) -> bool:
    """True for a training or scoring pass (no cache, no padding, from position 0): the fast path."""
    return cache is None and key_mask is None and isinstance(index, int) and index == 0


class Attention(nnx.Module):
    """Causal GQA self-attention with RoPE on queries and keys, and an optional KV cache."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.rope_theta, self.yarn = cfg.rope_theta, cfg.yarn
        self.scale = cfg.head_dim**-0.5 * yarn_softmax_factor(cfg.yarn)  # YaRN sharpens (layers.py)
        self.dtype = cfg.compute_dtype
        self.wq = dense(cfg.d_model, cfg.n_heads * cfg.head_dim, cfg, rngs=rngs)
        self.wk = dense(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg, rngs=rngs)
        self.wv = dense(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg, rngs=rngs)
        self.wo = dense(
            cfg.n_heads * cfg.head_dim, cfg.d_model, cfg, rngs=rngs, scale=1.0 / (2 * cfg.n_layers)
        )

    def init_cache(self, batch: int, max_len: int) -> dict[str, Array]:
        """Zeroed cache buffers for one layer: keys and values, (B, S, M, H) each."""
        shape = (batch, max_len, self.n_kv_heads, self.head_dim)
        return {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}

    def __call__(
        self,
        x: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        *,
        key_mask: Bool[Array, "B S"] | None = None,
        cache: dict[str, Array] | None = None,
        index: Int[Array, ""] | int = 0,
    ) -> tuple[Float[Array, "B T D"], dict[str, Array] | None]:
        """Attend causally. Without a cache, S = T; with one, the new keys go to slots index.. index+T-1."""
        B, T, D = x.shape
        tokens = x.reshape(B * T, D)  # one row per token: a 2-D weight gradient (see layers.SwiGLU)
        q = self.wq(tokens).reshape(B, T, self.n_heads, self.head_dim)  # (B, T, N, H)
        k = self.wk(tokens).reshape(B, T, self.n_kv_heads, self.head_dim)  # (B, T, M, H)
        v = self.wv(tokens).reshape(B, T, self.n_kv_heads, self.head_dim)
        q = apply_rope(q, positions, self.rope_theta, self.yarn)
        k = apply_rope(k, positions, self.rope_theta, self.yarn)
        if cache is not None:
            cache = write_cache(cache, {"k": k, "v": v}, index)
            k, v = cache["k"], cache["v"]
        if is_full_causal_pass(cache, key_mask, index):
            out = TRAINING_ATTENTION(q, k, v, self.scale)  # training, scoring: the kernel above
        else:
            mask = attention_mask(T, k.shape[1], index, key_mask)
            out = dot_product_attention(q, k, v, mask, self.scale)
        return self.wo(out.reshape(B * T, self.n_heads * self.head_dim)).reshape(B, T, D), cache
