"""The import graph of our five packages: no cycles, and every edge between packages goes down the layers.

Static (``ast`` over the sources; nothing is imported or started), so it runs in well under a second. Every
import counts, wherever it sits: module level, inside a function, under ``if TYPE_CHECKING`` or ``try``; a
type-only import still couples the layers. Layers: ``common`` <- ``storage_node`` <- ``replicator``;
``query_service`` imports ``common`` only; ``minicdn`` (CLI, dev cluster, runner...) may import every service,
and no service imports ``minicdn``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("common", "storage_node", "replicator", "query_service")
PACKAGES = (*SERVICES, "minicdn")
# Top-level names that are ours: an import of one of them is an edge (``tests`` is allowed to no package).
OURS = frozenset({*PACKAGES, "tests"})
# The packages each package may import besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "common": frozenset(),
    "storage_node": frozenset({"common"}),
    "replicator": frozenset({"common", "storage_node"}),
    "query_service": frozenset({"common"}),
    "minicdn": frozenset(SERVICES),
}
# What belongs in `minicdn`, never in the shared library (a module or subpackage name anywhere under common/).
NOT_IN_COMMON = re.compile(r"(cli|devcluster|bench\w*|runners?|bootstrap|embedded)(_\w+)?")

Graph = dict[str, set[str]]


# --- the collector ---------------------------------------------------------------------------------------------
def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def collect(root: Path, packages: Collection[str], ours: Collection[str] = OURS) -> Graph:
    """Module -> the modules of ours it imports (self-imports dropped), for every .py under ``packages``."""
    files = {module_name(root, path): path for package in packages for path in sorted((root / package).rglob("*.py"))}
    graph: Graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        targets = imports_of(tree, name, path.name == "__init__.py", files.keys(), ours)
        graph[name] = {target for target in targets if target != name}
    return graph


def imports_of(
    tree: ast.AST, module: str, is_package: bool, known: Collection[str], ours: Collection[str]
) -> Iterator[str]:
    for node in ast.walk(tree):  # every nesting level: function bodies, if/try blocks, classes
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _resolve(alias.name, known, ours)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, module, is_package)
            for alias in node.names:
                # `from pkg import sub` loads the submodule pkg.sub when there is one; otherwise a name of pkg.
                submodule = f"{base}.{alias.name}"
                if submodule in known:
                    yield submodule
                else:
                    yield from _resolve(base, known, ours)


def _absolute(name: str | None, level: int, module: str, is_package: bool) -> str:
    """The absolute module a (possibly relative) ``from ... import`` names."""
    if level == 0:
        assert name is not None
        return name
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 >= len(parts):
        raise ValueError(f"relative import beyond the top-level package in {module}")
    parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, name] if name else parts)


def _resolve(name: str, known: Collection[str], ours: Collection[str]) -> Iterator[str]:
    """The most specific known module a dotted name lies in; an unknown name of ours counts as its top level."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in known:
            yield prefix
            return
    if parts[0] in ours:
        yield parts[0]


# --- the checks ------------------------------------------------------------------------------------------------
def top(module: str) -> str:
    return module.split(".", 1)[0]


def collapse(graph: Mapping[str, Collection[str]], depth: int) -> Graph:
    """The graph between the first ``depth`` name parts: 1 for packages, 2 for the modules and subpackages of each
    package (``storage_node.objects`` as one node), and so on."""

    def cut(module: str) -> str:
        return ".".join(module.split(".")[:depth])

    collapsed: Graph = {}
    for src, targets in graph.items():
        collapsed.setdefault(cut(src), set()).update(cut(dst) for dst in targets if cut(dst) != cut(src))
    return collapsed


def package_graph(graph: Mapping[str, Collection[str]]) -> Graph:
    return collapse(graph, 1)


def cycles(graph: Mapping[str, Collection[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one node (Tarjan), each sorted, in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def layer_violations(graph: Mapping[str, Collection[str]], allowed: Mapping[str, Collection[str]]) -> list[str]:
    """Edges from one package into another it may not import (a package missing from ``allowed`` may import none)."""
    return [
        f"{src} -> {dst}"
        for src, targets in sorted(graph.items())
        for dst in sorted(targets)
        if top(dst) != top(src) and top(dst) not in allowed.get(top(src), ())
    ]


def edges_into(graph: Mapping[str, Collection[str]], sources: Collection[str], target: str) -> list[str]:
    return [
        f"{src} -> {dst}"
        for src, targets in sorted(graph.items())
        if top(src) in sources
        for dst in sorted(targets)
        if top(dst) == target
    ]


# --- the real graph --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph() -> Graph:
    return collect(ROOT, PACKAGES)


def test_no_import_cycles(graph: Graph) -> None:
    """Between modules, and between packages and subpackages (which could be cyclic with acyclic modules)."""
    depths = range(1, max(name.count(".") for name in graph) + 2)  # the deepest is the module graph itself
    found = {" <-> ".join(cycle) for depth in depths for cycle in cycles(collapse(graph, depth))}
    assert not found, "import cycles:\n" + "\n".join(sorted(found))


def test_packages_import_only_the_layers_below(graph: Graph) -> None:
    bad = layer_violations(graph, ALLOWED)
    assert not bad, "imports across the layers:\n" + "\n".join(bad)


def test_no_service_imports_minicdn(graph: Graph) -> None:
    bad = edges_into(graph, SERVICES, "minicdn")
    assert not bad, "services importing minicdn:\n" + "\n".join(bad)


def test_the_collector_saw_the_whole_code_base(graph: Graph) -> None:
    """Guards the checks above: an empty or broken graph would pass them all."""
    edges = sum(len(targets) for targets in graph.values())
    assert len(graph) >= 80 and edges >= 250, (len(graph), edges)  # 112 and 378 when written
    for package in PACKAGES:
        assert package in graph and sum(top(name) == package for name in graph) >= 3, package
    packages = package_graph(graph)
    for package, allowed in ALLOWED.items():  # each service's allowed edges are in use today, so must be found
        if package != "minicdn":  # the tooling may import any service, and needs not import every one
            assert allowed <= packages[package], (package, packages[package])
    assert packages["minicdn"], "minicdn imports nothing of ours?"


def test_common_holds_no_tooling(graph: Graph) -> None:
    """The CLI, dev cluster, benches, runner, bootstrap and embedded servers live in `minicdn`."""
    assert all(NOT_IN_COMMON.fullmatch(name) for name in ("cli", "cli_keys", "benchmarks", "embedded", "runner"))
    assert not NOT_IN_COMMON.fullmatch("clientaddr")
    misplaced = [
        name for name in sorted(graph) if top(name) == "common" and any(map(NOT_IN_COMMON.fullmatch, name.split(".")))
    ]
    assert not misplaced, misplaced


# --- the checker itself, on a synthetic code base ---------------------------------------------------------------
SYNTHETIC = {
    "low/__init__.py": "",
    "low/base.py": "import os\nimport high.top  # the forbidden upward edge\n",
    "low/x.py": "from . import y\n",
    "low/y.py": "def f() -> None:\n    from .x import thing  # function level, relative: closes x <-> y\n",
    "high/__init__.py": "from high.sub import deep\n",
    "high/top.py": "from low import base\nimport low.gone.away\n",
    "high/sub/__init__.py": "",
    "high/sub/deep.py": (
        "from .. import top\nfrom ..sub import deep\ntry:\n    import tests.x\nexcept ImportError:\n    pass\n"
    ),
}


@pytest.fixture
def synthetic(tmp_path: Path) -> Graph:
    for name, text in SYNTHETIC.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return collect(tmp_path, ("low", "high"))


def test_collector_resolves_every_import_form(synthetic: Graph) -> None:
    assert synthetic == {
        "low": set(),
        "low.base": {"high.top"},  # `import a.b`; the stdlib is no edge
        "low.x": {"low.y"},  # `from . import submodule`
        "low.y": {"low.x"},  # relative, inside a function
        "high": {"high.sub.deep"},  # `from package import submodule`
        "high.top": {"low.base", "low"},  # an unknown submodule counts as its package
        "high.sub": set(),
        "high.sub.deep": {"high.top", "tests"},  # `..`, a self-import dropped, an import inside `try`
    }


def test_checks_report_cycles_and_forbidden_edges(synthetic: Graph) -> None:
    assert cycles(synthetic) == [["high.top", "low.base"], ["low.x", "low.y"]]
    assert cycles(package_graph(synthetic)) == [["high", "low"]]
    # Acyclic modules, cyclic subpackages: a.sub.m -> a.n -> a.sub.k.
    tangled = {"a.sub.m": {"a.n"}, "a.n": {"a.sub.k"}, "a.sub.k": set()}
    assert cycles(tangled) == [] and cycles(collapse(tangled, 2)) == [["a.n", "a.sub"]]
    assert layer_violations(synthetic, {"low": (), "high": ("low",)}) == [
        "high.sub.deep -> tests",
        "low.base -> high.top",
    ]
    assert edges_into(synthetic, ("low",), "high") == ["low.base -> high.top"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
