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


def test_prunelens_tui_missing_path_is_one_line_and_nonzero(tmp_path, monkeypatch):
    from prunelens_tui.app import PrunelensApp

    def never(self, *a, **k):
        raise AssertionError("the app must not start")

    monkeypatch.setattr(PrunelensApp, "run", never)
    for path, reason in ((tmp_path / "nonexistent", "no such store or directory"),
                         (tmp_path / "plain.txt", "not a store or a directory")):
        if path.name == "plain.txt":
            path.write_text("x")
        res = CliRunner().invoke(main, ["tui", str(path)])
        assert res.exit_code == 1
        lines = res.output.strip().splitlines()
        assert lines == [f"Error: {path}: {reason}" + (" (a store is a STORE.zarr directory)" if "not a" in reason
                                                       else "")]
        assert "Traceback" not in res.output


def test_python_m_prunelens_tui_missing_path(tmp_path):
    res = subprocess.run([sys.executable, "-m", "prunelens_tui", str(tmp_path / "nope.zarr")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [f"Error: {tmp_path / 'nope.zarr'}: no such store or directory"]
