"""Write every notebook diagram (`minids.diagrams`, the `draw_*` functions) to docs/figures/ as PNG.

python tools/figures.py      # part of `make figures`; the README shows some of these
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import matplotlib

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def main() -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import minids.diagrams

    FIGURES.mkdir(parents=True, exist_ok=True)
    for info in pkgutil.iter_modules(minids.diagrams.__path__):
        module = importlib.import_module(f"minids.diagrams.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("draw_") and fn.__module__ == module.__name__:
                fig = fn()
                what = name.removeprefix("draw_")
                if not what.startswith(info.name):
                    what = f"{info.name}_{what}"  # diagram_moe_layer, diagram_grpo_loop, ...
                path = FIGURES / f"diagram_{what}.png"
                fig.savefig(path, dpi=90, bbox_inches="tight")
                plt.close(fig)
                print(path.relative_to(FIGURES.parents[1]))


if __name__ == "__main__":
    main()
