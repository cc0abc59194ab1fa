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

SwiGLU (Shazeer, 2020) is the feed-forward block of LLaMA and DeepSeek:
`down(silu(gate(x)) * up(x))`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from minids.config import ModelConfig


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


def rope_angles(
    positions: Int[Array, "B T"], head_dim: int, theta: float
) -> Float[Array, "B T H2"]:
    """Rotation angle of each channel pair at each position: positions * theta^(-2i/H)."""
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)  # (H/2,)
    return positions.astype(jnp.float32)[..., None] * inv_freq.reshape(
        (1,) * positions.ndim + (-1,)
    )


def apply_rope(
    x: Float[Array, "B T N H"], positions: Int[Array, "B T"], theta: float = 10_000.0
) -> Float[Array, "B T N H"]:
    """Rotate channel pairs (i, i + H/2) of every head of `x` by the angle of its position."""
    head_dim = x.shape[-1]
    angles = rope_angles(positions, head_dim, theta)[:, :, None, :]  # (B, T, 1, H/2)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
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
