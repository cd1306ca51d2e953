"""The package's module graph has no import cycle.

The graph is read from the source (``ast``), not from ``sys.modules``: every ``import`` and
``from ... import`` statement anywhere in a module (inside functions and ``TYPE_CHECKING``
blocks too), relative imports resolved. An edge to a package is an edge to its ``__init__``;
``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
Only the implicit edges of a dotted name to its parent packages are left out (``import a.b.c``
also runs ``a`` and ``a.b``): without that rule every module would be in a cycle with its own
package's ``__init__`` whenever that ``__init__`` re-exports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "stablerep_fast"


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} of every module of ``package`` (a package by its __init__)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(module: str, path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``module`` (whose file is ``path``) imports, as the module doc says."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                name = f"{source}.{alias.name}"
                if name in modules:
                    found.add(name)  # from pkg import submodule
                elif source in modules:
                    found.add(source)  # from pkg import a_name: pkg's __init__ (or module pkg)
    found.discard(module)
    return found


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the package modules it imports} of every module of ``files``."""
    return {module: imported_modules(module, path, set(files)) for module, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a, as a list of modules) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the first module of ``group`` (breadth-first within the group)."""
    start = min(group)
    previous = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def describe(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in cycles)


GRAPH = import_graph(module_files())


# ---------------------------------------------------------------- the reader of the graph itself


def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return module_files(root, "pkg")


def test_the_graph_reader_resolves_every_import_form(tmp_path):
    modules = _write(tmp_path, {
        "pkg/__init__.py": "from pkg.sub import thing\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/thing.py": "from . import other\nfrom .other import NAME\nimport pkg.sub.deep.leaf\n",
        "pkg/sub/other.py": "def f():\n    from ..top import g\n    import json\n",
        "pkg/sub/deep/__init__.py": "from .. import other as alias\n",
        "pkg/sub/deep/leaf.py": "from pkg.sub import deep\n",
        "pkg/top.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import other\ng = 1\n",
    })  # fmt: skip
    assert import_graph(modules) == {
        "pkg": {"pkg.sub.thing"},  # from pkg.sub import thing: the submodule, not pkg.sub's __init__
        "pkg.sub": set(),
        "pkg.sub.thing": {"pkg.sub.other", "pkg.sub.deep.leaf"},  # not pkg.sub.deep: an implicit parent
        "pkg.sub.other": {"pkg.top"},  # an import inside a function; json is not the package's
        "pkg.sub.deep": {"pkg.sub.other"},  # relative, from a package's __init__
        "pkg.sub.deep.leaf": {"pkg.sub.deep"},  # a package imported by name: its __init__
        "pkg.top": {"pkg.sub.other"},  # under TYPE_CHECKING too
    }


def test_cycles_are_found_and_named(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"a"}}
    assert sorted(find_cycles(graph)) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    assert describe([["a", "b", "a"]]) == "a -> b -> a"


# ---------------------------------------------------------------- the package


def test_the_graph_covers_the_package():
    assert {"stablerep_fast", "stablerep_fast.shards", "stablerep_fast.cli"} <= set(GRAPH)
    assert len(GRAPH) == len(list((ROOT / PACKAGE).rglob("*.py")))
    assert all(edges <= GRAPH.keys() for edges in GRAPH.values())


def test_no_import_cycle():
    cycles = find_cycles(GRAPH)
    assert not cycles, f"import cycles (each shown once):\n{describe(cycles)}"


# The rooms of the generation stage, each importing only the rooms after it.
GENERATE_ROOMS = ("farm", "models", "runtime")


def test_generate_rooms_import_downwards():
    """farm -> models -> runtime: no room imports one before it, so there is no cycle between them either."""
    def room(module: str) -> str | None:
        parts = module.split(".")
        return parts[2] if len(parts) > 2 and parts[1] == "generate" else None

    assert {room(m) for m in GRAPH} - {None} == set(GENERATE_ROOMS)  # every module of generate/ is in a room
    upward = sorted(f"{source} -> {target}" for source, targets in GRAPH.items() for target in targets
                    if room(source) and room(target) and GENERATE_ROOMS.index(room(target)) < GENERATE_ROOMS.index(room(source)))  # fmt: skip
    assert not upward, "imports against the order farm -> models -> runtime:\n" + "\n".join(upward)
