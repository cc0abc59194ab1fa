"""Diagrams for notebook 03 (FP8 training): where the scales live, and how the accumulator promotes.

- `draw_scaling_granularity`: an activation matrix cut into 1x128 tiles (one scale per token per 128
  channels) beside a weight matrix cut into 128x128 blocks (one scale per block), DeepSeek-V3 §3.3.2
  and its Figure 7(a).
- `draw_promotion`: the inner dimension K of a GEMM cut into 32-element MMA slices; the tensor core's
  limited accumulator sums four of them (N_C = 128 elements), then the partial sum is copied into a
  float32 register on the CUDA cores, multiplied by the two scales, and the accumulator restarts from
  zero (V3 §3.3.2, Figure 7(b)).
"""

from __future__ import annotations

import numpy as np
from matplotlib.patches import Rectangle

from minids.diagrams import COLORS, arrow, box, canvas


def _grid(ax, x, y, cols, rows, cw, rh, shades, edge="#444444"):
    """A grid of cells, lower-left corner at (x, y), each cell shaded by `shades[row, col]`."""
    for r in range(rows):
        for c in range(cols):
            ax.add_patch(
                Rectangle(
                    (x + c * cw, y + (rows - 1 - r) * rh),
                    cw,
                    rh,
                    facecolor=(0.95, 0.55, 0.2, shades[r, c]),
                    edgecolor=edge,
                    linewidth=0.8,
                )
            )


def draw_scaling_granularity():
    """Activations in 1x128 tiles, weights in 128x128 blocks: one float32 scale per cell."""
    fig, ax = canvas(12.6, 5.4)
    rng = np.random.default_rng(0)

    # Activations x: 8 tokens x 512 channels = 8 x 4 tiles of 1x128.
    ax_x, ax_y, tw, th = 0.6, 1.0, 1.15, 0.38
    shades = rng.uniform(0.15, 0.55, (8, 4))
    shades[2, 1] = shades[5, 3] = 0.95  # tiles holding an outlier: only they get a large scale
    _grid(ax, ax_x, ax_y, 4, 8, tw, th, shades)
    ax.text(ax_x + 2 * tw, 4.85, "activations x  (tokens × channels)", ha="center", fontsize=11)
    ax.text(ax_x - 0.15, ax_y + 4 * th, "8 tokens", ha="right", va="center", rotation=90)
    for c in range(4):
        ax.text(ax_x + (c + 0.5) * tw, ax_y - 0.25, "128", ha="center", fontsize=8)
    ax.text(ax_x + 2 * tw, ax_y - 0.6, "channels (512)", ha="center", fontsize=9)
    ax.text(
        ax_x + 2 * tw,
        4.35,
        "one scale per 1×128 tile: per token, per 128 channels",
        ha="center",
        fontsize=9,
        color="#a04000",
    )

    # Weights W: 384 x 384 = 3 x 3 blocks of 128x128.
    w_x, w_y, bw = 6.8, 1.0, 0.95
    _grid(ax, w_x, w_y, 3, 3, bw, bw, rng.uniform(0.15, 0.6, (3, 3)))
    ax.text(w_x + 1.5 * bw, 4.85, "weights W  (in × out)", ha="center", fontsize=11)
    ax.text(
        w_x + 1.5 * bw,
        4.35,
        "one scale per 128×128 block",
        ha="center",
        fontsize=9,
        color="#a04000",
    )
    for c in range(3):
        ax.text(w_x + (c + 0.5) * bw, w_y - 0.25, "128", ha="center", fontsize=8)
        ax.text(w_x - 0.1, w_y + (c + 0.5) * bw, "128", ha="right", va="center", fontsize=8)

    # What a scale is.
    box(
        ax,
        w_x + 3 * bw + 0.4,
        1.6,
        2.0,
        1.7,
        "per cell:\ns = max|x| / 448\nq = E4M3(x / s)\nx ≈ q · s",
        color=COLORS["fp8"],
        fontsize=9,
    )
    ax.text(
        6.3,
        0.05,
        "darker = larger scale; the two dark tiles hold an outlier and do not affect their neighbours",
        ha="center",
        fontsize=8.5,
        color="#555555",
    )
    return fig


def draw_promotion():
    """K in 32-element MMA slices, a limited accumulator, promotion to float32 every N_C = 128."""
    fig, ax = canvas(12.0, 5.2)
    sw, y_slices = 1.3, 3.8
    x0 = 0.8
    for i in range(8):  # 8 slices of 32 = two windows of N_C = 128
        box(ax, x0 + i * sw + 0.05, y_slices, sw - 0.1, 0.6, f"k {32 * i}–{32 * i + 31}", "white")
    ax.text(x0 - 0.15, y_slices + 0.3, "K", ha="right", va="center", fontsize=11)
    ax.text(
        x0 + 4 * sw,
        y_slices + 0.85,
        "inner dimension K, one 32-element MMA (tensor-core instruction) per slice",
        ha="center",
        fontsize=9,
    )

    for w in range(2):  # one accumulator run per window of 128
        wx = x0 + 4 * w * sw
        box(
            ax,
            wx + 0.1,
            2.2,
            4 * sw - 0.2,
            0.75,
            "tensor-core accumulator: ~13 fraction bits,\ntruncated after each slice",
            COLORS["fp8"],
            fontsize=8.5,
        )
        for i in range(4):
            cx = wx + (i + 0.5) * sw
            arrow(ax, (cx, y_slices), (cx, 2.95))
        arrow(
            ax,
            (wx + 2 * sw, 2.2),
            (wx + 2 * sw, 1.3),
            "promote after N_C = 128:\ncopy, × s_x · s_w, reset to 0",
            fontsize=8,
        )
    box(
        ax,
        x0 + 0.1,
        0.45,
        8 * sw - 0.2,
        0.85,
        "float32 register on the CUDA cores: total += acc · s_x · s_w  (full precision)",
        COLORS["model"],
        fontsize=9.5,
    )
    ax.text(
        x0 + 4 * sw,
        0.1,
        "without promotion the accumulator runs over all of K and its truncation error grows with K",
        ha="center",
        fontsize=8.5,
        color="#555555",
    )
    return fig
