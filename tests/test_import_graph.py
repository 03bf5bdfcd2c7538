"""mugstan's own modules import each other without cycles, counting imports inside functions.

A deferred import that dodges a cycle at import time is still a cycle of the design: each module
should read without the other. Third-party imports (lazy imports of transformers, faiss, ...) are
not edges. A package's ``__init__`` running before its submodules is Python's order, not an edge:
only imports written in the source count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mugstan

PACKAGE = Path(mugstan.__file__).parent


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of src/mugstan (a package is its __init__)."""
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def imported_modules(path: Path, name: str, modules: set[str]) -> set[str]:
    """The mugstan modules that ``path`` (module ``name``) imports anywhere in its source."""

    def owner(dotted: str) -> str | None:  # mugstan.a.b.Name -> mugstan.a.b, the module that defines it
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(owner(alias.name) for alias in node.names if alias.name.split(".")[0] == "mugstan")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] != "mugstan":
                continue
            # `from mugstan.a import b` imports the submodule mugstan.a.b when there is one, else a name of mugstan.a
            found.update(owner(f"{base}.{alias.name}") if f"{base}.{alias.name}" in modules else owner(base)
                         for alias in node.names)
    return found - {None, name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(path, name, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, colouring the nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "mugstan.config" in graph["mugstan.models"]  # module level: from mugstan.config import ...
    assert "mugstan.chat.model" in graph["mugstan.models"]  # inside build_model
    assert "mugstan.backbones.coca" in graph["mugstan.backbones.build"]
    assert "mugstan.data.datasets.base" in graph["mugstan.data.datasets.formats"]
    # torch, transformers: no edges
    assert not any(m.split(".")[0] != "mugstan" for deps in graph.values() for m in deps)


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
