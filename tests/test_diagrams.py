"""Every notebook diagram draws: each `draw_*` function in minids.diagrams returns a figure with boxes
and labels on it, and `tools/figures.py` can write it to a PNG."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import matplotlib
import pytest

import minids.diagrams

matplotlib.use("Agg")

DRAWINGS = [
    (module.name, name, fn)
    for module in pkgutil.iter_modules(minids.diagrams.__path__)
    for name, fn in inspect.getmembers(
        importlib.import_module(f"minids.diagrams.{module.name}"), inspect.isfunction
    )
    if name.startswith("draw_") and fn.__module__ == f"minids.diagrams.{module.name}"
]


def test_there_are_diagrams():
    assert len({module for module, _, _ in DRAWINGS}) >= 1


@pytest.mark.parametrize("module, name, fn", DRAWINGS, ids=[f"{m}.{n}" for m, n, _ in DRAWINGS])
def test_diagram_draws_boxes_and_labels(module, name, fn, tmp_path):
    import matplotlib.pyplot as plt

    fig = fn()
    try:
        assert isinstance(fig, matplotlib.figure.Figure), f"{module}.{name} must return its Figure"
        texts = [t for ax in fig.axes for t in ax.texts if t.get_text().strip()]
        shapes = [p for ax in fig.axes for p in ax.patches]
        assert texts, f"{module}.{name} draws no label"
        assert shapes or any(ax.lines or ax.collections or ax.images for ax in fig.axes), (
            f"{module}.{name} draws nothing but text"
        )
        fig.savefig(tmp_path / f"{name}.png", dpi=60)
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    finally:
        plt.close(fig)
