"""Diagrams for notebook 09 (long context): DeepSeek Sparse Attention on MLA, and YaRN's ramp.

`draw_dsa` follows one query through the lightning indexer (H_I ReLU heads scoring every earlier
token), the top-k selector and MLA reading only the k gathered latents (DeepSeek-V3.2-Exp report,
Figure 1 and eqs. 1-2). `draw_yarn_bands` sets RoPE's channel pairs along a line of rotation counts
over the original context and marks YaRN's three bands (V3 §4.3; Peng et al., 2023, §3.2).
"""

from __future__ import annotations

from minids.diagrams import COLORS, arrow, box, canvas


def draw_dsa():
    """One query's path: indexer scores over all earlier tokens, top-k, MLA over k latents."""
    fig, ax = canvas(12.0, 5.0, scale=0.8)
    box(ax, 0.2, 2.1, 1.2, 0.8, "$h_t$", COLORS["data"])
    box(
        ax,
        2.0,
        3.5,
        3.2,
        1.0,
        "lightning indexer\n$I_{t,s}=\\sum_j w_{t,j}\\,\\mathrm{ReLU}(q^I_{t,j}\\cdot k^I_s)$",
        COLORS["router"],
        fontsize=8,
    )
    box(
        ax,
        2.0,
        0.6,
        3.2,
        1.0,
        "MLA queries\n$[q^C ; \\mathrm{RoPE}(q^R)]$ from $c^Q_t$",
        COLORS["attention"],
        fontsize=8,
    )
    arrow(ax, (1.4, 2.7), (2.0, 3.9))
    arrow(ax, (1.4, 2.3), (2.0, 1.1))
    # the cache: every earlier token, some chosen
    ax.text(
        8.4,
        4.7,
        "cache: $c^{KV}_s, k^R_s$ and the indexer key $k^I_s$ for $s \\leq t$",
        ha="center",
        fontsize=9,
    )
    chosen = {1, 4, 5, 9}
    for s in range(12):
        color = COLORS["latent"] if s in chosen else COLORS["data"]
        box(ax, 5.9 + 0.45 * s, 3.7, 0.4, 0.6, "", color, linewidth=2.0 if s in chosen else 0.8)
    arrow(ax, (5.2, 4.0), (5.9, 4.0), "scores")
    box(ax, 6.6, 2.1, 2.6, 0.8, "top-$k$ selector", COLORS["router"], fontsize=9)
    arrow(ax, (8.0, 3.7), (7.9, 2.9))
    box(
        ax,
        6.2,
        0.4,
        3.6,
        1.2,
        "MLA over the $k$ gathered latents\n(absorbed, MQA mode): $O(L\\,k)$",
        COLORS["attention"],
        fontsize=8,
    )
    arrow(ax, (7.9, 2.1), (7.9, 1.6), "indices")
    arrow(ax, (5.2, 1.1), (6.2, 1.0))
    box(ax, 10.5, 0.6, 1.2, 0.8, "$u_t$", COLORS["data"])
    arrow(ax, (9.8, 1.0), (10.5, 1.0))
    ax.text(
        10.9,
        2.6,
        "training: KL(p || softmax $I$)\nwarm-up: all keys\nsparse: the $k$ chosen",
        ha="center",
        fontsize=8,
    )
    return fig


def draw_yarn_bands():
    """RoPE's pairs by how often they turn over the original context, and what YaRN does to each."""
    fig, ax = canvas(12.0, 3.6, scale=0.8)
    ax.text(
        6.0,
        3.3,
        "channel pair $i$: turns $r_i = L\\,\\theta^{-2i/H} / 2\\pi$ times over the original context $L$",
        ha="center",
        fontsize=9,
    )
    box(
        ax,
        0.3,
        1.5,
        3.6,
        1.0,
        "$r_i > \\beta_{fast}$ (32)\nkeep the frequency",
        COLORS["ffn"],
        fontsize=9,
    )
    box(
        ax,
        4.2,
        1.5,
        3.6,
        1.0,
        "between: a linear ramp\n$\\gamma_i$ blends the two",
        COLORS["norm"],
        fontsize=9,
    )
    box(
        ax,
        8.1,
        1.5,
        3.6,
        1.0,
        "$r_i < \\beta_{slow}$ (1)\ndivide it by $s$ (40)",
        COLORS["latent"],
        fontsize=9,
    )
    arrow(ax, (0.3, 1.1), (11.7, 1.1), "")
    ax.text(0.3, 0.6, "high frequency (small $i$)", fontsize=8)
    ax.text(11.7, 0.6, "low frequency (large $i$)", fontsize=8, ha="right")
    ax.text(
        6.0,
        0.2,
        "and every logit times $(0.1\\,\\ln s + 1)^2$: attention sharpened back",
        ha="center",
        fontsize=8,
    )
    return fig
