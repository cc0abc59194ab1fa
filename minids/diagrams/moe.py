"""Diagrams for notebook 01 (DeepSeekMoE): the MoE layer and group-limited routing.

`draw_moe_layer` shows one token through V3's layer (arXiv 2412.19437, §2.1.2, eqs. 12-16): the
shared experts see every token; the router's bias b_i decides which K routed experts are chosen
(top-K of s + b) but the gates come from the unbiased affinities s. `draw_group_routing` shows
group-limited routing: rank the groups, keep the best few, choose the K experts inside them only.
"""

from __future__ import annotations

from minids.diagrams import COLORS, arrow, box, canvas


def draw_moe_layer():
    """One token u_t through a DeepSeekMoE layer: shared experts, router, top-K, gates, sum."""
    fig, ax = canvas(12.0, 6.6, scale=0.8)
    box(ax, 0.2, 2.9, 1.3, 0.8, "token $u_t$", COLORS["data"], fontsize=10)
    # Router: scores, bias, selection, gates.
    box(ax, 2.2, 4.6, 2.6, 0.8, "affinities\n$s_{i}=\\sigma(u_t^\\top e_i)$", COLORS["router"])
    box(ax, 5.4, 4.6, 2.4, 0.8, "choose: top-$K$ of\n$s_i + b_i$", COLORS["router"])
    box(ax, 5.4, 5.65, 2.4, 0.7, "bias $b_i$ (no gradient;\n$\\pm\\gamma$ per step)", "white")
    box(
        ax,
        8.4,
        4.6,
        3.3,
        0.8,
        "gates from unbiased $s$:\n$g_i = s_i\\,/\\,(\\mathrm{sum\\ of\\ chosen}\\ s_j)$",
        COLORS["router"],
    )
    arrow(ax, (1.5, 3.5), (2.2, 5.0))
    arrow(ax, (4.8, 5.0), (5.4, 5.0))
    arrow(ax, (6.6, 5.65), (6.6, 5.4))
    arrow(ax, (7.8, 5.0), (8.4, 5.0))
    arrow(ax, (3.5, 5.4), (3.5, 6.5), arrowstyle="-", linestyle="--")
    arrow(ax, (3.5, 6.5), (10.05, 6.5), arrowstyle="-", linestyle="--")
    arrow(ax, (10.05, 6.5), (10.05, 5.4), "$s$ (no $b$)", linestyle="--")
    # Routed experts: E small ones, K of them lit.
    chosen = {1, 4}
    for i in range(8):
        x = 2.2 + 0.85 * i
        lit = i in chosen
        box(
            ax,
            x,
            2.6,
            0.7,
            1.2,
            f"$E_{i + 1}$",
            COLORS["expert"] if lit else "white",
            edgecolor="#444444" if lit else "#bbbbbb",
        )
    ax.text(
        5.2, 3.95, "routed experts (fine-grained): only the chosen $K$ run", ha="center", fontsize=9
    )
    # Shared experts.
    box(ax, 2.2, 0.5, 2.0, 1.0, "shared expert(s)\nsee every token", COLORS["shared"])
    arrow(ax, (0.85, 2.9), (0.85, 1.0), arrowstyle="-")
    arrow(ax, (0.85, 1.0), (2.2, 1.0))
    arrow(ax, (1.5, 3.2), (2.2, 3.2))
    # Combine.
    box(ax, 10.0, 1.9, 1.7, 1.0, "$\\Sigma_i\\, g_i\\,E_i(u_t)$\n+ shared", COLORS["ffn"])
    for i in chosen:
        x = 2.2 + 0.85 * i + 0.35
        arrow(ax, (x, 2.6), (10.0, 2.4), linestyle="-", color="#2f7d32")
    arrow(ax, (10.6, 4.6), (10.6, 2.9), "$g_i$")
    arrow(ax, (4.2, 1.0), (10.85, 1.0), arrowstyle="-")
    arrow(ax, (10.85, 1.0), (10.85, 1.9))
    ax.set_title(
        "DeepSeekMoE layer (V3 §2.1.2): the bias picks the experts, the gates ignore it",
        fontsize=11,
    )
    return fig


def draw_group_routing():
    """Group-limited routing: score the groups, keep the best M, then top-K inside them only."""
    fig, ax = canvas(12.0, 4.2, scale=0.8)
    groups, per = 4, 4
    kept, chosen = {0, 2}, {1, 8, 10}
    for g in range(groups):
        x0 = 0.4 + 2.9 * g
        ok = g in kept
        box(
            ax,
            x0,
            1.2,
            2.6,
            1.6,
            "",
            "#f6f6f6" if ok else "white",
            edgecolor="#444444" if ok else "#cccccc",
        )
        ax.text(
            x0 + 1.3,
            3.05,
            f"group {g + 1}: " + ("kept" if ok else "skipped"),
            ha="center",
            fontsize=9,
            color="black" if ok else "#999999",
        )
        for j in range(per):
            e = g * per + j
            lit = e in chosen
            box(
                ax,
                x0 + 0.15 + 0.6 * j,
                1.5,
                0.5,
                1.0,
                f"{e + 1}",
                COLORS["expert"] if lit else "white",
                edgecolor="#444444" if ok else "#cccccc",
                fontsize=8,
            )
    ax.text(
        6.0,
        0.6,
        "1. score each group (V3: sum of its two best $s+b$; V2: its best $s$)   "
        "2. keep the best $M$ groups   3. top-$K$ experts inside them",
        ha="center",
        fontsize=9,
    )
    ax.text(
        6.0,
        3.75,
        f"16 experts in {groups} groups, M = 2 groups per token, K = 3 experts (green = chosen)",
        ha="center",
        fontsize=10,
    )
    return fig
