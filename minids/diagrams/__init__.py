"""Diagrams for the notebooks, drawn with matplotlib so that they can be changed and display anywhere.

Each notebook's figures live in a module of their own (`minids.diagrams.transformer` for notebook 00,
and so on); this file holds the few drawing pieces they share: a figure with no axes, a labelled box, an arrow
and a residual branch, in data coordinates of a canvas `width` by `height`.
"""

from __future__ import annotations

# A small palette the diagrams share, so that one idea has one colour in every notebook.
COLORS = {
    "attention": "#cfe2f3",
    "ffn": "#d9ead3",
    "norm": "#fff2cc",
    "expert": "#d9ead3",
    "shared": "#b6d7a8",
    "router": "#f4cccc",
    "cache": "#ead1dc",
    "latent": "#d9d2e9",
    "fp8": "#fce5cd",
    "data": "#eeeeee",
    "model": "#cfe2f3",
    "reward": "#f4cccc",
}


def canvas(width: float, height: float, scale: float = 0.9):
    """A figure with one axes spanning [0, width] x [0, height], no ticks, equal aspect."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width * scale, height * scale))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def box(ax, x: float, y: float, w: float, h: float, text: str = "", color: str = "white", **kw):
    """A rounded box with its lower-left corner at (x, y) and `text` centred in it."""
    from matplotlib.patches import FancyBboxPatch

    patch = FancyBboxPatch(
        (x, y),
        w,
        h,
        boxstyle="round,pad=0.02,rounding_size=0.08",
        facecolor=color,
        edgecolor=kw.pop("edgecolor", "#444444"),
        linewidth=kw.pop("linewidth", 1.0),
    )
    ax.add_patch(patch)
    if text:
        ax.text(
            x + w / 2,
            y + h / 2,
            text,
            ha="center",
            va="center",
            fontsize=kw.pop("fontsize", 9),
            **kw,
        )
    return patch


def arrow(ax, start: tuple[float, float], end: tuple[float, float], text: str = "", **kw):
    """An arrow from `start` to `end`, with an optional label beside its middle."""
    style = kw.pop("arrowstyle", "-|>")
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        arrowprops=dict(
            arrowstyle=style,
            color=kw.pop("color", "#444444"),
            linewidth=kw.pop("linewidth", 1.0),
            linestyle=kw.pop("linestyle", "-"),
            shrinkA=0,
            shrinkB=0,
        ),
    )
    if text:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        ax.text(mx + 0.08, my, text, ha="left", va="center", fontsize=kw.pop("fontsize", 8), **kw)


def residual_branch(
    ax,
    x_add: float,
    x_from: float,
    x_norm: float,
    y_mid: float,
    tap: float = 0.3,
    y_stream: float = 0.6,
):
    """One pre-norm residual branch over a stream drawn at height `y_stream`: the stream is tapped
    `tap` left of the norm box starting at `x_norm`, runs through the sublayer at height `y_mid`
    (leaving it at `x_from`), and is added back at the "+" circle at `x_add`."""
    from matplotlib.patches import Circle

    ax.add_patch(Circle((x_add, y_stream), 0.2, facecolor="white", edgecolor="#444444"))
    ax.text(x_add, y_stream, "+", ha="center", va="center", fontsize=12)
    arrow(ax, (x_norm - tap, y_stream), (x_norm - tap, y_mid))
    arrow(ax, (x_norm - tap, y_mid), (x_norm, y_mid))
    arrow(ax, (x_from, y_mid), (x_add, y_mid))
    arrow(ax, (x_add, y_mid), (x_add, y_stream + 0.2))
