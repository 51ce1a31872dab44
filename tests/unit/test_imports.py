"""The package's dependency rules, checked on the source (docs/architecture.md):

- no import circles among the modules of appliance/, ipc/ and metrics/, counting every
  import: at the top, inside functions, and under ``if TYPE_CHECKING:``;
- nothing in ipc/ imports appliance/ (ipc/ is what crosses a process boundary, shared by
  the node and the client);
- metrics/ reads the node only through the node view (``appliance.nodeview``).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("appliance", "ipc", "metrics")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (``from a import b`` counts a.b when b is a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in modules:
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    for name, deps in graph.items():
        # importing a.b.c runs the packages a and a.b first, but a package's own
        # __init__ importing its submodules is not a dependency of the submodule
        deps.discard(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _is_package_init_edge(src: str, dst: str) -> bool:
    """``appliance/log/__init__.py`` importing ``appliance.log.x`` (a package re-exporting
    its parts) is not a dependency between ideas."""
    return dst.startswith(src + ".")


def test_no_import_circles() -> None:
    graph = {src: {d for d in deps if not _is_package_init_edge(src, d)} for src, deps in _graph().items()}
    assert _cycles(graph) == [], "modules importing each other in a circle"


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_ipc_does_not_import_the_node() -> None:
    bad = {src: sorted(d for d in deps if d.startswith("appliance")) for src, deps in _graph().items()}
    assert {src: deps for src, deps in bad.items() if src.startswith("ipc") and deps} == {}


def test_metrics_sees_the_node_only_through_the_node_view() -> None:
    bad = {
        src: sorted(d for d in deps if d.startswith("appliance") and d not in ("appliance", "appliance.nodeview"))
        for src, deps in _graph().items()
        if src.startswith("metrics")
    }
    assert {src: deps for src, deps in bad.items() if deps} == {}
