"""Exercise 06: what a DeepSeek-V3 block costs, counted from its config.

Notebook 06 builds a tiny DeepSeek-V3 (MLA attention, a MoE FFN with a shared expert and
group-limited routing) and prints what `minids.cost` says it costs. Here you write that
arithmetic yourself, from the config alone, and the grader checks it against the arrays of a
model it builds and against DeepSeek-V3's published size:

1. `attention_params`: the weights of one attention layer, MHA/GQA or MLA.
2. `moe_param_counts`: (total, activated) weights of one MoE layer.
3. `training_flops_per_token`: the FLOPs of one training step per token, 3 x the forward pass.

The config is a `minids.config.ModelConfig` (frozen dataclass); print one to see it:
`from minids.config import preset; print(preset("tiny_v3"))`. Letters: D d_model, N n_heads,
M n_kv_heads, H head_dim, V vocab_size, L n_layers, E routed experts, K experts per token,
F expert_ffn_dim.

How to work:
- Replace each `raise NotImplementedError` with your code (plain Python integers; no JAX).
- Grade yourself with `pytest exercises/test_06_tiny_deepseek_v3.py`.

When all checks pass, compare with `minids/config.py` (`attention_params`, `moe_param_counts`) and
`minids/cost.py` (`training_flops_per_token`), the answer key, and run `python -m minids cost`.

Points: 18 in all (attention_params 7, moe_param_counts 5, training_flops_per_token 6); a check is
worth 1 point unless its line below says 2.
"""

from __future__ import annotations

from minids.config import ModelConfig


def attention_params(cfg: ModelConfig) -> int:
    """Weights of one attention layer (not its RMSNorm in front), from the config.

    Standard attention (cfg.mla is None), N query heads and M key/value heads of H channels:
        W_Q (D, N·H) + W_K (D, M·H) + W_V (D, M·H) + W_O (N·H, D)          no biases

    MLA (cfg.mla = m, an MLAConfig; DeepSeek-V2 §2.1), with C = m.kv_lora_rank, R =
    m.qk_rope_head_dim, Hn = m.qk_nope_head_dim, Hv = m.v_head_dim, Hqk = Hn + R
    (m.qk_head_dim), Cq = m.q_lora_rank:
        queries: if Cq > 0: W_DQ (D, Cq) + its RMSNorm scale (Cq) + W_UQ (Cq, N·Hqk)
                 else:      W_Q (D, N·Hqk)
        keys and values: W_DKV and W_KR together (D, C + R) + the latent's RMSNorm scale (C)
                 + W_UK and W_UV together (C, N·(Hn + Hv))
        output: W_O (N·Hv, D)

    The grader checks (7 points): a multi-head config by hand (1); a grouped-query config,
    M < N (2); the tiny V3 config equals the attention arrays of a model built from it (2); MLA
    without query compression (1); DeepSeek-V3's 187,107,328 per layer (1).
    """
    raise NotImplementedError


def moe_param_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(total, activated) weights of one MoE layer of `cfg` (cfg.moe, a MoEConfig).

    Each expert, routed or shared, is a SwiGLU of three D x F matrices (gate, up, down);
    the router holds one centroid of D numbers per routed expert (E x D). A token runs the router,
    every shared expert and K = experts_per_token of the E routed ones:

        total     = router + shared + E routed experts
        activated = router + shared + K routed experts

    Returns: a pair of Python ints.

    The grader checks (5 points): a pair of ints (1); the total equals the MoE arrays of a built
    model (2); the activated count (1); one DeepSeek-V3 MoE layer, 11.32B total and 0.40B activated
    (1).
    """
    raise NotImplementedError


def training_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """FLOPs of one training step per token: 3 x (2 x activated matmul weights + attention).

    The forward pass does 2 FLOPs (a multiply and an add) per weight a token meets in a matmul,
    and the backward pass twice that (one matmul for the input gradient, one for the weights'),
    hence 3 x 2 = 6 per weight. The weights a token meets in a matmul: every layer's attention
    and FFN (dense, or router + shared + K routed experts), and the output head (V x D), but not
    the embedding table (a lookup, not a matmul) nor any RMSNorm scale (the blocks' two per
    layer, the final one, and MLA's two latent norms, counted in `attention_params`).

    Causal attention adds, per token and layer, the score and value products: query t meets
    t + 1 keys, on average (S + 1) / 2 at sequence length S, each costing 2 · N · (Hqk + Hv)
    FLOPs (Hqk = Hv = H for standard attention; MLA's qk_head_dim and v_head_dim). So

        flops = 3 · (2 · matmul weights + L · 2 · N · (Hqk + Hv) · (S + 1) / 2)

    Args: cfg; seq_len S, None meaning cfg.max_seq_len; anything but a positive int raises
        ValueError naming `seq_len`.
    Returns: a float.

    Hints: cfg.moe.n_dense_layers of the L layers keep a dense SwiGLU of width cfg.ffn_dim;
    cfg.tie_embeddings means the head is the embedding table (then it is the only V x D matrix
    and it is used as a matmul).

    The grader checks (6 points): tiny V3 at S = 24 equals 6 x the matmul weights of a built
    model plus attention (2); seq_len defaults to max_seq_len (1); the attention term grows by
    3 · L · N · (Hqk + Hv) per extra position (1); bad seq_len raises ValueError (1); a dense
    multi-head config by hand (1).
    """
    raise NotImplementedError
