"""The layering rules of the code base, checked on the source (every import, lazy ones too).

engine <- service <- api, workers, cli: no import climbs a layer, api and workers never
import each other, and no two modules import each other (directly or in a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("seal_engine", "seal_service", "api", "workers", "seal_cli")
# What each top-level package may import from the project.
ALLOWED = {
    "seal_engine": {"seal_engine"},
    "seal_service": {"seal_engine", "seal_service"},
    "api": {"seal_engine", "seal_service", "api"},
    "workers": {"seal_engine", "seal_service", "workers"},
    "seal_cli": {"seal_engine", "seal_service", "api", "workers", "seal_cli"},
}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported by ``name`` (anywhere in the file), resolved to modules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_climbs_a_layer() -> None:
    bad = [f"{mod} imports {dep}" for mod, deps in _graph().items() for dep in sorted(deps)
           if dep.split(".")[0] not in ALLOWED[mod.split(".")[0]]]
    assert not bad, "\n".join(bad)


def test_no_circular_imports() -> None:
    graph = _graph()
    # Package __init__ modules re-export their children; an edge child -> its own package is not a cycle.
    def deps(m: str) -> set[str]:
        return {d for d in graph[m] if not m.startswith(d + ".")}

    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(deps(m)):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_modules_stay_small() -> None:
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in _modules().values()
           if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not big, "\n".join(big)


def test_test_helpers_live_outside_the_packages() -> None:
    assert not (ROOT / "api" / "testing.py").exists()
    assert (ROOT / "tests" / "support").is_dir()
