"""Grader for exercise 06 (what a DeepSeek-V3 block costs): `pytest exercises/test_06_tiny_deepseek_v3.py`.

Each test checks your `attention_params`, `moe_param_counts` or `training_flops_per_token` in
`exercises/06_tiny_deepseek_v3.py`. The expected numbers come from the arrays of a tiny DeepSeek-V3
that this file builds (`minids.model.Transformer`), or are worked out by hand here; never from
calling the answer key. With `MINIDS_EXERCISES=solutions` the same tests grade minids' own.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from minids.config import preset
from minids.grading import fail, load_exercise

exercise = load_exercise(
    Path(__file__).with_name("06_tiny_deepseek_v3.py"),
    solutions={
        "attention_params": "minids.config",
        "moe_param_counts": "minids.config",
        "training_flops_per_token": "minids.cost",
    },
)
attention_params = exercise.attention_params
moe_param_counts = exercise.moe_param_counts
training_flops_per_token = exercise.training_flops_per_token

ATTENTION, MOE, FLOPS = "attention_params", "moe_param_counts", "training_flops_per_token"
TINY_V3 = preset("tiny_v3")


@functools.cache
def real_arrays() -> dict[str, dict[str, tuple[int, ...]]]:
    """The shapes of every weight of a tiny V3 built from its config, by part."""
    from minids.model import Transformer

    # eval_shape builds the model with shapes only (no numbers, no compiling): the real arrays'
    # shapes, in a fraction of a second.
    model = nnx.eval_shape(lambda: Transformer(TINY_V3, rngs=nnx.Rngs(0)))

    def shapes(module):
        leaves = jax.tree_util.tree_leaves_with_path(nnx.state(module, nnx.Param))
        return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}

    return {
        "attn": shapes(model.blocks[-1].attn),
        "moe": shapes(model.blocks[-1].ffn),
        "dense": shapes(model.blocks[0].ffn),
        "head": shapes(model.lm_head),
    }


def size(shapes) -> int:
    return sum(math.prod(s) for s in shapes.values())


def check_near(name, got, want, what, hint="", rtol=1e-9):
    if isinstance(got, bool) or not isinstance(got, int | float | np.integer | np.floating):
        fail(f"{name}: expected a number, got {type(got).__name__}")
    if not math.isclose(got, want, rel_tol=rtol):
        fail(
            f"{name}: {what}: got {got:,.0f}, want {want:,.0f} ({(got - want) / want:+.2%})."
            + (f"\nHint: {hint}" if hint else "")
        )


def check_count(name, got, want, what, hint=""):
    if isinstance(got, bool) or not isinstance(got, int | float | np.integer | np.floating):
        fail(f"{name}: expected a number, got {type(got).__name__}")
    if got != want:
        fail(
            f"{name}: {what}: got {got:,}, want {want:,} (off by {got - want:+,})."
            + (f"\nHint: {hint}" if hint else "")
        )


# ----------------------------------------------------------------------------------------------
# attention_params
# ----------------------------------------------------------------------------------------------


def test_attention_multi_head_by_hand():
    cfg = preset("tiny", d_model=64, n_heads=4, n_kv_heads=4, head_dim=16)
    check_count(ATTENTION, attention_params(cfg), 4 * 64 * 64, "D = 64, N = M = 4, H = 16: 4 D N H")


@pytest.mark.points(2)
def test_attention_grouped_query_by_hand():
    cfg = preset("tiny", d_model=64, n_heads=4, n_kv_heads=2, head_dim=16)
    want = 64 * 64 + 2 * 64 * 2 * 16 + 64 * 64
    check_count(
        ATTENTION,
        attention_params(cfg),
        want,
        "D = 64, N = 4, M = 2, H = 16: W_Q and W_O are D x N H, W_K and W_V only D x M H",
        hint="keys and values have n_kv_heads heads, queries n_heads.",
    )


@pytest.mark.points(2)
def test_attention_tiny_v3_equals_the_built_model():
    shapes = real_arrays()["attn"]
    listing = ", ".join(f"{k.split('.')[0]} {v}" for k, v in shapes.items())
    check_count(
        ATTENTION,
        attention_params(TINY_V3),
        size(shapes),
        f"the MLA layer of a built tiny V3 holds {listing}",
        hint="count both RMSNorm scales of MLA (q_norm, kv_norm) and the fused matrices "
        "wkv_a (D, C + R) and wkv_b (C, N (Hn + Hv)).",
    )


def test_attention_mla_without_query_compression():
    m = dataclasses.replace(TINY_V3.mla, q_lora_rank=0)
    cfg = dataclasses.replace(TINY_V3, mla=m)
    D, N, C, R, Hn, Hv = 64, 4, m.kv_lora_rank, m.qk_rope_head_dim, m.qk_nope_head_dim, m.v_head_dim
    want = D * N * (Hn + R) + D * (C + R) + C + C * N * (Hn + Hv) + N * Hv * D
    check_count(
        ATTENTION,
        attention_params(cfg),
        want,
        "MLA with q_lora_rank = 0: queries come straight from W_Q (D, N (Hn + R))",
        hint="with q_lora_rank = 0 there is no W_DQ, no query RMSNorm and no W_UQ.",
    )


def test_attention_deepseek_v3_per_layer():
    check_count(
        ATTENTION,
        attention_params(preset("deepseek_v3")),
        187_107_328,
        "one attention layer of DeepSeek-V3 (D 7168, N 128, Cq 1536, C 512, Hn 128, R 64, Hv 128)",
    )


# ----------------------------------------------------------------------------------------------
# moe_param_counts
# ----------------------------------------------------------------------------------------------


def moe_pair(cfg):
    got = moe_param_counts(cfg)
    if not isinstance(got, tuple | list) or len(got) != 2:
        fail(f"{MOE}: expected a pair (total, activated), got {type(got).__name__}")
    return got


def test_moe_returns_a_pair_of_ints():
    total, activated = moe_pair(TINY_V3)
    for what, value in (("total", total), ("activated", activated)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            fail(f"{MOE}: {what} should be an int, got {type(value).__name__} {value!r}")


@pytest.mark.points(2)
def test_moe_total_equals_the_built_model():
    shapes = real_arrays()["moe"]
    listing = ", ".join(f"{k.split('.')[0]} {v}" for k, v in shapes.items())
    total, _ = moe_pair(TINY_V3)
    check_count(
        MOE,
        total,
        size(shapes),
        f"the MoE layer of a built tiny V3 holds {listing}",
        hint="router E x D, plus 3 D F per expert, shared and routed.",
    )


def test_moe_activated_counts_k_routed_experts():
    moe, D = TINY_V3.moe, TINY_V3.d_model
    per_expert = 3 * D * moe.expert_ffn_dim
    want = moe.n_routed_experts * D + (moe.n_shared_experts + moe.experts_per_token) * per_expert
    _, activated = moe_pair(TINY_V3)
    check_count(MOE, activated, want, "router + shared + K = 2 of the 8 routed experts")


def test_moe_deepseek_v3_layer():
    D, F, E, K = 7168, 2048, 256, 8
    total, activated = moe_pair(preset("deepseek_v3"))
    check_count(MOE, total, E * D + (1 + E) * 3 * D * F, "one MoE layer of DeepSeek-V3, total")
    check_count(MOE, activated, E * D + (1 + K) * 3 * D * F, "... and activated")


# ----------------------------------------------------------------------------------------------
# training_flops_per_token
# ----------------------------------------------------------------------------------------------


def matmul_weights_of_the_built_model() -> int:
    """Activated matmul weights of tiny V3, from its arrays: no norm scales, K / E of the experts."""
    arrays, cfg = real_arrays(), TINY_V3
    moe = cfg.moe

    def matrices(shapes, routed_fraction=1.0):
        total = 0.0
        for path, shape in shapes.items():
            if len(shape) < 2:
                continue  # an RMSNorm scale
            total += math.prod(shape) * (routed_fraction if "routed" in path else 1.0)
        return total

    attention = cfg.n_layers * matrices(arrays["attn"])
    dense = moe.n_dense_layers * matrices(arrays["dense"])
    moe_layers = (cfg.n_layers - moe.n_dense_layers) * matrices(
        arrays["moe"], moe.experts_per_token / moe.n_routed_experts
    )
    return int(attention + dense + moe_layers + matrices(arrays["head"]))


def attention_term(cfg, S):
    m = cfg.mla
    return cfg.n_layers * 2 * cfg.n_heads * (m.qk_head_dim + m.v_head_dim) * (S + 1) / 2


@pytest.mark.points(2)
def test_flops_tiny_v3_equals_the_built_model():
    weights = matmul_weights_of_the_built_model()
    want = 3 * (2 * weights + attention_term(TINY_V3, 24))
    check_near(
        FLOPS,
        training_flops_per_token(TINY_V3, 24),
        want,
        what=f"6 x {weights:,} activated matmul weights of the built model + attention at S = 24",
        hint="leave out the embedding table and every RMSNorm scale; count K of the E routed "
        "experts; include the output head.",
    )


def test_flops_seq_len_defaults_to_max_seq_len():
    check_near(
        FLOPS,
        training_flops_per_token(TINY_V3),
        training_flops_per_token(TINY_V3, TINY_V3.max_seq_len),
        what="seq_len=None should mean cfg.max_seq_len",
    )


def test_flops_attention_grows_linearly_with_seq_len():
    m = TINY_V3.mla
    step = 3 * TINY_V3.n_layers * TINY_V3.n_heads * (m.qk_head_dim + m.v_head_dim)
    check_near(
        FLOPS,
        training_flops_per_token(TINY_V3, 101) - training_flops_per_token(TINY_V3, 100),
        step,
        what="one more position adds 3 L N (Hqk + Hv) FLOPs per token (the causal average "
        "(S + 1) / 2 grows by 1/2)",
    )


def test_flops_bad_seq_len_raises():
    for bad in (0, -5):
        try:
            training_flops_per_token(TINY_V3, bad)
        except ValueError as error:
            if "seq_len" not in str(error):
                fail(f"{FLOPS}: the ValueError should name `seq_len`, got: {error}")
            continue
        fail(f"{FLOPS}: seq_len={bad!r} should raise ValueError naming seq_len.")


def test_flops_dense_multi_head_by_hand():
    cfg = preset("tiny")
    D, L, V, F, N, H = (
        cfg.d_model,
        cfg.n_layers,
        cfg.vocab_size,
        cfg.ffn_dim,
        cfg.n_heads,
        cfg.head_dim,
    )
    M = cfg.n_kv_heads
    head = 0 if cfg.tie_embeddings else V * D
    weights = L * (2 * D * N * H + 2 * D * M * H + 3 * D * F) + (
        V * D if cfg.tie_embeddings else head
    )
    want = 3 * (2 * weights + L * 2 * N * 2 * H * (16 + 1) / 2)
    check_near(
        FLOPS,
        training_flops_per_token(cfg, 16),
        want,
        what=f"the dense tiny preset (D {D}, L {L}, N {N}, M {M}, H {H}, F {F}, V {V}) at S = 16",
    )
