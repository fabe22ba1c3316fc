"""The layout of docs/architecture.md holds: arrows only downstream, no import cycle, no benchmark code.

Every `import` in `src/offshelf` is read with `ast`, including imports inside functions, and resolved to the
module it loads (`from offshelf.store import FeatureStore` loads `offshelf.store`; `from offshelf.io import files`
loads `offshelf.io.files`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# The layers of docs/architecture.md, upstream first. A module may import its own layer's modules or
# those of layers above it, never below; cycles are checked separately.
LAYERS: list[set[str]] = [
    {"offshelf._version", "offshelf.errors"},
    {"offshelf.io"},
    {"offshelf.models", "offshelf.images", "offshelf.transforms", "offshelf.metrics", "offshelf.vectors"},
    {"offshelf.store"},
    {"offshelf.extract", "offshelf.index"},
    {"offshelf.search", "offshelf.probe", "offshelf.baselines", "offshelf.distributed"},
    {"offshelf.upgrade", "offshelf.evaluate", "offshelf.demo", "offshelf.dedup"},
    {"offshelf.cli", "offshelf.serve"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "offshelf").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else base)
    return {t for t in targets if t in known and t != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _layer(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return i
    return None


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    unplaced = [m for m in graph if m != "offshelf" and _layer(m) is None]
    assert unplaced == [], f"add these to docs/architecture.md and LAYERS: {unplaced}"


def test_imports_point_only_upstream(graph: dict[str, set[str]]) -> None:
    wrong = [f"{m} -> {t}" for m, targets in graph.items() if m != "offshelf"
             for t in targets if _layer(t) > _layer(m)]  # type: ignore[operator]
    assert wrong == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge found by a depth-first search, as the cycle it closes."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    """The package root (the public API) only re-exports, and nothing inside the package imports it."""
    assert not any("offshelf" in targets for m, targets in graph.items() if m != "offshelf")
    assert _cycles({m: t for m, t in graph.items() if m != "offshelf"}) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    """The checker itself can fail: a made-up graph with a cycle, and the import reader on this file."""
    assert _cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z", "x"]]
    assert _cycles({"x": {"y"}, "y": set()}) == []
    assert _imports("tests.arch", Path(__file__), {"tests.arch", "pytest", "ast"}) == {"pytest", "ast"}


def test_importing_offshelf_loads_no_benchmark_torch_sklearn_or_matplotlib_code() -> None:
    """The public API imports only what inference needs; scikit-learn, FAISS, torch and Ray load when a stage needs
    them."""
    code = ("import sys, offshelf; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'benchmarks', 'torch', 'matplotlib', 'sklearn', 'transformers', 'fastapi', 'ray'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert not (SRC / "offshelf" / "bench").exists() and not (SRC / "offshelf" / "datasets").exists()
