"""The prunelens Textual app: Runs, Heatmap, Curves, Theory and Plan screens over probe stores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import Worker

from prunelens.errors import PrunelensError
from prunelens.safe_text import esc

from . import backend, live
from .screens.curves import CurvesScreen
from .screens.heatmap import HeatmapScreen
from .screens.help import HelpScreen
from .screens.plan import PlanScreen
from .screens.runs import RunsScreen
from .screens.theory import TheoryScreen
from .selection import Selection, default_selection
from .widgets.heatmap import HeatmapGrid
from .workers import deliver

SCREENS: dict[str, type[Screen]] = {"runs": RunsScreen, "heatmap": HeatmapScreen, "curves": CurvesScreen,
                                    "theory": TheoryScreen, "plan": PlanScreen}


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

    POLL_SECONDS = 2.0  # how often a store that a probe is still writing is checked for new cells

    def __init__(self, paths: Sequence[str | Path] = (".",), cwd: str | Path | None = None,
                 poll_seconds: float | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the TUI never touches the network
        super().__init__()
        self.paths = [str(p) for p in paths] or ["."]
        self.cwd = Path(cwd) if cwd else Path.cwd()
        self.ds = None
        self.store_path: Path | None = None
        self.selection: Selection | None = None
        self.progress: live.Progress | None = None  # of the open store; refreshed while a probe writes it
        self._watch: live.StoreWatch | None = None
        self.poll_seconds = self.POLL_SECONDS if poll_seconds is None else poll_seconds
        self._polling: Worker | None = None

    def on_mount(self) -> None:
        self.set_interval(self.poll_seconds, self.poll_store)

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
        try:
            self._watch, self.progress = live.StoreWatch(path), live.progress(path)
        except Exception:  # noqa: BLE001 - an in-memory or odd store: shown, never watched
            self._watch = self.progress = None
        self._show_progress()
        self._redraw()
        return True

    def _show_progress(self) -> None:
        """The store's name in the header, with the probe's progress while it is being written."""
        name = self.display_path(self.store_path) if self.store_path is not None else ""
        running = self.progress is not None and not self.progress.finished
        self.sub_title = f"{name} · {self.progress.label()}" if running and self.progress else name

    def _redraw(self) -> None:
        if hasattr(self.screen, "reload"):
            self.screen.reload(force=True)
        elif hasattr(self.screen, "on_screen_resume"):
            self.screen.on_screen_resume()

    def poll_store(self) -> None:
        """Timer: while the open store is still being written, look for new cells (in a worker thread)."""
        if self.store_path is None or self._watch is None or (self.progress is not None and self.progress.finished):
            return
        if self._polling is not None and not self._polling.is_finished:
            return  # a slow read is still under way: a new one would cancel it and its cells would never show
        self._polling = self._poll(self.store_path, self._watch)

    @work(thread=True, exclusive=True, group="poll")
    def _poll(self, path: Path, watch: live.StoreWatch) -> None:
        seen = watch.check()
        if seen is None:
            return
        try:
            progress = live.progress(path)
            ds = backend.open_store(path, verify=False)  # verify reads every chunk: too slow every few seconds
        except Exception:  # noqa: BLE001 - a cell half-way through its write: tried again at the next tick
            return
        deliver(self, self._refreshed, path, ds, progress, watch, seen)

    def _refreshed(self, path: Path, ds, progress: live.Progress, watch: live.StoreWatch, seen: tuple) -> None:
        """New cells landed: show them on the current screen, keeping the selection and the cursor."""
        if path != self.store_path or watch is not self._watch:
            return  # another store was opened meanwhile
        watch.accept(seen)
        self.ds, self.progress = ds, progress
        self._show_progress()
        self._redraw()

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        groups = [("global", self.BINDINGS)] + [(name, cls.BINDINGS) for name, cls in SCREENS.items()]
        groups.append(("heatmap grid", HeatmapGrid.BINDINGS))
        self.push_screen(HelpScreen(groups))
