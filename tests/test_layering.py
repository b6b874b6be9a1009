"""The layering holds: no import cycles among prunelens modules, the core never imports the built-in
plugins or the TUI, and the plugin manager sits at the bottom.

Imports inside functions count as edges too (a lazy import still couples two modules); imports under
``if TYPE_CHECKING:`` do not (they never run: annotations only, as import-linter is configured).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"prunelens": ROOT / "src" / "prunelens", "prunelens_plugins": ROOT / "plugins",
            "prunelens_store": ROOT / "store", "prunelens_tui": ROOT / "tui"}


def module_name(path: Path) -> str:
    for pkg, folder in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = [pkg, *path.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def imported_modules(path: Path) -> set[str]:
    """Every module (of any package) that ``path`` imports, with relative imports resolved."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking_block(block)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def _is_type_checking_block(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_graph(packages: dict[str, Path] = PACKAGES) -> dict[str, set[str]]:
    """module -> the project modules it imports (names that are not modules resolve to their module)."""
    files = {module_name(p): p for folder in packages.values() for p in folder.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        for dep in imported_modules(path):
            while dep and dep not in files:
                dep = dep.rpartition(".")[0]
            if dep and dep != name and not name.startswith(dep + "."):  # a package's own __init__ is not a cycle
                deps.add(dep)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_type_checking_imports_are_no_edges_but_lazy_imports_are(tmp_path, monkeypatch):
    (tmp_path / "mod.py").write_text("from typing import TYPE_CHECKING\nimport typing\n"
                                     "if TYPE_CHECKING:\n    from .a import A\n"
                                     "if typing.TYPE_CHECKING:\n    import pkg.b\n"
                                     "def f():\n    from . import c\n")
    monkeypatch.setitem(PACKAGES, "pkg", tmp_path)
    deps = imported_modules(tmp_path / "mod.py")
    assert "pkg.a" not in deps and "pkg.b" not in deps and "pkg.c" in deps


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50  # the whole tree was read
    assert cycles(graph) == []


def test_core_never_imports_builtin_plugins_or_the_tui():
    graph = import_graph()
    core = {m: deps for m, deps in graph.items()  # the CLI sits on top: it may start the TUI
            if m.split(".")[0] == "prunelens" and not m.startswith("prunelens.cli")}
    bad = {m: sorted(d for d in deps if d.split(".")[0] in ("prunelens_plugins", "prunelens_tui"))
           for m, deps in core.items()}
    assert {m: d for m, d in bad.items() if d} == {}
    textual = [m for m in core if any(d.split(".")[0] == "textual"
                                      for d in imported_modules(_path_of(m)))]
    assert textual == []


def test_plugin_manager_sits_at_the_bottom():
    deps = import_graph()["prunelens.plugins"]
    # params: the Param declarations whose defaults registration checks (itself on errors only)
    assert deps <= {"prunelens", "prunelens.errors", "prunelens.hookspecs", "prunelens.params"}, deps
    assert import_graph()["prunelens.params"] <= {"prunelens", "prunelens.errors"}
    for module in ("prunelens.plans", "prunelens.plan_checks", "prunelens.apply"):
        assert "prunelens.planning" not in import_graph()[module]  # plans are data; planning sits above them


def _path_of(module: str) -> Path:
    pkg, _, rest = module.partition(".")
    base = PACKAGES[pkg].joinpath(*rest.split(".")) if rest else PACKAGES[pkg]
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
