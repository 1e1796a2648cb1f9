"""No import cycles among encdist's modules.

A cycle makes a module's behaviour depend on which of its members is imported first, and
is the usual sign of a piece that belongs one layer lower. The graph is read from the
sources with :mod:`ast`, function-local imports included (they are cycles that only show
at run time), over ``src/encdist`` and the installed-as ``encdist.runners``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
#: Import name -> source folder, as pyproject.toml installs them.
PACKAGES = {"encdist": ROOT / "src" / "encdist", "encdist.runners": ROOT / "runners"}


def _modules() -> Dict[str, Path]:
    mods = {}
    for prefix, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder)
            if prefix == "encdist" and rel.parts[0] in ("runners", "conf"):
                continue  # symlinks of a development checkout; runners are listed under their own name
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([prefix, *parts])] = path
    return mods


def _imports(name: str, path: Path, known: Set[str]) -> Set[str]:
    """Modules of ``known`` that ``name`` imports anywhere in its source (``from p import m`` counts ``p`` and ``p.m``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != name}


def import_graph() -> Dict[str, Set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component of more than one module."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[Set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph has a few dozen modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for comp in components:
        start = min(comp)
        path, seen = [start], {start}
        while True:  # walk inside the component until a module repeats
            nxt = min(w for w in graph[path[-1]] if w in comp)
            path.append(nxt)
            if nxt in seen:
                out.append(path[path.index(nxt):])
                break
            seen.add(nxt)
    return out


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert {"encdist.cli.eval", "encdist.config.factory", "encdist.runners.base", "encdist.codec.pdf_model"} <= set(graph)
    # function-local imports count: compressai-eval builds models through the factory inside a function
    assert "encdist.config.factory" in graph["encdist.cli.eval"]


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)
