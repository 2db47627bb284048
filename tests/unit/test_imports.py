"""svdpipe's import graph has no cycles (read from the source with `ast`; nothing is imported).

What counts as an edge A -> B: any `import svdpipe.x` / `from svdpipe.x import y` / relative import in module A
that names module B, at module level or inside a function (a function-level import only postpones the cycle to
the first call; it does not cut it). `from P import name` counts as an edge to the submodule P.name where P.name
is a module, and to P otherwise.

What does not count:
- imports under `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`): they never run, so they cannot make a partially
  initialised module at run time, and annotations are the usual reason two modules name each other;
- the implicit import of the parent packages (`import svdpipe.engine.core` runs svdpipe/engine/__init__.py
  first): counting it would turn every package whose __init__ re-exports a submodule into a cycle with that
  submodule's siblings, which Python handles and nobody would cut.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "svdpipe"

Graph = dict[str, set[str]]


def module_name(root: Path, path: Path) -> str:
    """`svdpipe/engine/core.py` -> `svdpipe.engine.core`; a package's __init__.py is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under `node`, at any depth, except the bodies of `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:  # the `else:` branch does run
                if isinstance(other, (ast.Import, ast.ImportFrom)):
                    yield other
                else:
                    yield from _imports(other)
        else:
            yield from _imports(child)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The deepest module of `modules` that `name` (a dotted path, maybe to a name inside a module) is in."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(root: Path) -> Graph:
    """Module -> the package's modules it imports, for every .py file under the package directory `root`."""
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph: Graph = {m: set() for m in modules}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for stmt in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(stmt, ast.Import):
                targets = [alias.name for alias in stmt.names]
            else:
                base = stmt.module or ""
                if stmt.level:  # relative: `from .x import y` in package p is p.x
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (stmt.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in stmt.names]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    graph[name].add(resolved)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle (a -> ... -> a, as a list of modules ending where it starts) per strongly connected component
    of more than one module (Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the package's module count
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
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(_cycle_in(graph, c) for c in components)


def _cycle_in(graph: Graph, component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, within the component (breadth-first)."""
    start = min(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in strongly connected component {sorted(component)}")


def describe(found: list[list[str]]) -> str:
    return "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in found)


# ---------------------------------------------------------------- the checker itself, on a made-up package


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_finds_cycles_through_function_and_relative_imports(tmp_path):
    root = _package(
        tmp_path,
        {
            "a.py": "def f():\n    from pkg.b import g\n",
            "sub/__init__.py": "",
            "sub/b.py": "",
            "b.py": "from .c import x\n",
            "c.py": "import pkg.a\n",
        },
    )
    graph = import_graph(root)
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_the_checker_ignores_type_checking_imports_and_parent_packages(tmp_path):
    root = _package(
        tmp_path,
        {
            "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",
            "b.py": "import typing\nif typing.TYPE_CHECKING:\n    pass\nelse:\n    from pkg import a\n",
            "sub/__init__.py": "from pkg.sub.c import C\n",
            "sub/c.py": "from pkg.sub.d import D\n",
            "sub/d.py": "from ..sub import c\n",  # relative, two levels: pkg.sub.c
        },
    )
    graph = import_graph(root)
    assert graph["pkg.a"] == set()
    assert graph["pkg.b"] == {"pkg.a"}  # the else branch runs
    assert graph["pkg.sub.c"] == {"pkg.sub.d"}
    assert graph["pkg.sub.d"] == {"pkg.sub.c"}
    assert cycles(graph) == [["pkg.sub.c", "pkg.sub.d", "pkg.sub.c"]]


# ---------------------------------------------------------------- svdpipe


def test_the_cli_and_the_bench_do_not_import_each_other():
    found = cycles(import_graph(PACKAGE_DIR))
    through_cli = [c for c in found if "svdpipe.cli" in c or any(m.startswith("svdpipe.bench") for m in c)]
    assert not through_cli, describe(through_cli)


def test_svdpipe_has_no_import_cycles():
    found = cycles(import_graph(PACKAGE_DIR))
    assert not found, describe(found)
