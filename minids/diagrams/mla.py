"""Diagrams for notebook 02 (multi-head latent attention): what is cached, and where absorption happens.

`draw_mla_cache` sets one token's cache under MHA (a key and a value per head: 2·n_h·d_h numbers per
layer) beside MLA's (the latent c_KV of width d_c plus one RoPE key of width d_R shared by all heads),
DeepSeek-V2 (arXiv 2405.04434) §2.1 and Table 1. `draw_mla_absorbed_decode` shows a decode step that
reads the latent cache directly: W_UK is folded into the query side, W_UV into the output side.
"""

from __future__ import annotations

from minids.diagrams import COLORS, arrow, box, canvas


def draw_mla_cache():
    """One token's KV cache per layer: MHA (2·n_h·d_h) vs MLA (d_c + d_R)."""
    fig, ax = canvas(12.0, 5.2, scale=0.8)
    # MHA: n_h keys and n_h values.
    ax.text(2.9, 4.75, "MHA caches, per token and layer", ha="center", fontsize=10)
    box(ax, 0.3, 3.6, 1.2, 0.7, "$h_t$", COLORS["data"])
    for i in range(4):
        box(ax, 2.1 + 0.9 * i, 3.6, 0.8, 0.7, f"$k_{i + 1}$", COLORS["cache"], fontsize=8)
        box(ax, 2.1 + 0.9 * i, 2.6, 0.8, 0.7, f"$v_{i + 1}$", COLORS["cache"], fontsize=8)
    arrow(ax, (1.5, 3.95), (2.1, 3.95))
    arrow(ax, (1.5, 3.8), (2.1, 2.95))
    ax.text(
        3.8,
        2.1,
        "$n_h$ keys + $n_h$ values of $d_h$ each:\n$2\\,n_h d_h$ numbers (V3-sized: 32,768)",
        ha="center",
        va="top",
        fontsize=9,
    )
    # MLA: latent + rope key.
    ax.text(9.0, 4.75, "MLA caches, per token and layer", ha="center", fontsize=10)
    box(ax, 6.6, 3.6, 1.2, 0.7, "$h_t$", COLORS["data"])
    box(ax, 8.4, 3.6, 2.2, 0.7, "$c^{KV}_t$  (width $d_c$)", COLORS["latent"], linewidth=2.0)
    box(ax, 8.4, 2.6, 1.2, 0.7, "$k^R_t$ ($d_R$)", COLORS["cache"], linewidth=2.0)
    arrow(ax, (7.8, 3.95), (8.4, 3.95), "")
    arrow(ax, (7.8, 3.8), (8.4, 2.95))
    ax.text(8.1, 4.1, "$W^{DKV}$", ha="center", fontsize=8)
    ax.text(7.75, 3.1, "$W^{KR}$, RoPE", ha="right", fontsize=8)
    ax.text(
        9.4,
        2.1,
        "one latent + one RoPE key shared by all heads:\n$d_c + d_R$ numbers (V3: 512 + 64 = 576)",
        ha="center",
        va="top",
        fontsize=9,
    )
    ax.text(
        6.0,
        0.55,
        "keys and values are rebuilt from $c^{KV}$ by $W^{UK}$ and $W^{UV}$ "
        "(or absorbed, see the next figure)",
        ha="center",
        fontsize=9,
        style="italic",
    )
    return fig


def draw_mla_absorbed_decode():
    """A decode step in latent space: W_UK on the query side, W_UV on the output side."""
    fig, ax = canvas(12.0, 4.6, scale=0.8)
    box(ax, 0.2, 2.9, 1.5, 0.8, "new token's\n$q^C$ (per head)", COLORS["attention"])
    box(ax, 2.3, 2.9, 2.0, 0.8, "$\\tilde q = W^{UK\\top} q^C$\n(width $d_c$)", COLORS["router"])
    box(
        ax,
        5.0,
        2.9,
        2.4,
        0.8,
        "scores $\\tilde q \\cdot c^{KV}_s$\n$+\\ q^R \\cdot k^R_s$",
        COLORS["attention"],
    )
    box(
        ax,
        5.0,
        0.6,
        2.4,
        0.9,
        "latent cache\n$c^{KV}_s, k^R_s$ for all $s$",
        COLORS["latent"],
        linewidth=2.0,
    )
    box(
        ax, 8.0, 2.9, 1.8, 0.8, "softmax, then\n$\\Sigma_s\\, p_s\\, c^{KV}_s$", COLORS["attention"]
    )
    box(ax, 10.3, 2.9, 1.5, 0.8, "$W^{O} W^{UV}$\n(output side)", COLORS["router"])
    arrow(ax, (1.7, 3.3), (2.3, 3.3))
    arrow(ax, (4.3, 3.3), (5.0, 3.3))
    arrow(ax, (7.4, 3.3), (8.0, 3.3))
    arrow(ax, (9.8, 3.3), (10.3, 3.3))
    arrow(ax, (6.2, 1.5), (6.2, 2.9), "read")
    arrow(ax, (7.4, 1.05), (8.9, 1.05), arrowstyle="-")
    arrow(ax, (8.9, 1.05), (8.9, 2.9))
    ax.text(3.3, 2.5, "$W^{UK}$ folded into\nthe query", ha="center", va="top", fontsize=8)
    ax.text(11.05, 2.5, "$W^{UV}$ folded into\nthe output", ha="center", va="top", fontsize=8)
    ax.text(
        6.0,
        4.25,
        "Absorbed decoding (V2 §2.1.2): no per-head key or value is ever rebuilt from the cache",
        ha="center",
        fontsize=10,
    )
    return fig
