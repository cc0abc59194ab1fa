"""The whole model on one screen: every configuration dataclass, its validators, and the presets.

Every model in minids is built from a `ModelConfig`. Each technique adds a sub-config, defined
here beside it, so the whole architecture reads on one screen and no module below the model
has to be imported to describe it:

    ModelConfig            the baseline: pre-norm decoder, RoPE, SwiGLU, GQA
      .mla: MLAConfig      multi-head latent attention (minids/mla.py)
      .moe: MoEConfig      DeepSeekMoE feed-forward layers (minids/moe.py)
      .fp8: FP8Config      simulated FP8 GEMMs (minids/fp8.py)
      .yarn: YaRNConfig    YaRN context extension of RoPE (minids/layers.py), GQA and MLA alike
      .mla.dsa: DSAConfig  DeepSeek Sparse Attention on MLA (minids/dsa.py)
      .mtp: MTPConfig      multi-token prediction modules and their loss weight (minids/mtp.py)

`None` means the plain baseline: dense SwiGLU feed-forward, GQA attention, no FP8 GEMMs.

Configs are frozen dataclasses, so a variant is `dataclasses.replace(cfg, n_layers=4)` (or
`preset("tiny", n_layers=4)`), and each is validated in `__post_init__` by the `check_*` functions
below, the one set every config dataclass in minids uses (`TrainConfig`, `GRPOConfig` too): a bad
value raises `ValueError` naming the field, the value and the rule, before anything is traced. (So the
config classes are marked `@no_type_check`: the test run's jaxtyping/beartype checks would otherwise
answer a wrongly typed field with their own error before `__post_init__` can explain it.)

Presets (plain values; `preset(name, **overrides)` returns a validated variant):

- `TINY`: about 0.4M parameters, learns the shipped arithmetic and string tasks in a few minutes on
  a 2-core CPU. The notebooks use it.
- `SMALL`: about 5M parameters, for benchmarks and quick single-accelerator experiments.
- `TINY_V3`: DeepSeek-V3's architecture (MLA + DeepSeekMoE) at toy size, trainable on a CPU.
- `DEEPSEEK_V3`, `DEEPSEEK_V2`, `DEEPSEEK_V2_LITE`: the real hyper-parameters (PAPER_NUMBERS.md §1),
  for the cost calculator (`minids.cost`); far too large to build, and `Transformer` refuses to.

Counting. `param_counts(cfg)` counts a model's parameters from its config alone (the rule is in
its docstring); the model uses it to refuse a config too large to build, and `minids.cost`
builds its FLOP and GPU-hour estimates on it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, no_type_check

import jax.numpy as jnp

# ------------------------------------------------------------------------------ validators


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> None:
    """`value` must be an int (not a bool) with low <= value <= high (a None bound is open)."""
    ok = not isinstance(value, bool) and isinstance(value, int)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low == 1 and high is None:
            rule = "a positive integer"
        elif low is not None and high is not None:
            rule = f"an integer in [{low}, {high}]"
        elif low is not None:
            rule = f"an integer >= {low}"
        else:
            rule = "an integer" if high is None else f"an integer <= {high}"
        raise ValueError(f"{name} must be {rule}, got {value!r}")


def check_number(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """`value` must be a finite int or float within [low, high] (an open end excludes its bound)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = (
        ok
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        rule = "a finite number"
        if low > -math.inf:
            rule += f" {'>' if low_open else '>='} {low}"
        if high < math.inf:
            rule += f"{' and' if low > -math.inf else ''} {'<' if high_open else '<='} {high}"
        raise ValueError(f"{name} must be {rule}, got {value!r}")


def check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """`value` must be one of `allowed`."""
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def check_block(name: str, block: Any) -> tuple[int, int] | None:
    """An FP8 scaling block: None (one scale per tensor) or a pair of positive ints, as a tuple."""
    if block is None:
        return None
    if (
        not isinstance(block, tuple | list)
        or len(block) != 2
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in block)
    ):
        raise ValueError(
            f"{name} must be None or a pair of positive ints like (1, 128), got {block!r}"
        )
    return tuple(block)


def check_accumulator(acc_mantissa_bits: Any, k_slice: Any, promote_every: Any) -> None:
    """The limited-precision accumulator of an FP8 GEMM (see minids/fp8.py)."""
    if acc_mantissa_bits is not None:
        check_int("acc_mantissa_bits (or None)", acc_mantissa_bits, 1, 23)
    check_int("k_slice", k_slice, 1)
    if promote_every is not None and (
        isinstance(promote_every, bool)
        or not isinstance(promote_every, int)
        or promote_every < 1
        or promote_every % k_slice
    ):
        raise ValueError(
            f"promote_every must be None or a positive multiple of k_slice ({k_slice}), "
            f"got {promote_every!r}"
        )


# ------------------------------------------------------------------- technique sub-configs

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
MLA_DECODE = ("absorbed", "naive")
MOE_GATES = ("softmax", "sigmoid")
MOE_BALANCING = ("none", "aux_loss", "seq_aux_loss", "aux_free", "aux_free+seq_aux_loss")
MOE_DISPATCH = ("fast", "reference")
FP8_FORMATS = ("e4m3", "e5m2")
FP8_SCALING = ("tile", "tensor")


@no_type_check  # validated in __post_init__ with a ValueError naming the field (see the module docstring)
@dataclass(frozen=True)
class YaRNConfig:
    """YaRN context extension of RoPE (Peng et al., 2023), the fields of V3's released `rope_scaling`.

    DeepSeek-V3 §4.3: s = 40, alpha = 1, beta = 32, sqrt(t) = 0.1 ln s + 1, from a 4K pre-training
    context. How the fields act is in `minids.layers` (`yarn_inv_freq`, `yarn_rope_factor`,
    `yarn_softmax_factor`); a 0 for `mscale` or `mscale_all_dim` means "absent", as in transformers.
    """

    factor: float = 40.0  # s, new context / original context (V3 40)
    original_max_position_embeddings: int = 4096  # the pre-training context (V3 4096)
    beta_fast: float = 32.0  # channel pairs turning more than beta_fast times keep their frequency
    beta_slow: float = 1.0  # pairs turning fewer than beta_slow times are interpolated by s
    mscale: float = 1.0  # attention temperature of the rotated part (V3 1.0; 0 = absent)
    mscale_all_dim: float = 1.0  # attention temperature of the whole score (V3 1.0; 0 = absent)
    truncate: bool = True  # round the ramp's ends to whole channel pairs (DeepSeek's code does)

    def __post_init__(self) -> None:
        check_number("yarn.factor", self.factor, 1.0)
        check_int("yarn.original_max_position_embeddings", self.original_max_position_embeddings, 1)
        check_number("yarn.beta_slow", self.beta_slow, 0.0, low_open=True)
        check_number("yarn.beta_fast", self.beta_fast, 0.0, low_open=True)
        if self.beta_fast <= self.beta_slow:
            raise ValueError(
                f"yarn.beta_fast ({self.beta_fast}) must be > yarn.beta_slow ({self.beta_slow})"
            )
        check_number("yarn.mscale (0 = absent)", self.mscale, 0.0)
        check_number("yarn.mscale_all_dim (0 = absent)", self.mscale_all_dim, 0.0)
        check_bool("yarn.truncate", self.truncate)

    def replace(self, **changes: Any) -> YaRNConfig:
        return dataclasses.replace(self, **changes)


@no_type_check  # validated in __post_init__ with a ValueError naming the field (see the module docstring)
@dataclass(frozen=True)
class DSAConfig:
    """DeepSeek Sparse Attention's lightning indexer and top-k (V3.2 §2.1; minids/dsa.py)."""

    index_n_heads: int = 4  # H_I, the indexer's query heads (V3.2 64)
    index_head_dim: int = 32  # d_I, its query/key width; RoPE on the first R channels (V3.2 128)
    index_topk: int = 32  # k, the tokens each query attends to (V3.2 2048)

    def __post_init__(self) -> None:
        for name in ("index_n_heads", "index_head_dim", "index_topk"):
            check_int(f"mla.dsa.{name}", getattr(self, name), 1)

    def replace(self, **changes: Any) -> DSAConfig:
        return dataclasses.replace(self, **changes)


@no_type_check  # validated in __post_init__ with a ValueError naming the field (see the module docstring)
@dataclass(frozen=True)
class MLAConfig:
    """MLA's widths (V2 Table 1's d_c', d_c, d_h and d_h^R). `ModelConfig.n_heads` gives N.

    With `mla` set, `ModelConfig.n_kv_heads` and `head_dim` are not used by attention.
    """

    q_lora_rank: int = 0  # query latent width d_c' (V3 1536); 0 = no query compression (V2-Lite)
    kv_lora_rank: int = 64  # C, the cached latent width d_c (V3 512)
    qk_nope_head_dim: int = 32  # Hn, the per-head key/query part without position (V3 128)
    qk_rope_head_dim: int = 16  # R, the decoupled RoPE part, shared key (V3 64)
    v_head_dim: int = 32  # Hv, per-head value width (V3 128)
    decode: str = "absorbed"  # how cached decoding attends: "absorbed" or "naive"
    dsa: DSAConfig | None = None  # DeepSeek Sparse Attention (V3.2); None = dense MLA

    def __post_init__(self) -> None:
        if isinstance(self.dsa, dict):  # from JSON
            object.__setattr__(self, "dsa", DSAConfig(**self.dsa))
        check_int("mla.q_lora_rank (0 = no query compression)", self.q_lora_rank, 0)
        for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            check_int(f"mla.{name}", getattr(self, name), 1)
        if self.qk_rope_head_dim % 2:
            raise ValueError(
                f"mla.qk_rope_head_dim must be even for RoPE (it rotates pairs), got {self.qk_rope_head_dim}"
            )
        check_choice("mla.decode", self.decode, MLA_DECODE)
        if self.dsa is not None:
            if not isinstance(self.dsa, DSAConfig):
                raise ValueError(f"mla.dsa must be None or a DSAConfig, got {self.dsa!r}")
            if not self.q_lora_rank:
                raise ValueError(
                    "mla.dsa needs mla.q_lora_rank > 0: the indexer's queries come from the query latent"
                )
            if self.dsa.index_head_dim < self.qk_rope_head_dim:
                raise ValueError(
                    f"mla.dsa.index_head_dim ({self.dsa.index_head_dim}) must be >= "
                    f"mla.qk_rope_head_dim ({self.qk_rope_head_dim}): RoPE turns its first R channels"
                )

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        """1 / sqrt(Hn + R): queries and keys have Hn + R channels (V2 eq. 18)."""
        return self.qk_head_dim**-0.5

    def replace(self, **changes: Any) -> MLAConfig:
        return dataclasses.replace(self, **changes)


@no_type_check  # validated in __post_init__ with a ValueError naming the field (see the module docstring)
@dataclass(frozen=True)
class MoEConfig:
    """One MoE FFN: routed and shared experts, the router, balancing, capacity and dispatch."""

    n_routed_experts: int = 8  # E
    n_shared_experts: int = 1  # always on; run as one SwiGLU of width n_shared * expert_ffn_dim
    experts_per_token: int = 2  # K
    expert_ffn_dim: int = 128  # F, the hidden width of each expert
    gate: str = "sigmoid"  # "sigmoid" (V3) or "softmax" (V2)
    norm_topk_prob: bool | None = (
        None  # renormalise the K gates to sum 1; None: sigmoid yes, softmax no
    )
    route_scale: float = 1.0  # gate values are multiplied by this (V3 2.5, V2 16.0)
    n_groups: int = 1  # expert groups for group-limited routing (1 = no limit)
    groups_per_token: int = 1  # groups a token may choose its experts from
    balancing: str = "aux_free"  # one of MOE_BALANCING
    aux_loss_alpha: float = 1e-4  # alpha of the balance loss (V3 seq-wise 1e-4; V2 expert 3e-3)
    bias_update_speed: float = 1e-3  # gamma of the aux-free bias update (V3 0.001)
    capacity_factor: float | None = None  # None: no token is dropped
    n_dense_layers: int = 1  # leading blocks that keep a dense FFN (V3 3, V2 1)
    dispatch: str = (
        "fast"  # "fast" (the kernel for this backend) or "reference" (every expert, every token)
    )

    def __post_init__(self) -> None:
        for name in (
            "n_routed_experts",
            "experts_per_token",
            "expert_ffn_dim",
            "n_groups",
            "groups_per_token",
        ):
            check_int(name, getattr(self, name), 1)
        check_int("n_shared_experts", self.n_shared_experts, 0)
        check_int("n_dense_layers", self.n_dense_layers, 0)
        check_choice("gate", self.gate, MOE_GATES)
        check_choice("balancing", self.balancing, MOE_BALANCING)
        check_choice("dispatch", self.dispatch, MOE_DISPATCH)
        if self.norm_topk_prob is not None:
            check_bool("norm_topk_prob (or None)", self.norm_topk_prob)
        check_number("route_scale", self.route_scale, 0.0, low_open=True)
        check_number("aux_loss_alpha", self.aux_loss_alpha, 0.0)
        check_number("bias_update_speed", self.bias_update_speed, 0.0)
        if self.capacity_factor is not None:
            check_number("capacity_factor (or None)", self.capacity_factor, 0.0, low_open=True)
        E, K, G = self.n_routed_experts, self.experts_per_token, self.n_groups
        if K > E:
            raise ValueError(
                f"experts_per_token ({K}) must be <= n_routed_experts ({E}): a token "
                "chooses K different experts"
            )
        if E % G != 0:
            raise ValueError(f"n_groups ({G}) must divide n_routed_experts ({E}) into equal groups")
        if self.groups_per_token > G:
            raise ValueError(
                f"groups_per_token ({self.groups_per_token}) must be <= n_groups ({G})"
            )
        if K > self.groups_per_token * (E // G):
            raise ValueError(
                f"experts_per_token ({K}) must be <= groups_per_token * experts per group "
                f"({self.groups_per_token} * {E // G}): a token chooses its experts in its groups"
            )

    @property
    def uses_bias(self) -> bool:
        """Whether selection adds the aux-free bias (and `MoE.update_bias` changes it)."""
        return self.balancing.startswith("aux_free")

    @property
    def renormalizes(self) -> bool:
        """Whether the K chosen gates are divided by their sum (V3's eq. 13; V2 keeps them as they are)."""
        return self.gate == "sigmoid" if self.norm_topk_prob is None else self.norm_topk_prob

    def replace(self, **changes: Any) -> MoEConfig:
        return dataclasses.replace(self, **changes)


@no_type_check  # validated in __post_init__ with a ValueError naming the field (see the module docstring)
@dataclass(frozen=True)
class FP8Config:
    """How a model runs its FP8 GEMMs; the defaults are DeepSeek-V3's recipe (§3.3)."""

    fmt: str = "e4m3"  # activations and weights (V3: E4M3 for every tensor)
    grad_fmt: str = "e4m3"  # output gradients ("e5m2" is the hybrid recipe V3 moved away from)
    scaling: str = "tile"  # "tile": the blocks below; "tensor": one scale per tensor
    act_block: tuple[int, int] = (1, 128)  # activations: per token per 128 channels
    weight_block: tuple[int, int] = (128, 128)
    grad_block: tuple[int, int] = (1, 128)  # output gradients (Dgrad); Wgrad re-tiles along tokens
    pow2_scale: bool = (
        False  # round scales up to powers of two (V3 §3.3.3 for some activations; UE8M0 in V3.1)
    )
    acc_mantissa_bits: int | None = 13  # fraction bits of the tensor-core accumulator; None = fp32
    k_slice: int = 32  # elements per MMA instruction
    promote_every: int | None = 128  # N_C; None = never promote to float32

    def __post_init__(self) -> None:
        for name in ("act_block", "weight_block", "grad_block"):
            object.__setattr__(
                self, name, check_block(name, getattr(self, name))
            )  # JSON lists -> tuples
            if getattr(self, name) is None:
                raise ValueError(
                    f"{name} must be a pair of positive ints; use scaling='tensor' for "
                    "one scale per tensor"
                )
        check_choice("fmt", self.fmt, FP8_FORMATS)
        check_choice("grad_fmt", self.grad_fmt, FP8_FORMATS)
        check_choice("scaling", self.scaling, FP8_SCALING)
        check_bool("pow2_scale", self.pow2_scale)
        check_accumulator(self.acc_mantissa_bits, self.k_slice, self.promote_every)

    def blocks(self) -> tuple[Any, Any, Any]:
        """(activation, weight, gradient) blocks; None each under per-tensor scaling."""
        if self.scaling == "tensor":
            return None, None, None
        return self.act_block, self.weight_block, self.grad_block

    def replace(self, **changes: Any) -> FP8Config:
        return dataclasses.replace(self, **changes)


@no_type_check  # validated in __post_init__ with a ValueError naming the field (see the module docstring)
@dataclass(frozen=True)
class MTPConfig:
    """Multi-token prediction (V3 §2.2): D sequential modules, each one more token ahead, and the
    weight lambda of their loss, 0.3 then 0.1 in V3. Each field's metadata holds its help text (the
    CLI's `--mtp-*` options are made from it)."""

    depth: int = field(
        default=1, metadata={"help": "D, the number of sequential MTP modules (V3: 1)"}
    )
    loss_weight: float = field(
        default=0.3, metadata={"help": "lambda, the MTP loss weight at the start (V3: 0.3)"}
    )
    loss_weight_final: float = field(
        default=0.1, metadata={"help": "lambda once the switch is passed (V3: 0.1)"}
    )
    switch_at: float = field(
        default=10 / 14.8,  # V3: lambda 0.3 for the first 10T of 14.8T tokens, then 0.1
        metadata={"help": "fraction of the training steps after which lambda drops"},
    )

    def __post_init__(self) -> None:
        check_int("mtp.depth", self.depth, 1, 8)
        check_number("mtp.loss_weight", self.loss_weight, 0.0)
        check_number("mtp.loss_weight_final", self.loss_weight_final, 0.0)
        check_number("mtp.switch_at", self.switch_at, 0.0, 1.0)

    def weight_at(self, step: int, total_steps: int) -> float:
        """lambda at a training step: `loss_weight` before `switch_at` of the run, then the final one."""
        return self.loss_weight if step < self.switch_at * total_steps else self.loss_weight_final

    def replace(self, **changes: Any) -> MTPConfig:
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- the model


@no_type_check  # validated in __post_init__ with a ValueError naming the field (see the module docstring)
@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder-only transformer (pre-norm, RoPE, SwiGLU, GQA)."""

    vocab_size: int = 128  # >= the tokenizer's vocabulary; padded to a round number
    d_model: int = 128  # D, the residual-stream width
    n_layers: int = 2
    n_heads: int = 4  # N, query heads
    n_kv_heads: int = 4  # key/value heads: N for MHA, 1 for MQA, anything dividing N for GQA
    head_dim: int = 32  # H
    ffn_dim: int = 384  # F, the SwiGLU hidden width
    max_seq_len: int = 64  # the longest sequence (prompt + answer) the model is used on
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    dtype: str = "float32"  # compute dtype: float32 on CPU, bfloat16 on an accelerator
    param_dtype: str = "float32"  # master weights stay float32
    tie_embeddings: bool = False
    seed: int = 0
    # The techniques; None = the baseline.
    mla: MLAConfig | None = None
    moe: MoEConfig | None = None
    fp8: FP8Config | None = None
    mtp: MTPConfig | None = None
    yarn: YaRNConfig | None = None  # YaRN-scaled RoPE (V3 §4.3); None = plain RoPE

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "ffn_dim",
            "max_seq_len",
        ):
            check_int(name, getattr(self, name), 1)
        check_number("rope_theta", self.rope_theta, 0.0, low_open=True)
        check_number("norm_eps", self.norm_eps, 0.0, low_open=True)
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads}): "
                "each key/value head is shared by n_heads // n_kv_heads query heads"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"head_dim must be even for RoPE (it rotates pairs), got {self.head_dim}"
            )
        check_choice("dtype", self.dtype, tuple(DTYPES))
        check_choice("param_dtype", self.param_dtype, tuple(DTYPES))
        check_bool("tie_embeddings", self.tie_embeddings)
        check_int("seed", self.seed, 0)
        for name, cls in (
            ("mla", MLAConfig),
            ("moe", MoEConfig),
            ("fp8", FP8Config),
            ("mtp", MTPConfig),
            ("yarn", YaRNConfig),
        ):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), cls):
                raise ValueError(
                    f"{name} must be None or a minids.config.{cls.__name__}, "
                    f"got {type(getattr(self, name)).__name__}"
                )
        if self.moe is not None and self.moe.n_dense_layers >= self.n_layers:
            raise ValueError(
                f"moe.n_dense_layers ({self.moe.n_dense_layers}) must be < n_layers ({self.n_layers}): "
                "otherwise no block would use the MoE feed-forward"
            )

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    @property
    def attention(self) -> str:
        """ "mla" with an `mla` sub-config; otherwise "mha", "gqa" or "mqa" from the key/value heads."""
        if self.mla is not None:
            return "mla"
        if self.n_kv_heads == self.n_heads:
            return "mha"
        return "mqa" if self.n_kv_heads == 1 else "gqa"

    @property
    def precision(self) -> str:
        """ "fp8" with an `fp8` sub-config, else "bf16" or "fp32" from the compute dtype."""
        if self.fp8 is not None:
            return "fp8"
        return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[self.dtype]

    def with_precision(self, precision: str) -> ModelConfig:
        """This config trained in "fp32", "bf16" or "fp8" (V3's recipe: bf16 compute around FP8 GEMMs).

        Master weights stay float32 in every case.
        """
        check_choice("precision", precision, ("bf16", "fp32", "fp8"))
        if precision == "fp32":
            return dataclasses.replace(self, dtype="float32", fp8=None)
        if precision == "bf16":
            return dataclasses.replace(self, dtype="bfloat16", fp8=None)
        return dataclasses.replace(self, fp8=self.fp8 or FP8Config())

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown ModelConfig fields {unknown}; known fields are {sorted(known)}"
            )
        d = dict(d)
        for name, sub in (
            ("mla", MLAConfig),
            ("moe", MoEConfig),
            ("fp8", FP8Config),
            ("mtp", MTPConfig),
            ("yarn", YaRNConfig),
        ):
            if isinstance(d.get(name), dict):
                d[name] = sub(**d[name])  # FP8Config turns JSON lists back into tuples
        return cls(**d)


# --------------------------------------------------------------------------------- presets

TINY = ModelConfig(
    vocab_size=128,
    d_model=128,
    n_layers=3,
    n_heads=4,
    n_kv_heads=4,
    head_dim=32,
    ffn_dim=384,
    max_seq_len=24,
)
SMALL = ModelConfig(
    vocab_size=128,
    d_model=256,
    n_layers=6,
    n_heads=8,
    n_kv_heads=4,
    head_dim=32,
    ffn_dim=768,
    max_seq_len=256,
)

# The real DeepSeek architectures. Sources: DeepSeek-V3 report §4.2 and its released
# config_671B.json; DeepSeek-V2 report §3.1.2 and Appendix B (V2-Lite).
_MLA_V2_V3 = MLAConfig(
    q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128
)
_BIG = dict(dtype="bfloat16", max_seq_len=4096, n_heads=128, n_kv_heads=128, head_dim=128)
DEEPSEEK_V3 = ModelConfig(
    vocab_size=129_280,
    d_model=7168,
    n_layers=61,
    ffn_dim=18432,
    mla=_MLA_V2_V3,
    **_BIG,
    moe=MoEConfig(
        n_routed_experts=256,
        n_shared_experts=1,
        experts_per_token=8,
        expert_ffn_dim=2048,
        gate="sigmoid",
        route_scale=2.5,
        n_groups=8,
        groups_per_token=4,
        balancing="aux_free+seq_aux_loss",
        aux_loss_alpha=1e-4,
        bias_update_speed=1e-3,
        n_dense_layers=3,
    ),
)
DEEPSEEK_V2 = ModelConfig(
    vocab_size=102_400,
    d_model=5120,
    n_layers=60,
    ffn_dim=12288,
    mla=_MLA_V2_V3,
    **_BIG,
    moe=MoEConfig(
        n_routed_experts=160,
        n_shared_experts=2,
        experts_per_token=6,
        expert_ffn_dim=1536,
        gate="softmax",
        route_scale=16.0,
        n_groups=8,
        groups_per_token=3,
        balancing="aux_loss",
        aux_loss_alpha=3e-3,
        n_dense_layers=1,
    ),
)
DEEPSEEK_V2_LITE = ModelConfig(
    vocab_size=102_400,
    d_model=2048,
    n_layers=27,
    ffn_dim=10944,
    mla=_MLA_V2_V3.replace(q_lora_rank=0),
    **{**_BIG, "n_heads": 16, "n_kv_heads": 16},
    moe=MoEConfig(
        n_routed_experts=64,
        n_shared_experts=2,
        experts_per_token=6,
        expert_ffn_dim=1408,
        gate="softmax",
        route_scale=1.0,
        balancing="aux_loss",
        aux_loss_alpha=1e-3,
        n_dense_layers=1,
    ),
)
# V3's design at toy size: MLA with query compression and decoupled RoPE, sigmoid routing in groups
# with a route scale, one shared expert, aux-free bias + the sequence-wise loss, one leading dense
# layer. Trains on the shipped tasks on a CPU.
TINY_V3 = ModelConfig(
    vocab_size=128,
    d_model=64,
    n_layers=4,
    n_heads=4,
    n_kv_heads=4,
    head_dim=16,
    ffn_dim=192,
    max_seq_len=24,
    mla=MLAConfig(
        q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16
    ),
    moe=MoEConfig(
        n_routed_experts=8,
        n_shared_experts=1,
        experts_per_token=2,
        expert_ffn_dim=64,
        gate="sigmoid",
        route_scale=2.5,
        n_groups=4,
        groups_per_token=2,
        balancing="aux_free+seq_aux_loss",
        aux_loss_alpha=1e-4,
        bias_update_speed=1e-3,
        n_dense_layers=1,
    ),
)

PRESETS: dict[str, ModelConfig] = {
    "tiny": TINY,
    "small": SMALL,
    "tiny_v3": TINY_V3,
    "deepseek_v3": DEEPSEEK_V3,
    "deepseek_v2": DEEPSEEK_V2,
    "deepseek_v2_lite": DEEPSEEK_V2_LITE,
}
PRESET_NAMES = tuple(PRESETS)


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A preset config by name, with optional field overrides: `preset("tiny", n_layers=4)`."""
    check_choice("preset", name, PRESET_NAMES)
    return dataclasses.replace(PRESETS[name], **overrides)


# -------------------------------------------------------------------------------- counting


@dataclass(frozen=True)
class ParamCounts:
    total: int
    activated: int
    embedding: int  # the input table, V * D (in `activated`: one row, D, unless tied to the head)
    head: int  # the output head, V * D (0 when tied)
    attention: int  # all layers
    dense_ffn: int  # all dense-FFN layers
    moe_total: int  # all MoE layers: router + shared + every routed expert
    moe_activated: int  # all MoE layers: router + shared + K routed experts
    norms: int
    # The MTP modules (`cfg.mtp`), not in `total` or `activated`: their own weights only, since
    # they share the embedding and the output head with the main model (V3 §2.2).
    mtp: int = 0
    mtp_activated: int = 0


def attention_params(cfg: ModelConfig) -> int:
    """Weights of one attention layer (without its RMSNorm in front)."""
    D, N = cfg.d_model, cfg.n_heads
    m = cfg.mla
    if m is None:
        H, M = cfg.head_dim, cfg.n_kv_heads
        return D * N * H + 2 * D * M * H + N * H * D
    if m.q_lora_rank:
        query = D * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * N * m.qk_head_dim
    else:
        query = D * N * m.qk_head_dim
    kv = (
        D * (m.kv_lora_rank + m.qk_rope_head_dim)
        + m.kv_lora_rank
        + m.kv_lora_rank * N * (m.qk_nope_head_dim + m.v_head_dim)
    )
    indexer = 0
    if m.dsa is not None:  # wq_b, wk, the key's LayerNorm (scale and bias), weights_proj
        d = m.dsa
        indexer = (
            m.q_lora_rank * d.index_n_heads * d.index_head_dim
            + D * d.index_head_dim
            + 2 * d.index_head_dim
            + D * d.index_n_heads
        )
    return query + kv + N * m.v_head_dim * D + indexer


def moe_param_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(total, activated) parameters of one MoE layer: activated = router + shared + K routed."""
    moe = cfg.moe
    if not isinstance(moe, MoEConfig):
        raise TypeError(f"cfg.moe must be a MoEConfig, got {type(moe).__name__}")
    per_expert = 3 * cfg.d_model * moe.expert_ffn_dim  # gate, up and down projections
    router = moe.n_routed_experts * cfg.d_model
    shared = moe.n_shared_experts * per_expert
    total = router + shared + moe.n_routed_experts * per_expert
    return total, router + shared + moe.experts_per_token * per_expert


def mtp_param_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(total, activated) weights of all `cfg.mtp.depth` MTP modules, shared embedding and head left out.

    One module: RMSNorms of the hidden state and of the embedding, the projection M_k (2D -> D),
    a transformer block like the main model's last one (MoE when the model has MoE layers), and
    the RMSNorm in front of the shared head.
    """
    if cfg.mtp is None:
        return 0, 0
    D = cfg.d_model
    ffn_total = ffn_activated = 3 * D * cfg.ffn_dim
    if cfg.moe is not None:
        ffn_total, ffn_activated = moe_param_counts(cfg)
    own = 2 * D + 2 * D * D + D + 2 * D + attention_params(cfg)  # norms, M_k, head norm, block
    return cfg.mtp.depth * (own + ffn_total), cfg.mtp.depth * (own + ffn_activated)


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Parameters of the model `cfg` describes, counted from the config alone.

    Every weight matrix and norm scale, embedding and output head included; the MTP modules are
    counted apart, in `mtp` and `mtp_activated`, and are in neither `total` nor `activated`.
    *Activated* parameters are those one token's forward pass reads: one row of the embedding table
    (D numbers, not V x D) unless it is tied to the head, the output head, attention, dense FFNs,
    and in a MoE layer the router, the shared experts and K of the E routed experts.
    """
    V, D, L = cfg.vocab_size, cfg.d_model, cfg.n_layers
    n_dense = L if cfg.moe is None else cfg.moe.n_dense_layers
    n_moe = L - n_dense
    embedding, head = V * D, 0 if cfg.tie_embeddings else V * D
    attention = L * attention_params(cfg)
    dense_ffn = n_dense * 3 * D * cfg.ffn_dim
    moe_total, moe_activated = moe_param_counts(cfg) if n_moe else (0, 0)
    norms = 2 * L * D + D  # two RMSNorms per block and the final one (MLA's own are in `attention`)
    shared = embedding + head + attention + dense_ffn + norms
    lookup = (
        embedding - D if head else 0
    )  # a token reads one row, unless the table is also the head
    return ParamCounts(
        total=shared + n_moe * moe_total,
        activated=shared - lookup + n_moe * moe_activated,
        embedding=embedding,
        head=head,
        attention=attention,
        dense_ffn=dense_ffn,
        moe_total=n_moe * moe_total,
        moe_activated=n_moe * moe_activated,
        norms=norms,
        mtp=mtp_param_counts(cfg)[0],
        mtp_activated=mtp_param_counts(cfg)[1],
    )
