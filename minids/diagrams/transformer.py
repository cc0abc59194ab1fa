"""Diagrams for notebook 00: the pre-norm transformer block, and the KV cache during decoding.

The block is the one `minids.model.Block` builds (x + Attention(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)));
the cache drawing shows what `minids.generate` keeps between decoding steps.
"""

from __future__ import annotations

from minids.diagrams import COLORS, arrow, box, canvas, residual_branch


def draw_block():
    """One pre-norm block: RMSNorm -> attention -> add, RMSNorm -> SwiGLU -> add, on a residual stream."""
    fig, ax = canvas(11, 4.2)
    y, h = 1.6, 0.9
    # The residual stream runs left to right along the bottom.
    ax.plot([0.3, 10.5], [0.6, 0.6], color="#444444", linewidth=2)
    ax.text(0.3, 0.25, "x (B, T, D)", fontsize=9)
    ax.text(10.5, 0.25, "to the next block", fontsize=9, ha="right")
    ax.text(5.4, 0.2, "residual stream", fontsize=9, ha="center", style="italic")
    for x0, name, color, label in (
        (0.8, "RMSNorm", COLORS["norm"], "attn_norm"),
        (2.6, "causal attention\n+ RoPE on q, k", COLORS["attention"], "attn"),
        (5.6, "RMSNorm", COLORS["norm"], "ffn_norm"),
        (7.4, "SwiGLU\ndown(silu(gate x)\n* up x)", COLORS["ffn"], "ffn"),
    ):
        w = 1.4 if name == "RMSNorm" else 2.2
        box(ax, x0, y, w, h, name, COLORS["norm"] if name == "RMSNorm" else color)
        ax.text(x0 + w / 2, y + h + 0.15, label, ha="center", fontsize=8, family="monospace")
    for x_add, x_from, x_norm in ((4.95, 4.8, 0.8), (9.75, 9.6, 5.6)):
        residual_branch(ax, x_add, x_from, x_norm, y + h / 2, tap=0.3)
    arrow(ax, (2.2, y + h / 2), (2.6, y + h / 2))
    arrow(ax, (7.0, y + h / 2), (7.4, y + h / 2))
    ax.text(
        5.4,
        3.7,
        "x = x + Attention(RMSNorm(x));   x = x + SwiGLU(RMSNorm(x))",
        ha="center",
        fontsize=10,
        family="monospace",
    )
    return fig


def draw_kv_cache(prompt_len: int = 4, steps: int = 3):
    """Prefill writes the prompt's keys/values; each decode step appends one and attends over all."""
    slots = prompt_len + steps + 1
    fig, ax = canvas(11, 1.2 + 0.9 * (steps + 1))
    cell = 0.8
    x0 = 2.6
    for row in range(steps + 1):
        y = 0.9 * (steps - row) + 0.4
        filled = prompt_len + row
        label = "prefill (prompt)" if row == 0 else f"decode step {row}"
        ax.text(0.1, y + cell / 2, label, va="center", fontsize=9)
        for s in range(slots):
            if s < prompt_len:
                color = COLORS["cache"]
            elif s < filled:
                color = COLORS["attention"]
            else:
                color = "white"
            new = (row == 0 and s < prompt_len) or (row > 0 and s == filled - 1)
            box(
                ax,
                x0 + s * (cell + 0.1),
                y,
                cell,
                cell * 0.8,
                "k,v" if s < filled else "",
                color,
                linewidth=2.2 if new else 0.8,
                edgecolor="#cc0000" if new else "#888888",
            )
        if row == 0:
            ax.text(
                x0 + slots * (cell + 0.1) + 0.1,
                y + cell / 2,
                f"{prompt_len} tokens in one pass",
                va="center",
                fontsize=8,
            )
        else:
            ax.text(
                x0 + slots * (cell + 0.1) + 0.1,
                y + cell / 2,
                f"1 new token attends\nover all {filled} slots",
                va="center",
                fontsize=8,
            )
    ax.text(
        x0,
        0.9 * (steps + 1) + 0.45,
        "cache slots (one per token, per layer): red = written this step; pink = prompt; blue = generated",
        fontsize=9,
    )
    return fig
