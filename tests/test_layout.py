"""The package's layering (README, Architecture): dependencies point one way. Read from the
source, every import counted, also those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import megatron_bliss

PACKAGE = Path(megatron_bliss.__file__).parent
LOWER = ("data", "models", "kernels")
UPPER = ("engine", "selection", "pipeline", "eval")


def module_name(path: Path) -> str:
    parts = ("megatron_bliss", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from pkg import sub`` counts as ``sub``)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "megatron_bliss"
            ):
                subs = [f"{node.module}.{alias.name}" for alias in node.names]
                found = [sub for sub in subs if sub in modules]
                targets = found or [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_data_modules_import_each_other_one_way():
    graph = import_graph()
    data = [name for name in graph if name.startswith("megatron_bliss.data.")]
    cycles = [name for name in data if name in reachable(graph, name)]
    assert cycles == []


def test_lower_layers_know_nothing_of_training_or_selection():
    graph = import_graph()
    for name, targets in graph.items():
        layer = name.split(".")[1] if name.count(".") else ""
        forbidden = (
            UPPER if layer in LOWER else ("selection", "pipeline") if layer == "engine" else ()
        )
        wrong = sorted(t for t in targets if t.split(".")[1] in forbidden)
        assert not wrong, f"{name} imports {wrong}"
