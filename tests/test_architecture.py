"""The house rules of minids/, read from the source with `ast` (docs/architecture.md draws the map).

- The import graph has no cycle, and every arrow points down the layers: config at the bottom, the
  small pieces and the kernels above it, the techniques above those, the model above the
  techniques, tools and entry points on top.
- No module imports another module's private (`_`-prefixed) names.
- Kernels are chosen by the teaching modules, never the other way round, and `minids/kernels/`
  imports no teaching module but the ones it names in its own table (fp8, for the MoE experts).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minids"

# The layers, bottom to top. A module may import modules of its own layer or below, never above.
LAYERS = {
    "minids.config": 0,
    "minids.data": 0,
    "minids.plots": 0,
    "minids.grading": 0,
    "minids.classroom": 0,
    "minids.kernels": 0,
    "minids.diagrams": 0,
    "minids.diagrams.transformer": 0,
    "minids.diagrams.moe": 0,
    "minids.diagrams.mla": 0,
    "minids.diagrams.fp8": 0,
    "minids.diagrams.grpo": 0,
    "minids.diagrams.distill": 0,
    "minids.diagrams.v3": 0,
    "minids.diagrams.mtp": 0,
    "minids.diagrams.long_context": 0,
    "minids.diagrams.parallel": 0,
    "minids.kernels.attention": 1,
    "minids.kernels.fp8_accumulate": 1,
    "minids.kernels.host_memory": 1,
    "minids.layers": 1,
    "minids.rewards": 1,
    "minids.pipeline": 0,
    "minids.fp8": 2,
    "minids.attention": 2,
    "minids.kernels.moe_dispatch": 2.5,
    "minids.mla": 3,
    "minids.dsa": 3.5,
    "minids.moe": 3,
    "minids.mtp": 3.5,
    "minids.model": 4,
    "minids.checkpoint": 4.5,
    "minids.generate": 5,
    "minids.train": 5,
    "minids.grpo": 5,
    "minids.cost": 5,
    "minids.distill": 6,
    "minids.grpo_trainer": 6,
    "minids.hf": 6,
    "minids.experiments": 6,
    "minids.parallel": 6,
    "minids": 7,
    "minids.__main__": 8,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported minids module, names taken from it) for every import statement in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("minids"):
            names = [a.name for a in node.names]
            # `from minids import config` or `from minids.kernels import attention`: submodules
            submodules = [
                f"{node.module}.{n}"
                for n in names
                if (PACKAGE.parent / f"{node.module}.{n}".replace(".", "/"))
                .with_suffix(".py")
                .exists()
                or (PACKAGE.parent / f"{node.module}.{n}".replace(".", "/")).is_dir()
            ]
            if submodules and len(submodules) == len(names):
                found += [(m, []) for m in submodules]
            else:
                found.append((node.module, names))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("minids")]
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert sorted(set(MODULES) - set(LAYERS)) == [], (
        "add new modules to LAYERS (and docs/architecture.md)"
    )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    upward = [
        (target, LAYERS.get(target))
        for target, _ in GRAPH[module]
        if target != module and LAYERS.get(target, -1) > LAYERS[module]
    ]
    assert not upward, f"{module} (layer {LAYERS[module]}) imports from higher layers: {upward}"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                return [*path, m, t]
            if t not in state and (cycle := visit(t, [*path, m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m, [])):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    edges = {m: {t for t, _ in GRAPH[m] if t in MODULES and t != m} for m in MODULES}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_find_cycle_finds_a_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_another_modules_private_names():
    private = [
        (m, target, name)
        for m, imports in GRAPH.items()
        for target, names in imports
        for name in names
        if name.startswith("_") and target != m
    ]
    assert not private, f"private names imported across modules: {private}"
