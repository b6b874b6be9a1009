"""``prunelens tui`` and ``python -m prunelens_tui`` entry points (no app run)."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from prunelens.cli import main


def test_prunelens_tui_help_names_the_screens_and_browser_mode():
    res = CliRunner().invoke(main, ["tui", "--help"])
    assert res.exit_code == 0
    assert "STORE" in res.output.upper() and "textual serve" in res.output
    assert "tui" in CliRunner().invoke(main, ["--help"]).output


def test_python_m_prunelens_tui_help():
    res = subprocess.run([sys.executable, "-m", "prunelens_tui", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--demo" in res.stdout
