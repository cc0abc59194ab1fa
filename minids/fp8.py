"""FP8 training, simulated: formats, fine-grained scaling, a limited-precision accumulator, `Fp8Linear`.

How it works (DeepSeek-V3, arXiv 2412.19437, §3.3, Figures 6-7; "Insights into DeepSeek-V3", ISCA
2025, §3.1). An FP8 number has 8 bits. E4M3 (`float8_e4m3fn`: 4 exponent, 3 mantissa bits) reaches
448 with a relative spacing of 1/8; E5M2 reaches 57344 with a spacing of 1/4. So few values exist
that a tensor must be *scaled* into range before the cast: q = cast(x / s), x ~ q * s. Casting an
out-of-range value to `float8_e4m3fn` gives NaN (there is no infinity), so s must be large enough.

- Granularity. One s per tensor lets a single outlier set the scale of every value, pushing the small
  ones into E4M3's subnormals or to zero. V3 uses one s per 1x128 tile of activations (per token
  per 128 channels) and per 128x128 block of weights, taken online from the current max |x|:
  s = max|x| / 448. `quantize` takes any `block`; `block=None` is one scale per tensor.
- Delayed scaling (the per-tensor recipe of Transformer Engine): s from the max of an amax history
  of earlier steps, so a new outlier is clipped. Kept here for contrast; V3 does not use it.
- Accumulation. H800 tensor cores add FP8 products into an accumulator that keeps about 13
  fraction bits (ISCA §3.1: "FP22"), not float32's 23; at K = 4096 that costs up to ~2% relative
  error. V3 copies the partial sum into a float32 register on the CUDA cores every N_C = 128
  elements ("promotion"), where the scales are also applied.
- `Fp8Linear`: all three GEMMs of a linear layer in FP8 (Fprop y = x W, Dgrad dx = dy W^T, Wgrad
  dW = x^T dy), through `jax.custom_vjp`. Master weights stay float32.

What `limited_precision_matmul` computes, exactly. K is cut into slices of `k_slice` elements (32:
one MMA instruction). A slice's partial product p = sum_k a[m, k] b[k, n] is formed in float32 and
added to the limited accumulator, which is then *truncated* (rounded toward zero, as the tensor
core's right-shift alignment does) to `acc_mantissa_bits` fraction bits: acc = trunc(acc + p).
Every `promote_every` elements the accumulator is added to a float32 total and reset to zero;
`promote_every=None` never promotes. `acc_mantissa_bits=None` is a plain float32 matmul. The fast
version scans over the promotion windows with the slices of a window unrolled, on chunks of rows
whose accumulator fits in a CPU cache; `limited_precision_matmul_reference` is the plain loop.
Simplifications: the 32 products inside a slice are summed in ordinary float32 (the hardware also
aligns and truncates each product, which is why this model's error at K = 4096, about 0.4% in
notebook 03, stays below the paper's ~2%), and the scales multiply the values before the GEMM
rather than at promotion (the same result for power-of-two scales).

Rules for shapes. `quantize` itself is strict: the block must divide the last two axes. The GEMMs
(`fp8_round_trip`, `fp8_matmul`, `Fp8Linear`, the MoE experts) accept any shape: a block is first
clipped to an axis shorter than it (a 64-wide layer gets 1x64 tiles), and an axis longer than its
block that is not a multiple gets a partial last block, zero-padded for the max and sliced off after
(zeros change no block's max), as DeepSeek-V3's own kernels do for its 576-wide KV projection.
Tiles always run along the GEMM's contraction axis, so that one scale per operand covers each
128-element window: Fprop x 1x128 and W 128x128; Dgrad dy 1x128 and W^T (the forward's FP8
weight); Wgrad x^T and dy^T re-quantized as 1x128 tiles along the tokens (V3 §3.5.2: 128x1 tiles
of x and dy).

Shapes: M rows (tokens), I inputs (the contraction axis), O outputs; the MoE experts add E.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, no_type_check

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from minids.config import FP8_FORMATS, FP8Config, check_accumulator, check_block
from minids.kernels import fp8_accumulate as kernel_fp8


class Fp8Format(NamedTuple):
    name: str
    dtype: Any
    max: float  # largest finite value
    mantissa_bits: int  # relative spacing of normal numbers: 2^-mantissa_bits
    min_normal: float
    min_subnormal: float  # spacing of the subnormals


def _format(name: str, dtype) -> Fp8Format:
    info = ml_dtypes.finfo(dtype)
    return Fp8Format(
        name,
        dtype,
        float(info.max),
        int(info.nmant),
        float(info.tiny),
        float(info.smallest_subnormal),
    )


FORMATS = {"e4m3": _format("e4m3", jnp.float8_e4m3fn), "e5m2": _format("e5m2", jnp.float8_e5m2)}
assert tuple(FORMATS) == FP8_FORMATS  # the names FP8Config accepts
_AMAX_FLOOR = 1e-30  # an all-zero block gets scale 1e-30 / max instead of 0


def representable_values(fmt: str = "e4m3") -> np.ndarray:
    """Every finite value of the format, sorted (256 bit patterns minus NaN/inf)."""
    values = np.arange(256, dtype=np.uint8).view(_fmt(fmt).dtype).astype(np.float32)
    return np.unique(values[np.isfinite(values)])


def _fmt(fmt: str) -> Fp8Format:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {list(FORMATS)}, got {fmt!r}")
    return FORMATS[fmt]


# ------------------------------------------------------------------------- quantize / dequantize


def fit_block(block: Any, shape: tuple[int, int]) -> tuple[int, int] | None:
    """`block` clipped to `shape` per axis: a 64-wide axis gets 64-wide blocks."""
    block = check_block("block", block)
    return None if block is None else tuple(min(b, n) for b, n in zip(block, shape, strict=True))


def _pad_to_blocks(x: Array, block: tuple[int, int] | None) -> Array:
    """Zeros after the last two axes up to multiples of the block (a partial last block)."""
    if block is None or (x.shape[-2] % block[0] == 0 and x.shape[-1] % block[1] == 0):
        return x
    pad = [(0, 0)] * (x.ndim - 2) + [(0, -x.shape[-2] % block[0]), (0, -x.shape[-1] % block[1])]
    return jnp.pad(x, pad)


def _tiles(x: Array, block: tuple[int, int] | None) -> Array:
    """(..., R, C) -> (..., R/br, br, C/bc, bc): one block per (row-block, col-block) pair."""
    if block is None:
        return x
    *lead, R, C = x.shape
    return x.reshape(*lead, R // block[0], block[0], C // block[1], block[1])


def _check_blocks(x_shape: tuple[int, ...], block: tuple[int, int] | None, name: str) -> None:
    if block is None:
        return
    if len(x_shape) < 2 or x_shape[-2] % block[0] or x_shape[-1] % block[1]:
        raise ValueError(
            f"{name} of shape {tuple(x_shape)} does not divide into blocks {block}: the "
            "last two axes must be multiples of the block (or use block=None)"
        )


def quantize(
    x: Float[Array, "... R C"],
    fmt: str = "e4m3",
    block: tuple[int, int] | None = (1, 128),
    pow2_scale: bool = False,
) -> tuple[Array, Float[Array, "..."]]:
    """(q, scale): x / scale cast to FP8, one float32 scale per block of the last two axes.

    scale = max|x| over the block / the format's max (floored, so an all-zero block works); with
    `pow2_scale`, rounded up to a power of two. For (1, 128) on (M, I) the scale is (M, I/128); for
    `block=None` it is one scalar. Finite values are clipped to +-max before the cast: never NaN.

    Non-finite input (the policy; tests/test_fp8.py): a NaN or +-inf stays non-finite in its own
    position only (NaN in E4M3, which has no infinity; NaN or +-inf in E5M2), and the block's scale
    comes from its finite values, so every other value of the block is quantized exactly as if the
    NaN or inf were not there. A GEMM then carries it only into the outputs that read it.
    """
    f, block = _fmt(fmt), check_block("block", block)
    _check_blocks(x.shape, block, "x")
    x32 = jnp.asarray(x, jnp.float32)
    tiles = _tiles(x32, block)
    axes = (-3, -1) if block is not None else tuple(range(x32.ndim))
    finite = jnp.where(jnp.isfinite(tiles), jnp.abs(tiles), 0.0)  # a NaN/inf sets no scale
    amax = jnp.max(finite, axis=axes)  # (..., R/br, C/bc) or ()
    scale = jnp.maximum(amax, _AMAX_FLOOR) / f.max
    if (
        pow2_scale
    ):  # the smallest power of two >= scale (V3 §3.3.3 for some activations; UE8M0, V3.1)
        mantissa, exponent = jnp.frexp(scale)
        scale = jnp.ldexp(jnp.ones_like(scale), jnp.where(mantissa == 0.5, exponent - 1, exponent))
    spread = scale if block is None else scale[..., :, None, :, None]
    scaled = tiles / spread
    clipped = jnp.where(jnp.isfinite(scaled), jnp.clip(scaled, -f.max, f.max), scaled)
    q = clipped.astype(f.dtype).reshape(x32.shape)
    return q, scale


def dequantize(
    q: Array, scale: Float[Array, "..."], block: tuple[int, int] | None = (1, 128)
) -> Float[Array, "... R C"]:
    """float32 q * scale, each block by its own scale."""
    block = check_block("block", block)
    _check_blocks(q.shape, block, "q")
    tiles = _tiles(q.astype(jnp.float32), block)
    spread = scale if block is None else scale[..., :, None, :, None]
    return (tiles * spread).reshape(q.shape)


def fp8_round_trip(
    x: Float[Array, "... R C"], fmt: str = "e4m3", block=(1, 128), pow2_scale: bool = False
) -> Float[Array, "... R C"]:
    """The float32 values an FP8 GEMM reads for x: dequantize(quantize(x)) on any shape, blocks
    clipped to short axes and a partial last block zero-padded (module docstring)."""
    block = fit_block(block, x.shape[-2:])
    R, C = x.shape[-2:]
    padded = _pad_to_blocks(jnp.asarray(x, jnp.float32), block)
    return dequantize(*quantize(padded, fmt, block, pow2_scale), block)[..., :R, :C]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def fake_quantize(x: Array, fmt: str = "e4m3", block=(1, 128), pow2_scale: bool = False) -> Array:
    """`fp8_round_trip` in x's dtype, with a straight-through gradient: the GEMM's own gradient is
    what gets quantized (`quantize_grad`)."""
    return fp8_round_trip(x, fmt, block, pow2_scale).astype(x.dtype)


fake_quantize.defvjp(
    lambda x, *args: (fake_quantize(x, *args), None), lambda fmt, block, pow2, _, g: (g,)
)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def quantize_grad(y: Array, fmt: str = "e4m3", block=(1, 128), pow2_scale: bool = False) -> Array:
    """The identity on y; in the backward pass, y's gradient is fake-quantized (the FP8 dy that
    Dgrad and Wgrad read)."""
    return y


quantize_grad.defvjp(
    lambda y, *args: (y, None), lambda fmt, block, pow2, _, g: (fake_quantize(g, fmt, block, pow2),)
)


def fp8_expert_weights(w: Float[Array, "E I O"], cfg: FP8Config) -> Float[Array, "E I O"]:
    """Routed-expert weights as FP8 sees them: each expert's matrix in its own 128x128 blocks."""
    return fake_quantize(w, cfg.fmt, cfg.blocks()[1], cfg.pow2_scale)


def fp8_expert_activation(x: Float[Array, "... M I"], cfg: FP8Config) -> Float[Array, "... M I"]:
    """A routed-expert GEMM input in 1x128 tiles; its gradient passes straight through."""
    return fake_quantize(x, cfg.fmt, cfg.blocks()[0], cfg.pow2_scale)


def fp8_expert_output(y: Float[Array, "... M O"], cfg: FP8Config) -> Float[Array, "... M O"]:
    """A routed-expert GEMM output, unchanged; its gradient is quantized in 1x128 tiles."""
    return quantize_grad(y, cfg.grad_fmt, cfg.blocks()[2], cfg.pow2_scale)


def fp8_expert_hooks(cfg: FP8Config | None):
    """(quantize an expert GEMM's input, quantize an expert GEMM output's gradient): identities
    without FP8. The MoE dispatches put them around each routed-expert GEMM."""
    if cfg is None:
        return (lambda x: x), (lambda y: y)
    return (lambda x: fp8_expert_activation(x, cfg)), (lambda y: fp8_expert_output(y, cfg))


def fp8_expert_inputs(x, w_gate, w_up, w_down, cfg: FP8Config | None):
    """The routed experts' inputs in simulated FP8 (DeepSeek-V3 §3.3): tokens in 1x128 tiles, each
    expert's weights in 128x128 blocks; with `fp8_expert_hooks` the hidden activation in 1x128
    tiles and every expert GEMM's output gradient in 1x128 tiles, so Fprop, Dgrad and Wgrad all
    read FP8 values. Not simulated for the experts, unlike `Fp8Linear`: the limited-precision
    accumulator (expert GEMMs add in float32) and Wgrad's re-tiling along tokens (it reuses the
    1x128 tiles of the activations and gradients). Gate and up are quantized as separate
    matrices, so every dispatch sees the same FP8 values. Unchanged without FP8."""
    if cfg is None:
        return x, w_gate, w_up, w_down
    return (
        fp8_expert_activation(x, cfg),
        *(fp8_expert_weights(w, cfg) for w in (w_gate, w_up, w_down)),
    )


# ------------------------------------------------------------------------------- delayed scaling


def delayed_scale(amax_history: Float[Array, " H"], fmt: str = "e4m3") -> Float[Array, ""]:
    """Per-tensor scale from earlier steps' max |x| (Transformer Engine's delayed scaling)."""
    return jnp.maximum(jnp.max(amax_history), _AMAX_FLOOR) / _fmt(fmt).max


def quantize_delayed(x: Array, amax_history: Float[Array, " H"], fmt: str = "e4m3"):
    """(q, scale, new history): quantize with the history's scale (a new outlier saturates at
    +-max), then push this step's max |x| into the history."""
    f, scale = _fmt(fmt), delayed_scale(amax_history, fmt)
    q = jnp.clip(jnp.asarray(x, jnp.float32) / scale, -f.max, f.max).astype(f.dtype)
    history = jnp.roll(amax_history, 1).at[0].set(jnp.max(jnp.abs(x)).astype(amax_history.dtype))
    return q, scale, history


# ------------------------------------------------------------------------------ the accumulator


def _truncate(x: Float[Array, "..."], bits: int) -> Float[Array, "..."]:
    """float32 x with only `bits` fraction bits kept, rounded toward zero (clear the low bits)."""
    if bits >= 23:
        return x
    mask = np.uint32((0xFFFFFFFF << (23 - bits)) & 0xFFFFFFFF)
    return jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(x, jnp.uint32) & mask, jnp.float32
    )


_EXACT = jax.lax.Precision.HIGHEST  # float32 products even where the default is TF32 (GPUs)


def limited_precision_matmul_reference(
    a: Float[Array, "M I"],
    b: Float[Array, "I O"],
    acc_mantissa_bits: int | None = 13,
    k_slice: int = 32,
    promote_every: int | None = 128,
) -> Float[Array, "M O"]:
    """The same arithmetic, slice by slice, as the hardware does it (slow, for tests and reading)."""
    check_accumulator(acc_mantissa_bits, k_slice, promote_every)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    bits = 23 if acc_mantissa_bits is None else acc_mantissa_bits
    total = jnp.zeros((a.shape[0], b.shape[1]), jnp.float32)  # the float32 register (CUDA cores)
    acc = jnp.zeros_like(total)  # the tensor core's limited accumulator
    for start in range(0, a.shape[1], k_slice):
        part = jnp.dot(
            a[:, start : start + k_slice], b[start : start + k_slice], precision=_EXACT
        )  # MMA
        acc = _truncate(acc + part, bits)
        if promote_every is not None and (start + k_slice) % promote_every == 0:
            total, acc = total + acc, jnp.zeros_like(acc)  # promote every N_C elements
    return total + acc


# Kernel choice: the same arithmetic as `limited_precision_matmul_reference`, bit for bit
# (tests/test_kernels.py), scanned over promotion windows on row chunks that fit a CPU cache, where the
# unrolled loop above would compile one slice at a time; fast enough to train with.
limited_precision_matmul = kernel_fp8.limited_precision_matmul


@no_type_check  # checks the operands' shapes itself, with a ValueError saying what it needs
def fp8_matmul(
    a: Float[Array, "M I"],
    b: Float[Array, "I O"],
    *,
    fmt: str = "e4m3",
    b_fmt: str | None = None,
    a_block: tuple[int, int] | None = (1, 128),
    b_block: tuple[int, int] | None = (128, 128),
    pow2_scale: bool = False,
    acc_mantissa_bits: int | None = 13,
    k_slice: int = 32,
    promote_every: int | None = 128,
) -> Float[Array, "M O"]:
    """A simulated FP8 GEMM: both inputs through `fp8_round_trip` (any shape), their FP8 values
    multiplied through `limited_precision_matmul`. Returns float32."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"fp8_matmul needs a (M, I) and b (I, O), got {a.shape} and {b.shape}")
    check_accumulator(acc_mantissa_bits, k_slice, promote_every)
    a = fp8_round_trip(a, fmt, a_block, pow2_scale)
    b = fp8_round_trip(b, b_fmt or fmt, b_block, pow2_scale)
    return limited_precision_matmul(a, b, acc_mantissa_bits, k_slice, promote_every)


# --------------------------------------------------------------------------------- the FP8 layer


def _accumulate(a, b, cfg: FP8Config):
    return limited_precision_matmul(a, b, cfg.acc_mantissa_bits, cfg.k_slice, cfg.promote_every)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def fp8_linear(
    x: Float[Array, "M I"], w: Float[Array, "I O"], cfg: FP8Config
) -> Float[Array, "M O"]:
    """y = x w with Fprop, Dgrad and Wgrad all FP8 GEMMs (float32 in and out)."""
    return _fp8_linear_fwd(x, w, cfg)[0]


def _fp8_linear_fwd(x, w, cfg):
    act, weight, _ = cfg.blocks()
    act = fit_block(act, x.shape)
    qx, sx = quantize(
        _pad_to_blocks(x, act), cfg.fmt, act, cfg.pow2_scale
    )  # kept for Wgrad, in FP8
    x8 = dequantize(qx, sx, act)[: x.shape[0], : x.shape[1]]
    y = _accumulate(x8, fp8_round_trip(w, cfg.fmt, weight, cfg.pow2_scale), cfg)
    return y, (qx, sx, w)  # w is the master weight itself, not a copy


def _fp8_linear_bwd(cfg, residuals, dy):
    qx, sx, w = residuals
    n_in, M = w.shape[0], dy.shape[0]
    act, weight, grad = cfg.blocks()
    # Dgrad: dx = dy W^T, dy in 1x128 tiles along O, W^T the forward's FP8 weight, blocks transposed.
    w8 = fp8_round_trip(w, cfg.fmt, weight, cfg.pow2_scale)
    dx = _accumulate(fp8_round_trip(dy, cfg.grad_fmt, grad, cfg.pow2_scale), w8.T, cfg)
    # Wgrad: dW = x^T dy contracts over the M tokens, so x (from its FP8 copy) and dy are re-quantized
    # in 1x128 tiles of x^T and dy^T, along the tokens.
    x8 = dequantize(qx, sx, fit_block(act, (M, n_in)))[:M, :n_in]
    along_tokens = lambda b: None if b is None else b[::-1]  # noqa: E731  (1x128 of x^T = 128x1 of x)
    x8 = fp8_round_trip(x8, cfg.fmt, along_tokens(act), cfg.pow2_scale)
    dy8 = fp8_round_trip(dy, cfg.grad_fmt, along_tokens(grad), cfg.pow2_scale)
    return dx, _accumulate(x8.T, dy8, cfg)


fp8_linear.defvjp(_fp8_linear_fwd, _fp8_linear_bwd)


_LECUN = nnx.initializers.lecun_normal()  # nnx.Linear's default


class Fp8Linear(nnx.Module):
    """A bias-free linear layer whose three GEMMs run in simulated FP8; master weights float32."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        cfg: FP8Config,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        kernel_init=_LECUN,
        rngs: nnx.Rngs | None = None,
        kernel: nnx.Param | None = None,
    ):
        if not isinstance(cfg, FP8Config):
            raise TypeError(f"cfg must be an FP8Config, got {type(cfg).__name__}")
        self.fp8, self.dtype = cfg, dtype
        if kernel is None:  # same key and shape as nnx.Linear's kernel
            if rngs is None:
                raise ValueError(
                    "Fp8Linear needs rngs to initialise its kernel, or a kernel to hold"
                )
            kernel = nnx.Param(kernel_init(rngs.params(), (d_in, d_out), param_dtype))
        if tuple(kernel.shape) != (d_in, d_out):
            raise ValueError(
                f"kernel must have shape (d_in, d_out) = {(d_in, d_out)}, got {kernel.shape}"
            )
        self.kernel = kernel

    def __call__(self, x: Float[Array, "... I"]) -> Float[Array, "... O"]:
        rows = x.reshape(-1, x.shape[-1]).astype(jnp.float32)  # (M, I), one row per token
        y = fp8_linear(rows, self.kernel[...].astype(jnp.float32), self.fp8)
        return y.reshape(*x.shape[:-1], -1).astype(self.dtype)


def use_fp8_linears(
    model: nnx.Module, cfg: FP8Config, *, keep: tuple[nnx.Module, ...] = ()
) -> None:
    """Run every linear layer of `model` in FP8: each bias-free `nnx.Linear` inside it, except those
    in `keep`, becomes an `Fp8Linear` holding the very same weight, so an fp8 model starts from
    its fp32 twin's weights and checkpoints have the same layout. V3 keeps the output head (and the
    embedding, the norms and the router, which are not `nnx.Linear`) in higher precision (§3.3.1)."""
    swaps = [
        (path, linear)
        for path, linear in nnx.iter_modules(model)
        if isinstance(linear, nnx.Linear) and not any(linear is k for k in keep)
    ]
    for path, linear in swaps:
        if linear.use_bias:
            raise ValueError(f"use_fp8_linears converts bias-free layers only; {path} has a bias")
        parent = model
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        fp8 = Fp8Linear(
            linear.in_features,
            linear.out_features,
            cfg,
            dtype=linear.dtype or jnp.float32,
            kernel=linear.kernel,
        )
        if isinstance(path[-1], int):
            parent[path[-1]] = fp8
        else:
            setattr(parent, path[-1], fp8)
