"""The prunelens Textual app: Runs, Heatmap, Curves, Theory and Plan screens over probe stores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from prunelens.errors import PrunelensError
from prunelens.safe_text import esc

from . import backend
from .screens.curves import CurvesScreen
from .screens.heatmap import HeatmapScreen
from .screens.help import HelpScreen
from .screens.plan import PlanScreen
from .screens.runs import RunsScreen
from .screens.theory import TheoryScreen
from .selection import Selection, default_selection
from .widgets.heatmap import HeatmapGrid

SCREENS: dict[str, type[Screen]] = {"runs": RunsScreen, "heatmap": HeatmapScreen, "curves": CurvesScreen, "theory": TheoryScreen,
           "plan": PlanScreen}


class PrunelensApp(App):
    """Browse probe stores, rank units and export plans. ``paths``: stores or directories to search."""

    CSS_PATH = "app.tcss"
    TITLE = "prunelens"
    MODES = SCREENS
    DEFAULT_MODE = "runs"
    BINDINGS = [
        Binding("1", "switch_mode('runs')", "Runs"), Binding("2", "switch_mode('heatmap')", "Heatmap"),
        Binding("3", "switch_mode('curves')", "Curves"), Binding("4", "switch_mode('theory')", "Theory"),
        Binding("5", "switch_mode('plan')", "Plan"), Binding("question_mark,f1", "help", "Help"),
        Binding("q", "quit", "Quit"), Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(self, paths: Sequence[str | Path] = (".",), cwd: str | Path | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the TUI never touches the network
        super().__init__()
        self.paths = [str(p) for p in paths] or ["."]
        self.cwd = Path(cwd) if cwd else Path.cwd()
        self.ds = None
        self.store_path: Path | None = None
        self.selection: Selection | None = None

    def display_path(self, path: Path) -> str:
        """``path`` relative to the working directory when under it (short and stable)."""
        try:
            return str(Path(path).resolve().relative_to(self.cwd.resolve()))
        except ValueError:
            return str(path)

    def open_store(self, path: str | Path) -> bool:
        """Make ``path`` the store the data screens show; a bad store is a notification."""
        try:
            ds = backend.open_store(path)
        except PrunelensError as exc:
            self.notify(esc(exc), severity="error", timeout=8)
            return False
        self.ds, self.store_path, self.selection = ds, Path(path), default_selection(ds)
        self.sub_title = self.display_path(Path(path))
        if hasattr(self.screen, "reload"):
            self.screen.reload(force=True)
        elif hasattr(self.screen, "on_screen_resume"):
            self.screen.on_screen_resume()
        return True

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        groups = [("global", self.BINDINGS)] + [(name, cls.BINDINGS) for name, cls in SCREENS.items()]
        groups.append(("heatmap grid", HeatmapGrid.BINDINGS))
        self.push_screen(HelpScreen(groups))
