"""The small pieces every block is made of: RMSNorm, rotary position embeddings, SwiGLU, embedding.

RMSNorm (Zhang & Sennrich, 2019) rescales each vector by the root mean square of its entries and a
learned per-channel gain; unlike LayerNorm it does not subtract the mean. It is computed in float32
whatever the compute dtype, since a sum of squares in bfloat16 loses the small channels.

RoPE (Su et al., 2021, "RoFormer", eq. 34) encodes position by rotating pairs of query/key channels
by an angle proportional to the position: channel pair i at position m turns by m * theta^(-2i/H).
A dot product of two rotated vectors then depends only on the *difference* of their positions, which
is the property `tests/test_layers.py` checks. minids pairs channel i with channel i + H/2 (the
"rotate half" layout of LLaMA). DeepSeek's own inference code rotates interleaved pairs (2i,
2i + 1) instead, and Hugging Face's DeepSeek-V3 permutes the channels into halves at run time; the
two layouts give the same attention once the projection weights are permuted to match, which is
what minids' loader (`minids.hf`) does to the weights it reads.

YaRN (Peng et al., 2023, "YaRN: Efficient Context Window Extension", §3.2-3.4), DeepSeek-V3 §4.3
(and V2 §3.1.4): a model pre-trained at context L = `original_max_position_embeddings` is extended
to s·L (s = `factor`) by changing RoPE's frequencies per channel pair, not all alike. Pair i turns
r_i = L·theta^(-2i/H) / 2pi times over the original context. Fast pairs (r_i > beta_fast) already
saw every angle during training and keep their frequency; slow pairs (r_i < beta_slow) would meet
angles they never saw, so their frequency is divided by s (position interpolation); between the two
a linear ramp gamma_i blends them (YaRN eq. 19, "NTK-by-parts"):

    inv_freq_i = (1 - gamma_i) * theta^(-2i/H) / s + gamma_i * theta^(-2i/H)

DeepSeek's code and transformers write the ramp over the pair index i rather than over r_i, by
inverting r_i: pair d(r) = H·ln(L / (2pi·r)) / (2 ln theta) turns r times, and the ramp runs from
d(beta_fast) to d(beta_slow), rounded outwards to whole pairs (`truncate`). Interpolation makes
attention flatter over long contexts, so YaRN also sharpens it: the logits are multiplied by
(0.1·ln s + 1)^2, "sqrt(1/t) = 0.1 ln s + 1" applied to queries and keys alike (YaRN eq. 22). V3's
config states it as two temperatures: `mscale_all_dim` scales the whole score (MLA's softmax scale
times mscale(s, mscale_all_dim)^2, `yarn_softmax_factor`), and the rotated channels are further
multiplied by mscale(s, mscale) / mscale(s, mscale_all_dim) (`yarn_rope_factor`), which is 1 for V3
(both 1.0). This follows transformers' reading of the fields (a missing mscale gives the rotated
channels 0.1·ln s + 1); DeepSeek's own inference code reads only `mscale`, for the whole score, and
applies YaRN only when it is run with a context longer than the original one, where minids and
transformers apply a configured YaRN at every length.

SwiGLU (Shazeer, 2020) is the feed-forward block of LLaMA and DeepSeek:
`down(silu(gate(x)) * up(x))`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from minids.config import ModelConfig, YaRNConfig


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale, in float32, returned in the input's dtype."""

    def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), dtype=param_dtype))

    def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
        x32 = x.astype(jnp.float32)
        rms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        scale = self.scale[...].astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
        return (x32 * rms * scale).astype(x.dtype)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature sqrt(1/t) = 0.1·mscale·ln(s) + 1 (1 when s <= 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_ramp(head_dim: int, theta: float, yarn: YaRNConfig) -> Float[Array, " H2"]:
    """gamma_i of each channel pair: 0 where the frequency is divided by s, 1 where it is kept."""
    L = yarn.original_max_position_embeddings

    def pair_turning(turns: float) -> float:  # the (fractional) pair index that turns `turns` times
        return head_dim * math.log(L / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = pair_turning(yarn.beta_fast), pair_turning(yarn.beta_slow)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    high = high + 0.001 if high == low else high  # a one-pair ramp, as the reference code does
    ramp = (jnp.arange(head_dim // 2, dtype=jnp.float32) - low) / (high - low)
    return 1.0 - jnp.clip(ramp, 0.0, 1.0)  # fast pairs (small i) keep their frequency


def yarn_inv_freq(head_dim: int, theta: float, yarn: YaRNConfig | None) -> Float[Array, " H2"]:
    """RoPE's frequency of each channel pair, theta^(-2i/H), blended towards /s by YaRN's ramp."""
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)  # (H/2,)
    if yarn is None:
        return inv_freq
    gamma = yarn_ramp(head_dim, theta, yarn)
    return (1.0 - gamma) * inv_freq / yarn.factor + gamma * inv_freq


def yarn_rope_factor(yarn: YaRNConfig | None) -> float:
    """How much YaRN scales the rotated channels (cos and sin): 1 for V3's config."""
    if yarn is None:
        return 1.0
    if yarn.mscale and yarn.mscale_all_dim:
        return yarn_mscale(yarn.factor, yarn.mscale) / yarn_mscale(yarn.factor, yarn.mscale_all_dim)
    return yarn_mscale(yarn.factor)


def yarn_softmax_factor(yarn: YaRNConfig | None) -> float:
    """How much YaRN scales every attention logit: mscale(s, mscale_all_dim)^2 (V3: 1.874)."""
    if yarn is None or not yarn.mscale_all_dim:
        return 1.0
    return yarn_mscale(yarn.factor, yarn.mscale_all_dim) ** 2


def rope_angles(
    positions: Int[Array, "B T"], head_dim: int, theta: float, yarn: YaRNConfig | None = None
) -> Float[Array, "B T H2"]:
    """Rotation angle of each channel pair at each position: positions * theta^(-2i/H) (or YaRN's)."""
    inv_freq = yarn_inv_freq(head_dim, theta, yarn)  # (H/2,)
    return positions.astype(jnp.float32)[..., None] * inv_freq.reshape(
        (1,) * positions.ndim + (-1,)
    )


def apply_rope(
    x: Float[Array, "B T N H"],
    positions: Int[Array, "B T"],
    theta: float = 10_000.0,
    yarn: YaRNConfig | None = None,
) -> Float[Array, "B T N H"]:
    """Rotate channel pairs (i, i + H/2) of every head of `x` by the angle of its position."""
    head_dim = x.shape[-1]
    angles = rope_angles(positions, head_dim, theta, yarn)[:, :, None, :]  # (B, T, 1, H/2)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    if yarn is not None:
        factor = yarn_rope_factor(yarn)
        cos, sin = cos * factor, sin * factor
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : head_dim // 2], x32[..., head_dim // 2 :]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def dense(
    d_in: int, d_out: int, cfg: ModelConfig, *, rngs: nnx.Rngs, scale: float = 1.0
) -> nnx.Linear:
    """A bias-free linear layer in the config's compute and parameter dtypes.

    Weights ~ N(0, scale / d_in): `scale < 1` is used for the projections that write into the
    residual stream, so that the stream's variance does not grow with depth at initialisation.
    (With `cfg.fp8`, the model turns these layers into `minids.fp8.Fp8Linear`s once built.)
    """
    init = nnx.initializers.variance_scaling(scale, "fan_in", "normal")
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=False,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.weight_dtype,
        kernel_init=init,
        rngs=rngs,
    )


# Why the layers below flatten (B, T, D) to one row per token, (B*T, D), before a matmul: the maths
# is identical, but the weight gradient x^T dy is then a plain 2-D matmul. From a 3-D input it
# contracts B and T together, which XLA:CPU lowers through a slow transposing copy of dy (this made
# a CPU training step of the `small` preset about 2x slower). The reshape is free on every backend.


class SwiGLU(nnx.Module):
    """The feed-forward block: down(silu(gate(x)) * up(x)), hidden width F."""

    def __init__(self, cfg: ModelConfig, *, ffn_dim: int | None = None, rngs: nnx.Rngs):
        width = ffn_dim or cfg.ffn_dim
        self.gate = dense(cfg.d_model, width, cfg, rngs=rngs)
        self.up = dense(cfg.d_model, width, cfg, rngs=rngs)
        self.down = dense(width, cfg.d_model, cfg, rngs=rngs, scale=1.0 / (2 * cfg.n_layers))

    def __call__(self, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
        tokens = x.reshape(-1, x.shape[-1])  # (B*T, D), one row per token: see the note above
        return self.down(jax.nn.silu(self.gate(tokens)) * self.up(tokens)).reshape(x.shape)


class Embedding(nnx.Module):
    """Token embedding table (V, D); `attend` reuses it as the output head when embeddings are tied."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
            embedding_init=nnx.initializers.normal(1.0),
            rngs=rngs,
        )

    def __call__(self, tokens: Int[Array, "B T"]) -> Float[Array, "B T D"]:
        return self.embed(tokens)

    def attend(self, x: Float[Array, "... D"]) -> Float[Array, "... V"]:
        return self.embed.attend(x)
