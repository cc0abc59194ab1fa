"""What a model costs: parameters, KV cache, training FLOPs per token, GPU-hours and dollars.

Everything here is arithmetic on a `ModelConfig`; nothing is built, so it works for the real
DeepSeek presets (`preset("deepseek_v3")`) as well as for the toy ones, and `tests/test_cost.py`
checks it against both: against the papers' figures, and against `count_params` of models we do
build.

What is counted (say it, because published figures differ in exactly these choices):

- **Parameters.** Every weight matrix and norm scale of the model, embedding and output head
  included; the multi-token prediction modules (`cfg.mtp`) are counted apart, in
  `ParamCounts.mtp`, and are in neither the total nor the activated figure, as in V3's "671B":
  V3's one MTP module adds 11.61B of its own (README_WEIGHTS.md: 11.5B), and the released
  checkpoint, which also stores a copy of the embedding and of the head beside it, holds
  671.03 + 11.61 + 1.85 = 684.5B (the "685B" of its model card). FLOPs and GPU-hours below are
  the main model's. *Activated* parameters are those one token's forward pass reads: one
  row of the embedding table (D numbers, not V x D), the output head, attention, dense FFNs, and in
  a MoE layer the router, the shared experts and K of the E routed experts. With this rule the
  calculator gives DeepSeek-V3 36.63B activated, V2 20.85B and V2-Lite 2.45B (the papers round to
  "37B", "21B" and "2.4B" without saying how they count the embedding). Counting the whole
  embedding table instead gives 37.55B, 21.38B and 2.66B. DeepSeek-V3's weights README uses that
  second convention: its 36.7B activated *includes* 0.9B of embedding and 0.9B of output head. So
  36.63B beside 36.7B is not a match; like for like, minids' 37.55B is 0.85B (2%) above it, and
  without embedding or head minids counts 35.70B against the README's 36.7 - 0.9 - 0.9 = 34.9B.
- **Training FLOPs per token** = 3 x the forward pass (the backward pass costs twice the forward:
  one matmul for the input gradient and one for the weight gradient), where the forward pass is
  2 FLOPs (a multiply and an add) per activated weight of every matmul (all parameters except the
  embedding table and the norm scales), plus causal attention: at a sequence length S, query t
  scores t + 1 keys, on average (S + 1) / 2, so QK^T and PV cost 2 * N * (Hqk + Hv) * (S + 1) / 2 per
  token per layer. Element-wise work (norms, activations, softmax, the router's top-k) is left
  out; it is a few percent of the total.
- **GPU-hours** = tokens x FLOPs per token / (peak FLOP/s x MFU) / 3600, and dollars = GPU-hours x
  price. V3 §1 reports 2.788M H800 GPU-hours (2664K pre-training, 119K context extension, 5K
  post-training) and $5.576M at $2 per GPU-hour; `implied_mfu` turns that back into a utilisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Parameter counts are arithmetic on the config, kept with it (minids/config.py); re-exported here.
from minids.config import ModelConfig, ParamCounts, attention_params, moe_param_counts, param_counts  # noqa: F401
from minids.mla import kv_cache_bytes_per_token

# DeepSeek-V3 §1 and Table 1: H800 GPU-hours (thousands) by stage, and the rental price it assumes.
V3_GPU_HOURS = {"pre-training": 2_664_000, "context extension": 119_000, "post-training": 5_000}
V3_PRICE_PER_GPU_HOUR = 2.0
V3_TRAINING_TOKENS = 14.8e12
# Dense peak throughput of one H800 (the same SXM tensor cores as an H100), FLOP/s.
H800_PEAK = {"bf16": 989e12, "fp8": 1979e12}


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs of the score and value products of causal attention, per token, all layers."""
    if cfg.mla is None:
        qk, v = cfg.head_dim, cfg.head_dim
    else:
        qk, v = cfg.mla.qk_head_dim, cfg.mla.v_head_dim
    return cfg.n_layers * 2 * cfg.n_heads * (qk + v) * (seq_len + 1) / 2


def matmul_params(cfg: ModelConfig) -> int:
    """Activated weights that take part in a matmul: all but the embedding lookup and norm scales."""
    counts = param_counts(cfg)
    norm_scales = counts.norms + _inner_norms(cfg) * cfg.n_layers
    lookup = cfg.d_model if counts.head else 0  # the one embedding row; a tied table is the head
    return counts.activated - lookup - norm_scales


def _inner_norms(cfg: ModelConfig) -> int:
    """MLA's RMSNorm scales on the latents, per layer (counted inside `attention_params`)."""
    if cfg.mla is None:
        return 0
    return cfg.mla.kv_lora_rank + cfg.mla.q_lora_rank


def training_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """3 x (2 x activated matmul weights + causal attention at `seq_len`), see the module docstring.

    `seq_len` defaults to `cfg.max_seq_len` (4096 for the DeepSeek presets, V3's pre-training length).
    """
    seq_len = cfg.max_seq_len if seq_len is None else seq_len
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    return 3 * (2 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len))


def gpu_hours(tokens: float, flops_per_token: float, peak_flops: float, mfu: float) -> float:
    """GPU-hours to process `tokens` at `mfu` of `peak_flops` per GPU."""
    for name, value in (
        ("tokens", tokens),
        ("flops_per_token", flops_per_token),
        ("peak_flops", peak_flops),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu!r}")
    return tokens * flops_per_token / (peak_flops * mfu) / 3600


def implied_mfu(tokens: float, flops_per_token: float, hours: float, peak_flops: float) -> float:
    """The utilisation that `hours` GPU-hours for `tokens` tokens imply."""
    return tokens * flops_per_token / (hours * 3600 * peak_flops)


def dollars(hours: float, price_per_gpu_hour: float = V3_PRICE_PER_GPU_HOUR) -> float:
    return hours * price_per_gpu_hour


@dataclass(frozen=True)
class CostReport:
    params: ParamCounts
    kv_bytes_per_token: int  # bf16 cache, all layers
    seq_len: int
    flops_per_token: float  # training
    tokens: float
    peak_flops: float
    mfu: float
    gpu_hours: float
    dollars: float


def cost_report(
    cfg: ModelConfig,
    *,
    tokens: float = V3_TRAINING_TOKENS,
    peak_flops: float = H800_PEAK["bf16"],
    mfu: float = 0.4,
    price_per_gpu_hour: float = V3_PRICE_PER_GPU_HOUR,
    seq_len: int | None = None,
) -> CostReport:
    """Everything above for one config; the defaults are V3's pre-training (14.8T tokens, H800, $2/h)."""
    seq_len = cfg.max_seq_len if seq_len is None else seq_len
    flops = training_flops_per_token(cfg, seq_len)
    hours = gpu_hours(tokens, flops, peak_flops, mfu)
    return CostReport(
        params=param_counts(cfg),
        kv_bytes_per_token=kv_cache_bytes_per_token(cfg, "bfloat16"),
        seq_len=seq_len,
        flops_per_token=flops,
        tokens=tokens,
        peak_flops=peak_flops,
        mfu=mfu,
        gpu_hours=hours,
        dollars=dollars(hours, price_per_gpu_hour),
    )


def _count(n: float) -> str:
    """A parameter count with a unit that keeps it readable: 671.03 B, 4.79 M, or 672,640."""
    if n >= 1e9:
        return f"{n / 1e9:10.2f} B"
    if n >= 1e6:
        return f"{n / 1e6:10.2f} M"
    return f"{n:12,.0f}"


def _flops(n: float) -> str:
    return f"{n / 1e9:10.1f} GFLOPs" if n >= 1e9 else f"{n / 1e6:10.2f} MFLOPs"


def format_report(name: str, r: CostReport) -> str:
    """The table `python -m minids cost` prints."""
    p = r.params
    hours = f"{r.gpu_hours / 1e6:10.3f} M" if r.gpu_hours >= 1e5 else f"{r.gpu_hours:12,.4g}"
    cost = f"{r.dollars / 1e6:10.3f} M$" if r.dollars >= 1e5 else f"{r.dollars:12,.4g} $"
    lines = [
        f"{name}",
        f"  parameters, total              {_count(p.total)}",
        f"  parameters, activated / token  {_count(p.activated)}   ({100 * p.activated / p.total:.1f}% of total)",
        f"    embedding + output head      {_count(p.embedding + p.head)}",
        f"    attention (all layers)       {_count(p.attention)}",
        f"    dense FFN layers             {_count(p.dense_ffn)}",
        f"    MoE layers, activated        {_count(p.moe_activated)}   (total {_count(p.moe_total).strip()})",
        *(
            [
                f"  MTP modules, not in the total  {_count(p.mtp)}   (activated {_count(p.mtp_activated).strip()}; "
                "embedding and head shared)",
                f"  total + MTP + stored copies    {_count(p.total + p.mtp + p.embedding + p.head)}   "
                "(the release stores embedding and head again with the MTP module)",
            ]
            if p.mtp
            else []
        ),
        f"  KV cache per token (bf16)      {r.kv_bytes_per_token / 1e3:10.3f} KB",
        f"  training FLOPs per token       {_flops(r.flops_per_token)}   (sequence length {r.seq_len})",
        f"  training on {r.tokens / 1e12:.1f}T tokens at {r.mfu:.0%} MFU of {r.peak_flops / 1e12:.0f} TFLOP/s:",
        f"    GPU-hours                    {hours}",
        f"    cost                         {cost}",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ expert-parallel all-to-all


def all_to_all_bytes_per_token(
    d_model: int,
    rows_per_token: float,
    *,
    dispatch_bytes: float = 1,
    combine_bytes: float = 2,
    scale_block: int | None = None,
    scale_bytes: int = 4,
    metadata_bytes: float = 0,
) -> dict[str, float]:
    """Bytes one token puts on the wire in an MoE layer's dispatch and combine all-to-alls.

    A token travels once to each device (or node) that holds any of its chosen experts, and its
    result comes back once from each: `rows_per_token` rows each way. A dispatched row is D values
    of `dispatch_bytes` (1 for FP8), one `scale_bytes` scale per `scale_block` values when FP8 is
    scaled in tiles, and `metadata_bytes` (say, the gates that travel with it); a combined row is
    D values of `combine_bytes` (2 for BF16). `minids.parallel` checks this against the
    all-to-alls of a compiled program.
    """
    for name, value in (("d_model", d_model), ("rows_per_token", rows_per_token)):
        if isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    scales = 0 if scale_block is None else math.ceil(d_model / scale_block) * scale_bytes
    return {
        "dispatch": rows_per_token * (d_model * dispatch_bytes + scales + metadata_bytes),
        "combine": rows_per_token * d_model * combine_bytes,
    }


# DeepSeek-V3's training cluster (§3.1, §3.2): 2048 H800s, 8 per node; 16-way pipeline
# parallelism, 64-way expert parallelism spanning 8 nodes, ZeRO-1 data parallelism.
V3_CLUSTER = {"gpus": 2048, "gpus_per_node": 8, "pipeline": 16, "expert": 64}


def format_all_to_all(cfg: ModelConfig, max_nodes: int | None = None) -> str:
    """The all-to-all lines `python -m minids cost` prints for a MoE preset: bytes per token per
    MoE layer with FP8 dispatch (1x128 tiles, float32 scales) and BF16 combine, V3's choice
    (§3.3), when each token reaches at most `max_nodes` nodes (default: `groups_per_token`, V3's
    node-limited routing, M = 4) and when it may reach one per expert, up to K (or up to the
    number of groups, 8 for V3)."""
    moe = cfg.moe
    if moe is None:
        return ""
    limited = moe.groups_per_token if max_nodes is None else max_nodes
    n_moe = cfg.n_layers - moe.n_dense_layers
    D, K = cfg.d_model, moe.experts_per_token
    rows = {"node-limited": limited, "unlimited": min(K, moe.n_groups) if moe.n_groups > 1 else K}
    lines = [
        "  expert-parallel all-to-all, per token per MoE layer (FP8 dispatch + scales, BF16 combine):"
    ]
    for name, m in rows.items():
        b = all_to_all_bytes_per_token(D, m, dispatch_bytes=1, combine_bytes=2, scale_block=128)
        total = (b["dispatch"] + b["combine"]) * n_moe
        lines.append(
            f"    {name + ',':13} at most {m} nodes  dispatch {b['dispatch'] / 1e3:8.2f} KB"
            f"  combine {b['combine'] / 1e3:8.2f} KB   ({total / 1e6:.2f} MB per token, "
            f"{n_moe} MoE layers, forward)"
        )
    return "\n".join(lines)
