"""The project's import graph, read from the code (tests of the layout: tests/test_bookkeeping.py).

A module is a .py file of the project (tests and scripts/ aside), named as Python imports it (`training.loop`); a
room is what the root shows: a script or module at the root, or a whole folder. A script is a root file with a
`__main__` block: what a user runs.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = {"tests", "scripts", "docs", ".venv", "venv", "runs"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PATHS = {
    module_name(path): path
    for path in sorted(ROOT.rglob("*.py"))
    if not SKIPPED & set(path.relative_to(ROOT).parts[:-1]) and not path.name.startswith(".")
}
MODULES = set(PATHS)
ROOT_FILES = {name for name, path in PATHS.items() if path.parent == ROOT}
SCRIPTS = {name for name in ROOT_FILES if '__name__ == "__main__"' in PATHS[name].read_text()}


def imports(module: str) -> set[str]:
    """The project modules `module` imports anywhere in its file, function bodies included (`from pkg import mod`
    counts as pkg.mod; a package's own __init__ is not counted as a separate import)."""
    names = set()
    for node in ast.walk(ast.parse(PATHS[module].read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES
            names |= subs or {node.module}
    found = set()
    for name in names:
        while name and name not in MODULES:  # `import a.b.c` of a name inside a module: its module
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    packages = {name for name in found if PATHS[name].name == "__init__.py"}
    return found - packages - {module}


def room(module: str) -> str:
    return module.split(".")[0] if "." in module or PATHS[module].name == "__init__.py" else module


def module_graph() -> dict[str, set[str]]:
    return {module: imports(module) for module in MODULES}


def room_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in module_graph().items():
        graph.setdefault(room(module), set()).update(room(target) for target in targets if room(target) != room(module))
    return graph


def circles(graph: dict[str, set[str]]) -> list[str]:
    """The nodes that reach themselves."""

    def reaches(start, goal, seen=()):
        nexts = graph.get(start, ())
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, (*seen, nxt))) for nxt in nexts)

    return sorted(node for node in graph if reaches(node, node))
