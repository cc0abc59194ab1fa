"""Matplotlib figures shared by the notebooks and the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def smooth(values, window: int = 25) -> np.ndarray:
    """Trailing moving average (the first points average over what exists so far)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def plot_loss(history, ax=None, label: str = "train", title: str | None = "Training loss"):
    """Training loss (raw and smoothed) and validation loss against step. Returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    line = ax.plot(history.step, history.loss, alpha=0.25)[0]
    ax.plot(history.step, smooth(history.loss), color=line.get_color(), label=f"{label} (smoothed)")
    if history.val_step:
        ax.plot(
            history.val_step,
            history.val_loss,
            "o-",
            color=line.get_color(),
            alpha=0.8,
            markersize=4,
            label=f"{label} validation",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (answer tokens)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def save_loss_plot(history, path: Path | str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig = plot_loss(history)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_task_accuracy(accuracy: dict[str, float], ax=None, title: str = "Held-out exact match"):
    """A bar chart of exact-match accuracy per task."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3))
    else:
        fig = ax.figure
    names = list(accuracy)
    bars = ax.bar(names, [100 * accuracy[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylim(0, 105)
    ax.set_ylabel("% exactly right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_error_histograms(
    errors: dict[str, np.ndarray], ax=None, bins: int = 60, title: str = "Quantisation error"
):
    """Overlaid histograms of log10 |relative error|, one per label (exact zeros are left out).
    Returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    logs = {
        k: np.log10(np.abs(np.asarray(v, np.float64))[np.asarray(v) != 0])
        for k, v in errors.items()
    }
    finite = np.concatenate([v[np.isfinite(v)] for v in logs.values()])
    edges = np.linspace(finite.min(), finite.max(), bins + 1) if finite.size else bins
    for label, values in logs.items():
        ax.hist(
            values[np.isfinite(values)], bins=edges, histtype="step", linewidth=1.5, label=label
        )
    ax.set_xlabel("log10 |relative error| per value")
    ax.set_ylabel("values")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def print_table(headers: list[str], rows: list[list], widths: list[int] | None = None) -> None:
    """Print `rows` under `headers` in aligned columns: the first left-aligned, the rest right.

    Cells are printed as given (format numbers before passing them); `widths` defaults to the
    widest cell of each column plus two spaces.
    """
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    if widths is None:
        widths = [max(len(row[i]) for row in cells) + 2 for i in range(len(headers))]
    for row in cells:
        print(
            "".join(
                f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
