"""No import cycles among the package's modules (plugin/ditserve and kernels/ditserve_kernels).

The graph is read from the source with `ast`, not by importing it. What counts as an edge A → B: every
`import` in A that names a module of ours and runs at run time — at module level and inside functions
alike. A function-level import defers the cost of a module (torch, a strategy) but not the dependency:
two modules that import each other, even lazily, are one module in two files, and whichever is read
first cannot be understood without the other. Imports under `if TYPE_CHECKING:` are left out: they
only name types for annotations and never run. An edge goes to the module imported, not to the
packages above it (their `__init__` files import nothing of ours).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"ditserve": REPO / "plugin" / "ditserve", "ditserve_kernels": REPO / "kernels" / "ditserve_kernels"}


def our_modules() -> dict[str, Path]:
    """Dotted module name → source file, for every module of our packages."""
    modules = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that `module` imports at run time (see the module docstring for what counts)."""

    def ours(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in walk_skipping_type_checking(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(ours(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from .x import y` inside `package`
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else ours(base))
    return {name for name in found if name and name != module}


def walk_skipping_type_checking(tree: ast.AST):
    """`ast.walk`, without descending into `if TYPE_CHECKING:` bodies."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                pending.extend(child.orelse)
            else:
                pending.append(child)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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
    return found


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def test_the_graph_sees_the_imports_it_should():
    """The reader finds module-level, function-level and relative imports, and skips TYPE_CHECKING ones."""
    graph = import_graph()
    assert "ditserve.registry" in graph["ditserve.config"]  # module level
    assert "ditserve.engine" in graph["ditserve.calibrate"]  # inside a function
    assert "ditserve.calibrate" in graph["ditserve.quantization.base"]  # inside a method
    assert "ditserve.engine" not in graph["ditserve.quantization.base"]  # under TYPE_CHECKING only
    assert len(graph) > 100


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (each group imports itself through the others): " + "; ".join(
        " ↔ ".join(group) for group in found
    )
