"""The layering holds where import-linter cannot say it: the layers are folders with a short top
level, each folder says what it may import, and the plugin manager sits at the bottom.

The layer order, import cycles and the forbidden imports are import-linter contracts (pyproject.toml,
`make lint`); tests/test_lint_contracts.py plants one violation per contract.

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


def test_type_checking_imports_are_no_edges_but_lazy_imports_are(tmp_path, monkeypatch):
    (tmp_path / "mod.py").write_text("from typing import TYPE_CHECKING\nimport typing\n"
                                     "if TYPE_CHECKING:\n    from .a import A\n"
                                     "if typing.TYPE_CHECKING:\n    import pkg.b\n"
                                     "def f():\n    from . import c\n")
    monkeypatch.setitem(PACKAGES, "pkg", tmp_path)
    deps = imported_modules(tmp_path / "mod.py")
    assert "pkg.a" not in deps and "pkg.b" not in deps and "pkg.c" in deps


def test_the_top_level_holds_only_base_modules():
    """The layers are folders; at most 12 modules sit at the top of ``prunelens`` (docs/architecture.md)."""
    top = sorted(p.name for p in PACKAGES["prunelens"].glob("*.py"))
    assert len(top) <= 12, top
    folders = sorted(p.parent.name for p in PACKAGES["prunelens"].glob("*/__init__.py"))
    assert folders == ["cli", "compression", "evaluation", "model", "plan", "probe", "text", "workflow"]


def test_each_layer_folder_says_what_lives_there_and_what_it_may_import():
    for init in PACKAGES["prunelens"].glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert len(doc.splitlines()) >= 3, init
        if init.parent.name not in ("cli", "workflow"):
            assert "May import" in doc, f"{init}: say which layers it may import"


def test_plugin_manager_sits_at_the_bottom():
    deps = import_graph()["prunelens.plugins"]
    # params: the Param declarations whose defaults registration checks (itself on errors only)
    assert deps <= {"prunelens", "prunelens.errors", "prunelens.hookspecs", "prunelens.params"}, deps
    assert import_graph()["prunelens.params"] <= {"prunelens", "prunelens.errors"}
    for module in ("prunelens.plan.document", "prunelens.plan.checks", "prunelens.plan.apply"):
        assert "prunelens.plan.unit_selection" not in import_graph()[module]  # plans are data; planning sits above them


def _path_of(module: str) -> Path:
    pkg, _, rest = module.partition(".")
    base = PACKAGES[pkg].joinpath(*rest.split(".")) if rest else PACKAGES[pkg]
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
