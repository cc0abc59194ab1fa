"""Diagram for notebook 06: one DeepSeek-V3 block, with where each technique sits (V3 §2.1, Figure 2).

Multi-head latent attention (V2 §2.1) in the attention half, with its compressed latent cache;
DeepSeekMoE (shared + routed experts, sigmoid gates, aux-loss-free bias) in the feed-forward half,
except in the first dense layers; FP8 GEMMs in every linear layer (V3 §3.3); multi-token prediction
(V3 §2.2) drawn dashed: optional, it trains beside the main model and is then dropped or kept to
draft tokens for speculative decoding.
"""

from __future__ import annotations

from minids.diagrams import COLORS, arrow, box, canvas, residual_branch


def draw_v3_block():
    """One V3 block on the residual stream, each box labelled with the minids module that builds it."""
    fig, ax = canvas(11, 6)
    ax.plot([0.3, 10.6], [0.6, 0.6], color="#444444", linewidth=2)
    ax.text(0.3, 0.2, "x", fontsize=10)
    ax.text(10.6, 0.2, "next block, final RMSNorm, head", fontsize=8, ha="right")
    y, h = 1.5, 1.3
    box(ax, 0.7, y, 1.0, h, "RMSNorm", COLORS["norm"], fontsize=8)
    box(
        ax,
        2.0,
        y,
        2.6,
        h,
        "MLA  (mla.py)\nq, k, v from a latent\nc_kv = W_DKV x;\ndecoupled RoPE key k_R",
        COLORS["latent"],
        fontsize=8,
    )
    box(
        ax,
        2.0,
        3.3,
        2.6,
        0.7,
        "latent cache: only (c_kv, k_R)\nper token",
        COLORS["cache"],
        fontsize=8,
    )
    arrow(ax, (3.3, y + h), (3.3, 3.3))
    box(ax, 5.5, y, 1.0, h, "RMSNorm", COLORS["norm"], fontsize=8)
    box(
        ax,
        6.8,
        y,
        3.0,
        h,
        "DeepSeekMoE  (moe.py)\n1 shared expert + top-K of E\nrouted experts, sigmoid gates;\n"
        "aux-free bias picks experts",
        COLORS["expert"],
        fontsize=8,
    )
    box(
        ax,
        6.8,
        3.3,
        3.0,
        0.7,
        "plain SwiGLU (layers.py),\nno experts",
        COLORS["ffn"],
        fontsize=8,
    )
    ax.text(
        8.3,
        4.1,
        "in the first n_dense_layers blocks, instead:",
        ha="center",
        fontsize=8,
        style="italic",
    )
    for x_add, x_from, x_norm in ((5.0, 4.6, 0.7), (10.2, 9.8, 5.5)):
        residual_branch(ax, x_add, x_from, x_norm, y + h / 2, tap=0.25)
    arrow(ax, (1.7, y + h / 2), (2.0, y + h / 2))
    arrow(ax, (6.5, y + h / 2), (6.8, y + h / 2))
    box(
        ax,
        0.4,
        4.6,
        5.0,
        0.9,
        "FP8 (fp8.py): every linear layer's GEMMs in E4M3,\n1x128 / 128x128 scales; norms, head in higher precision",
        COLORS["fp8"],
        fontsize=8,
    )
    mtp = box(
        ax,
        5.8,
        4.6,
        4.8,
        0.9,
        "MTP (mtp.py, V3 §2.2): modules that predict t+2;\ndropped at inference, or kept to draft tokens",
        "white",
        fontsize=8,
    )
    mtp.set_linestyle("--")
    return fig
