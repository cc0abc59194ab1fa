"""Diagrams for notebook 07 (multi-token prediction).

- `draw_mtp_modules`: DeepSeek-V3 §2.2, Figure 3 in our own drawing: the main model and one MTP
  module side by side over the same positions. The module mixes the main model's hidden state h^0_i
  with the embedding of token i+1 (eq. 21), runs one transformer block (eq. 22) and predicts token
  i+2 through the shared output head (eq. 23); embedding and head are shared with the main model.
- `draw_speculative_step`: one pass of self-speculative decoding: the main model's token and the
  module's draft go through the main model together; the draft is kept or replaced, and the cache
  keeps or masks its slot.
"""

from __future__ import annotations

from minids.diagrams import COLORS, arrow, box, canvas


def draw_mtp_modules():
    """Main model (left) and MTP module 1 (right), with the shared embedding and output head."""
    fig, ax = canvas(13.0, 7.2)
    ax.text(0.2, 6.85, "main model: predicts token i+1", fontsize=11, weight="bold")
    ax.text(6.9, 6.85, "MTP module 1: predicts token i+2", fontsize=11, weight="bold")
    # Main model, bottom to top.
    box(ax, 0.4, 0.3, 2.6, 0.7, "tokens t_1 … t_i", COLORS["data"])
    box(ax, 0.4, 1.4, 2.6, 0.7, "embedding (shared)", COLORS["shared"])
    box(
        ax, 0.4, 2.5, 2.6, 1.3, "L transformer blocks\n(MLA or GQA,\nMoE or dense)", COLORS["model"]
    )
    box(ax, 0.4, 4.2, 2.6, 0.6, "RMSNorm → h^0_i", COLORS["norm"])
    box(ax, 0.4, 5.2, 2.6, 0.7, "output head (shared)", COLORS["shared"])
    ax.text(1.7, 6.25, "P(t_{i+1}) → main loss", ha="center", fontsize=9)
    for y0, y1 in ((1.0, 1.4), (2.1, 2.5), (3.8, 4.2), (4.8, 5.2), (5.9, 6.15)):
        arrow(ax, (1.7, y0), (1.7, y1))
    # MTP module.
    box(ax, 9.6, 0.3, 2.6, 0.7, "token t_{i+1}", COLORS["data"])
    box(ax, 9.6, 1.4, 2.6, 0.7, "embedding (shared)", COLORS["shared"])
    box(ax, 9.6, 2.5, 1.25, 0.55, "RMSNorm", COLORS["norm"], fontsize=8)
    box(ax, 6.9, 2.5, 1.25, 0.55, "RMSNorm", COLORS["norm"], fontsize=8)
    box(ax, 6.9, 3.35, 5.3, 0.6, "concatenate, then M_1 (2D → D)   (eq. 21)", COLORS["latent"])
    box(ax, 6.9, 4.25, 5.3, 0.6, "one transformer block, RMSNorm   (eq. 22)", COLORS["model"])
    box(ax, 6.9, 5.2, 5.3, 0.7, "output head (shared)   (eq. 23)", COLORS["shared"])
    ax.text(9.55, 6.25, "P(t_{i+2}) → λ · L_MTP   (eqs. 24-25)", ha="center", fontsize=9)
    arrow(ax, (10.9, 1.0), (10.9, 1.4))
    arrow(ax, (10.2, 2.1), (10.2, 2.5))
    arrow(ax, (3.0, 4.5), (5.6, 4.5))
    arrow(ax, (5.6, 4.5), (5.6, 2.78))
    arrow(ax, (5.6, 2.78), (6.9, 2.78))
    ax.text(4.3, 4.62, "h^0_i", ha="center", fontsize=9)
    for x in (7.5, 10.2):
        arrow(ax, (x, 3.05), (x, 3.35))
    for y0, y1 in ((3.95, 4.25), (4.85, 5.2), (5.9, 6.15)):
        arrow(ax, (9.55, y0), (9.55, y1))
    ax.text(
        6.5,
        0.05,
        "position i of both sees tokens ≤ i (main) and ≤ i+1 (module): the causal chain is kept",
        ha="center",
        fontsize=8.5,
        style="italic",
    )
    return fig


def draw_speculative_step():
    """One pass: verify [token t+1, draft t+2] with the main model, keep or replace the draft."""
    fig, ax = canvas(13.0, 5.0)
    box(ax, 0.2, 3.3, 2.4, 0.9, "token t+1\n(main model)", COLORS["data"])
    box(ax, 0.2, 1.9, 2.4, 0.9, "draft t+2\n(MTP module)", COLORS["latent"])
    box(
        ax,
        3.3,
        2.4,
        2.6,
        1.4,
        "main model, one pass\nover both tokens\n(2 cache slots)",
        COLORS["model"],
    )
    arrow(ax, (2.6, 3.75), (3.3, 3.3))
    arrow(ax, (2.6, 2.35), (3.3, 2.9))
    box(ax, 6.6, 3.3, 2.7, 0.9, "p after t+1:\ncheck the draft", COLORS["norm"], fontsize=8.5)
    box(
        ax,
        6.6,
        1.9,
        2.7,
        0.9,
        "p after the draft:\ntoken t+3 if kept",
        COLORS["norm"],
        fontsize=8.5,
    )
    arrow(ax, (5.9, 3.3), (6.6, 3.75))
    arrow(ax, (5.9, 2.9), (6.6, 2.35))
    box(
        ax,
        10.0,
        3.1,
        2.8,
        1.3,
        "kept (prob. min(1, p/q);\ngreedy: equal to argmax p)\n→ 2 tokens this pass",
        COLORS["ffn"],
        fontsize=8.5,
    )
    box(
        ax,
        10.0,
        1.3,
        2.8,
        1.5,
        "rejected: replace it from\nmax(0, p − q); its cache\nslot is masked (or the\nindex steps back)",
        COLORS["reward"],
        fontsize=8.5,
    )
    arrow(ax, (9.3, 3.75), (10.0, 3.75))
    arrow(ax, (9.3, 3.6), (10.0, 2.2))
    ax.text(
        6.5,
        0.55,
        "then the MTP module drafts again from the main model's new hidden state: one loop, "
        "1 + acceptance tokens per pass",
        ha="center",
        fontsize=8.5,
        style="italic",
    )
    return fig
