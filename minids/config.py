"""The whole model on one screen: frozen, validated configuration dataclasses and presets.

Every model in minids is built from a `ModelConfig`. It is a frozen dataclass, so a variant is made
with `dataclasses.replace(cfg, n_layers=4)` (or `preset("tiny", n_layers=4)`), and it is validated
in `__post_init__`: a bad value raises `ValueError` naming the field, the value and the rule, before
anything is traced or compiled.

Techniques attach their own sub-configs here: `moe` (minids.moe.MoEConfig), `mla`
(minids.mla.MLAConfig), `fp8` (minids.fp8.FP8Config) and, later, `mtp`. `None` means the plain
baseline: dense SwiGLU feed-forward, GQA attention, no FP8 GEMMs.

Presets:

- `tiny`: about 0.4M parameters, learns the shipped arithmetic and string tasks in a few minutes on a
  2-core CPU. The notebooks use it.
- `small`: about 5M parameters, for benchmarks and quick single-accelerator experiments.
- `tiny_v3`: DeepSeek-V3's architecture (MLA + DeepSeekMoE) at toy size, trainable on a CPU.
- `deepseek_v3`, `deepseek_v2`, `deepseek_v2_lite`: the real hyper-parameters, for the cost
  calculator (`minids.cost`); never built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if value != value or value == float("inf"):
        raise ValueError(f"{name} must be finite, got {value!r}")


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
    # Room for the techniques that later modules add (MLA, MoE, FP8, MTP). None = baseline.
    mla: Any = None
    moe: Any = None
    fp8: Any = None
    mtp: Any = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                     "ffn_dim", "max_seq_len"):
            _check_positive_int(name, getattr(self, name))
        _check_positive_float("rope_theta", self.rope_theta)
        _check_positive_float("norm_eps", self.norm_eps)
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads}): "
                "each key/value head is shared by n_heads // n_kv_heads query heads"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for RoPE (it rotates pairs), got {self.head_dim}")
        for name in ("dtype", "param_dtype"):
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {sorted(DTYPES)}, got {getattr(self, name)!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings must be a bool, got {self.tie_embeddings!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.moe is not None:
            from minids.moe import MoEConfig  # here, not at the top: minids.moe imports this module

            if not isinstance(self.moe, MoEConfig):
                raise ValueError(f"moe must be None or a minids.moe.MoEConfig, got {type(self.moe).__name__}")
            if self.moe.n_dense_layers >= self.n_layers:
                raise ValueError(
                    f"moe.n_dense_layers ({self.moe.n_dense_layers}) must be < n_layers ({self.n_layers}): "
                    "otherwise no block would use the MoE feed-forward"
                )
        if self.mla is not None:
            from minids.mla import MLAConfig

            if not isinstance(self.mla, MLAConfig):
                raise ValueError(f"mla must be None or a minids.mla.MLAConfig, got {type(self.mla).__name__}")
        if self.fp8 is not None:
            from minids.fp8 import FP8Config

            if not isinstance(self.fp8, FP8Config):
                raise ValueError(f"fp8 must be None or a minids.fp8.FP8Config, got {type(self.fp8).__name__}")
        if self.mtp is not None:
            raise ValueError("mtp is not implemented yet in minids; leave it None")

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    @property
    def attention(self) -> str:
        """"mla" with an `mla` sub-config; otherwise "mha", "gqa" or "mqa" from the key/value heads."""
        if self.mla is not None:
            return "mla"
        if self.n_kv_heads == self.n_heads:
            return "mha"
        return "mqa" if self.n_kv_heads == 1 else "gqa"

    @property
    def precision(self) -> str:
        """"fp8" with an `fp8` sub-config, else "bf16" or "fp32" from the compute dtype."""
        if self.fp8 is not None:
            return "fp8"
        return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[self.dtype]

    def with_precision(self, precision: str) -> ModelConfig:
        """This config trained in "fp32", "bf16" or "fp8" (V3's recipe: bf16 compute around FP8 GEMMs).

        Master weights stay float32 in every case.
        """
        if precision == "fp32":
            return dataclasses.replace(self, dtype="float32", fp8=None)
        if precision == "bf16":
            return dataclasses.replace(self, dtype="bfloat16", fp8=None)
        if precision == "fp8":
            from minids.fp8 import FP8Config

            return dataclasses.replace(self, fp8=self.fp8 or FP8Config())
        raise ValueError(f"precision must be one of ['bf16', 'fp32', 'fp8'], got {precision!r}")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known fields are {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("moe"), dict):
            from minids.moe import MoEConfig

            d["moe"] = MoEConfig(**d["moe"])
        if isinstance(d.get("mla"), dict):
            from minids.mla import MLAConfig

            d["mla"] = MLAConfig(**d["mla"])
        if isinstance(d.get("fp8"), dict):
            from minids.fp8 import FP8Config

            d["fp8"] = FP8Config(**d["fp8"])  # FP8Config turns JSON lists back into tuples
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=128, d_model=128, n_layers=3, n_heads=4, n_kv_heads=4, head_dim=32,
        ffn_dim=384, max_seq_len=24,
    ),
    "small": ModelConfig(
        vocab_size=128, d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, head_dim=32,
        ffn_dim=768, max_seq_len=256,
    ),
}


def deepseek_presets() -> dict[str, ModelConfig]:
    """The real DeepSeek architectures (PAPER_NUMBERS.md §1), and `tiny_v3`, the same design at toy size.

    The real ones feed the cost calculator (`minids.cost`); they are far too large to build here, and
    `Transformer` refuses to. Sources: DeepSeek-V3 report §4.2 and its released config_671B.json;
    DeepSeek-V2 report §3.1.2 and Appendix B (V2-Lite). Built on first use, since the sub-configs live
    in modules that import this one.
    """
    from minids.mla import MLAConfig
    from minids.moe import MoEConfig

    mla_v2v3 = MLAConfig(q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                         v_head_dim=128)
    big = dict(dtype="bfloat16", max_seq_len=4096, vocab_size=129_280, n_kv_heads=128, head_dim=128,
               n_heads=128)
    return {
        "deepseek_v3": ModelConfig(
            d_model=7168, n_layers=61, ffn_dim=18432, mla=mla_v2v3, **big,
            moe=MoEConfig(n_routed_experts=256, n_shared_experts=1, experts_per_token=8,
                          expert_ffn_dim=2048, gate="sigmoid", route_scale=2.5, n_groups=8,
                          groups_per_token=4, balancing="aux_free+seq_aux_loss", aux_loss_alpha=1e-4,
                          bias_update_speed=1e-3, n_dense_layers=3),
        ),
        "deepseek_v2": ModelConfig(
            d_model=5120, n_layers=60, ffn_dim=12288, mla=mla_v2v3, **{**big, "vocab_size": 102_400},
            moe=MoEConfig(n_routed_experts=160, n_shared_experts=2, experts_per_token=6,
                          expert_ffn_dim=1536, gate="softmax", route_scale=16.0, n_groups=8,
                          groups_per_token=3, balancing="aux_loss", aux_loss_alpha=3e-3,
                          n_dense_layers=1),
        ),
        "deepseek_v2_lite": ModelConfig(
            d_model=2048, n_layers=27, ffn_dim=10944, **{**big, "vocab_size": 102_400, "n_heads": 16,
                                                         "n_kv_heads": 16},
            mla=mla_v2v3.replace(q_lora_rank=0),
            moe=MoEConfig(n_routed_experts=64, n_shared_experts=2, experts_per_token=6,
                          expert_ffn_dim=1408, gate="softmax", route_scale=1.0, balancing="aux_loss",
                          aux_loss_alpha=1e-3, n_dense_layers=1),
        ),
        # V3's design at toy size: MLA with query compression and decoupled RoPE, sigmoid routing in
        # groups with a route scale, one shared expert, aux-free bias + the sequence-wise loss, one
        # leading dense layer. Trains on the shipped tasks on a CPU.
        "tiny_v3": ModelConfig(
            vocab_size=128, d_model=64, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=16, ffn_dim=192,
            max_seq_len=24,
            mla=MLAConfig(q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                          v_head_dim=16),
            moe=MoEConfig(n_routed_experts=8, n_shared_experts=1, experts_per_token=2, expert_ffn_dim=64,
                          gate="sigmoid", route_scale=2.5, n_groups=4, groups_per_token=2,
                          balancing="aux_free+seq_aux_loss", aux_loss_alpha=1e-4, bias_update_speed=1e-3,
                          n_dense_layers=1),
        ),
    }


PRESET_NAMES = ("tiny", "small", "tiny_v3", "deepseek_v3", "deepseek_v2", "deepseek_v2_lite")


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A preset config by name, with optional field overrides: `preset("tiny", n_layers=4)`."""
    if name in PRESETS:
        return dataclasses.replace(PRESETS[name], **overrides)
    if name in PRESET_NAMES:
        return dataclasses.replace(deepseek_presets()[name], **overrides)
    raise ValueError(f"preset must be one of {list(PRESET_NAMES)}, got {name!r}")
