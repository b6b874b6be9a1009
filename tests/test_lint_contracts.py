"""`make lint`'s import contracts (pyproject.toml, import-linter) hold on the tree and catch planted violations.

The four packages are copied into a temporary folder that shadows the installed ones on
``PYTHONPATH``; one import is planted per case and ``lint-imports`` must fail naming the contract.
Needs the lint tools (`make lint` installs them; CI runs it before the tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="lint tools not installed (make lint installs them)")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"prunelens": ROOT / "src" / "prunelens", "prunelens_plugins": ROOT / "plugins",
            "prunelens_store": ROOT / "store", "prunelens_tui": ROOT / "tui"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of the four packages and pyproject.toml (the contracts)."""
    base = tmp_path_factory.mktemp("lint")
    for name, src in PACKAGES.items():
        shutil.copytree(src, base / "pkgs" / name, ignore=shutil.ignore_patterns("__pycache__", "*.tcss"))
    shutil.copy(ROOT / "pyproject.toml", base / "pyproject.toml")
    return base


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "importlinter.cli"]
    env = {**os.environ, "PYTHONPATH": str(tree / "pkgs")}
    return subprocess.run([*cmd, str(tree / "pyproject.toml"), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)


def plant(tree: Path, module: str, line: str) -> tuple[Path, str]:
    path = tree / "pkgs" / module
    before = path.read_text()
    path.write_text(before + f"\n{line}\n")
    return path, before


def test_contracts_hold_on_the_tree(tree):
    proc = lint_imports(tree)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BROKEN" not in proc.stdout and proc.stdout.count("KEPT") >= 6


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("prunelens/units.py", "import textual  # planted", "never import the TUI or Textual"),
    ("prunelens/plan/ranking.py", "from prunelens_plugins import rankers  # planted", "Built-in plugins sit above the core"),
    ("prunelens_store/schema.py", "import prunelens.plan.ranking  # planted", "The store sits below the core"),
    ("prunelens/workflow/report.py", "from prunelens.cli import rank  # planted", "The CLI and the TUI are on top"),
    ("prunelens/plan/ranking.py", "from prunelens.plan import unit_selection  # planted", "No import cycles"),
    ("prunelens/model/info.py", "import prunelens.plan.ranking  # planted", "The core's layers"),
    ("prunelens/probe/prompts.py", "from prunelens.evaluation import perplexity  # planted", "The core's layers"),
    ("prunelens/units.py", "from prunelens.model import loading  # planted", "The core's layers"),
])
def test_a_planted_violation_breaks_its_contract(tree, module, line, contract):
    path, before = plant(tree, module, line)
    try:
        proc = lint_imports(tree)
    finally:
        path.write_text(before)
    assert proc.returncode != 0, proc.stdout
    broken = proc.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, proc.stdout
