"""The package's layers, as the import statements draw them.

``core`` is the queue that user code imports, ``supervisor`` the master and its
children, ``ops`` the operator's commands. Imports point down only (ops ->
supervisor -> core), and no two modules import each other, directly or
around a loop. Every import counts: at module level, inside a function, or
for type checking only.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "bananas_prefork"
LAYERS = ("core", "supervisor", "ops")  # lowest first


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every bananas_prefork module this file imports, resolved to a module name."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules and name != here}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_imports_point_down() -> None:
    upward = sorted(f"{source} imports {target}" for source, targets in graph().items()
                    for target in targets
                    if (a := layer(source)) is not None and (b := layer(target)) is not None
                    and b > a)
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = {source: {t for t in targets if not t.endswith("__init__")}
             for source, targets in graph().items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_layers_are_folders() -> None:
    """Every module lives in a layer; only the package's front door sits beside them."""
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py"]
