"""Diagrams for notebook 08 (beyond one device): the mesh, dispatch and combine, pipeline timelines.

`draw_mesh` shows a (data=2, expert=4) mesh: what every device holds. `draw_dispatch_combine`
follows one token through expert parallelism (`minids.parallel`): routed on its own device, sent
once to each device that holds one of its experts (dispatch, an all-to-all), computed there, sent
back and summed (combine). `draw_pipeline_timeline` draws a simulated schedule from
`minids.pipeline`, one row per device, the way the DualPipe repository draws its schedules.
"""

from __future__ import annotations

from minids.diagrams import COLORS, arrow, box, canvas
from minids.pipeline import Timeline, Times, simulate


def draw_mesh(data: int = 2, expert: int = 4):
    """A (data, expert) mesh: each device's share of the batch and of the routed experts."""
    fig, ax = canvas(2.6 * expert + 1.6, 1.6 * data + 1.4, scale=0.75)
    for d in range(data):
        for e in range(expert):
            x, y = 1.4 + 2.6 * e, 0.4 + 1.6 * (data - 1 - d)
            device = d * expert + e
            box(
                ax,
                x,
                y,
                2.3,
                1.3,
                f"device {device}\nbatch rows: part {device}\nexperts {2 * e}-{2 * e + 1} of 8",
                COLORS["expert"] if e % 2 else COLORS["model"],
                fontsize=8,
            )
        ax.text(0.2, 1.05 + 1.6 * (data - 1 - d), f"data={d}", fontsize=9, va="center")
    for e in range(expert):
        ax.text(2.55 + 2.6 * e, 1.6 * data + 0.6, f"expert={e}", ha="center", fontsize=9)
    ax.text(
        0.2,
        1.6 * data + 1.1,
        "attention, norms, shared experts: a copy on every device; gradients summed by XLA",
        fontsize=9,
    )
    return fig


def draw_dispatch_combine(devices: int = 4):
    """One device's tokens through expert parallelism: route, dispatch, compute, combine."""
    fig, ax = canvas(13.0, 1.1 * devices + 2.4, scale=0.75)
    top = 1.1 * devices + 1.0
    ax.text(0.2, top + 0.8, "device 0 (its own tokens)", fontsize=10, weight="bold")
    box(
        ax,
        0.2,
        top - 0.9,
        2.2,
        1.2,
        "tokens $x$ (T, D)\nrouter: top-$K$\nexperts $\\to$ devices",
        COLORS["router"],
    )
    box(
        ax,
        3.0,
        0.4,
        2.3,
        1.1 * devices,
        "send buffer\n(P, Y, D)\n\none block per\ndestination,\nY slots each\n(rows past Y\nare dropped)",
        COLORS["data"],
    )
    arrow(ax, (2.4, top - 0.3), (3.0, 1.1 * devices - 0.2))
    for p in range(devices):
        y = 0.5 + 1.1 * (devices - 1 - p)
        box(
            ax,
            6.4,
            y,
            2.7,
            0.9,
            f"device {p}: experts\n{2 * p}, {2 * p + 1} on its rows",
            COLORS["expert"],
        )
        arrow(ax, (5.3, y + 0.45), (6.4, y + 0.45))
        arrow(ax, (9.1, y + 0.45), (10.2, y + 0.45))
    ax.text(5.85, 1.1 * devices + 0.5, "dispatch", ha="center", fontsize=9)
    ax.text(9.65, 1.1 * devices + 0.5, "combine", ha="center", fontsize=9)
    box(
        ax,
        10.2,
        0.4,
        2.6,
        1.1 * devices,
        "results\n(P, Y, D)\nback home:\neach token adds\nthe rows of its\ndevices, gate-\nweighted there",
        COLORS["data"],
    )
    ax.text(
        3.0,
        top + 0.25,
        "all-to-all: block p of every device goes to device p, and back",
        fontsize=9,
    )
    return fig


def draw_pipeline_timeline(timeline: Timeline | None = None, ax=None, title: str | None = None):
    """One row per device, one box per operation: F, B (full backward), Bi (input part), W, and
    F&B (a forward overlapped with a backward). Numbers are micro-batches; in DualPipe a white
    label marks the upward direction. Default: DualPipe, 8 devices, 20 micro-batches."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if timeline is None:
        timeline = simulate("dualpipe", 8, 20, Times(F=1.0, B=2.0, W=1.0, FB=2.5))
    colors = {"F": "#f6b26b", "B": "#6fa8dc", "Bi": "#93c47d", "W": "#8e7cc3", "FB": "#e06666"}
    fig = None
    if ax is None:
        fig, ax = plt.subplots(
            figsize=(min(16, 0.25 * timeline.makespan + 3), 0.4 * timeline.stages + 1)
        )
    for device, ops in enumerate(timeline.ops):
        y = timeline.stages - 1 - device
        for op in ops:
            ax.add_patch(
                Rectangle(
                    (op.start, y + 0.05),
                    op.end - op.start,
                    0.9,
                    facecolor=colors[op.kind],
                    edgecolor="#333333",
                    linewidth=0.5,
                )
            )
            label = str(op.micro) if op.kind != "FB" else f"{op.micro}|{op.micro2}"
            ax.text(
                (op.start + op.end) / 2,
                y + 0.5,
                label,
                ha="center",
                va="center",
                fontsize=6,
                color="white" if op.direction == 1 else "black",
            )
    ax.set_xlim(0, timeline.makespan)
    ax.set_ylim(0, timeline.stages)
    ax.set_yticks([timeline.stages - 0.5 - d for d in range(timeline.stages)])
    ax.set_yticklabels([f"device {d}" for d in range(timeline.stages)], fontsize=7)
    ax.set_xlabel("time")
    bubble = max(timeline.bubbles())
    ax.set_title(
        title
        or f"{timeline.schedule}: PP={timeline.stages}, {timeline.micro_batches} micro-batches,"
        f" bubble {bubble:g}, peak activations {max(timeline.activations())}",
        fontsize=9,
    )
    handles = [Rectangle((0, 0), 1, 1, facecolor=c) for c in colors.values()]
    ax.legend(
        handles,
        ["F", "B", "B input", "W", "F&B"],
        fontsize=7,
        ncol=5,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
    )
    return fig if fig is not None else ax.figure
