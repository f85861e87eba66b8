"""The package's imports flow one way: no module imports, even inside a function or only
for type checkers, a module that imports it back, directly or through others; and the
cores import nothing above them (they receive what they need as arguments)."""

import ast
import re
from pathlib import Path

# The sources, as the checkout has them (the compiled core's is not installed).
CHECKOUT = Path(__file__).resolve().parents[1]
PACKAGE = CHECKOUT / "toil_threading"


def _imports(path: Path) -> set[str]:
    """The package's modules that the module at path imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("toil_threading."):
                found.add(node.module.split(".")[1])
            elif node.module == "toil_threading":
                found.update(alias.name for alias in node.names if alias.name.startswith("_"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "toil_threading" and len(parts) > 1:
                    found.add(parts[1])
    return found


def _pyx_imports(path: Path) -> set[str]:
    """The package's modules the compiled core's source imports (Cython is not Python)."""
    found = set()
    for module, names in re.findall(
        r"^\s*from toil_threading(?:\.(\w+))? import ([\w, ]+)", path.read_text(), re.M
    ):
        if module:
            found.add(module)
        else:
            found.update(name.split()[0] for name in names.split(","))
    return found


def _graph() -> dict[str, set[str]]:
    """Each module of the package (the compiled core's source too) and the package's
    modules it imports.  The package itself (__init__), which importing any of them loads
    first, is a node like the others but never a target: a submodule reaching the public
    names through it is how the command line and the Toil switch work."""
    graph = {path.stem: _imports(path) for path in PACKAGE.glob("*.py")}
    graph["_core_c"] = _pyx_imports(CHECKOUT / "csrc" / "_core_c.pyx")
    return {name: imported & set(graph) for name, imported in graph.items()}


def test_no_import_circle() -> None:
    graph = _graph()
    assert {"__init__", "_core_py", "_impl", "_retry", "_filesystems"} <= set(graph)
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for imported in sorted(graph[name]):
            assert state.get(imported) != "open", " -> ".join([*path, name, imported])
            if imported not in state:
                visit(imported, [*path, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_the_cores_import_nothing_above_them() -> None:
    graph = _graph()
    below = {"_protocol", "_retry", "_errors", "_links", "_locks", "_checks"}
    for core in ("_core_py", "_core_c"):
        assert graph[core] <= below, (core, graph[core] - below)
