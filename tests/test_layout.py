"""The layout of tb: no import cycle between its modules.

The graph is built statically (ast) from the import statements that run when a module is
imported: those at module level, including inside top-level `if`/`try`/`with` blocks and class
bodies, but not inside functions (an import in a function runs when it is called, after every
module has finished loading, so it cannot meet a half-initialised module). An edge A -> B means
importing A imports B:

- `import tb.x.y` and `from tb.x.y import name` are edges to tb.x.y (and `from tb.x import y`,
  where y is a module, to tb.x.y as well as tb.x);
- importing tb.x.y first runs tb/x/__init__.py, so it is an edge to tb.x too, unless A lives in
  tb.x itself: a package's own modules are loaded by (or after) its __init__, the usual layout
  (tb/loop/__init__.py imports tb.loop.epoll, which imports tb.loop.base).

A cycle in this graph is a module that can meet another one half-initialised, depending on which
of them is imported first: the failure shows only for some entry points. The test names the
cycle, module by module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def module_names(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: path} for every .py file of `package` under `root`."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _import_nodes(tree: ast.Module, in_functions: bool):
    """Every node that runs when the module is imported (and in its functions if asked)."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if in_functions or not isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            ):
                todo.append(child)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(
    root: Path, package: str = "tb", *, in_functions: bool = False
) -> dict[str, set[str]]:
    """{module: the package's modules it imports at import time} (see the module docstring);
    `in_functions` counts the imports inside functions too."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _import_nodes(ast.parse(path.read_text(), str(path)), in_functions):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's own package
                    base = name.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets.add(source)
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        targets.add(f"{source}.{alias.name}")
        edges = set()
        for target in targets:
            if target not in modules:
                continue  # another package (the standard library, numpy, ...)
            edges.add(target)
            for parent in _ancestors(target):
                if not (name == parent or name.startswith(parent + ".")):
                    edges.add(parent)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None if the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_tb_has_no_import_cycle():
    cycle = find_cycle(import_graph(ROOT))
    assert cycle is None, "import cycle in tb: " + " -> ".join(cycle)


@pytest.mark.parametrize("package", ["tb.loop", "tb.transport", "tb.replay"])
def test_packages_built_like_selectors_do_not_import_back_even_from_functions(package):
    """A package whose backends or layers sit beside a base module (tb.loop, tb.transport,
    tb.replay) has no cycle even counting the imports inside functions: the base imports
    nothing above it, the layers import only what is below them."""
    graph = import_graph(ROOT, in_functions=True)
    inside = {m for m in graph if m == package or m.startswith(package + ".")}
    cycle = find_cycle({m: graph[m] & inside for m in inside})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _write_package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    "files,cycle",
    [
        (  # two modules importing each other at module level
            {"p/__init__.py": "", "p/a.py": "from p.b import x\n", "p/b.py": "import p.a\n"},
            ["p.a", "p.b", "p.a"],
        ),
        (  # a relative import, inside a top-level try block
            {
                "p/__init__.py": "",
                "p/a.py": "try:\n    from . import b\nexcept ImportError:\n    pass\n",
                "p/b.py": "from .a import y\n",
            },
            ["p.a", "p.b", "p.a"],
        ),
        (  # an outside module reaching into a package whose __init__ imports it back
            {
                "p/__init__.py": "",
                "p/k.py": "from p.t.base import T\n",
                "p/t/__init__.py": "from p import k\n",
                "p/t/base.py": "",
            },
            ["p.k", "p.t", "p.k"],
        ),
    ],
)
def test_the_cycle_finder_sees_import_time_cycles(tmp_path, files, cycle):
    _write_package(tmp_path, files)
    assert find_cycle(import_graph(tmp_path, "p")) == cycle


def test_function_imports_and_a_packages_own_modules_are_not_cycles(tmp_path):
    _write_package(
        tmp_path,
        {
            "p/__init__.py": "",
            "p/a.py": "def f():\n    from p import b\n",
            "p/b.py": "import p.a\n",
            "p/loop/__init__.py": "from p.loop.base import Loop\nfrom p.loop.epoll import E\n",
            "p/loop/base.py": "class Loop: pass\n",
            "p/loop/epoll.py": "from p.loop.base import Loop\n",
        },
    )
    graph = import_graph(tmp_path, "p")
    assert graph["p.loop.epoll"] == {"p.loop.base"} and graph["p.a"] == set()
    assert find_cycle(graph) is None
    assert find_cycle(import_graph(tmp_path, "p", in_functions=True)) == ["p.a", "p.b", "p.a"]
