"""Runs: every store given or found, with its provenance; Enter opens one."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import get_current_worker

from prunelens.safe_text import clean, esc

from ..discover import StoreSummary, find_stores, provenance_lines, summarize
from ..workers import deliver

COLUMNS = (("store", "store"), ("status", "status"), ("model", "model"), ("units", "units"),
           ("samples x steps", "shape"), ("T", "temps"), ("methods", "methods"))


class RunsScreen(Screen):
    CSS_PATH = "runs.tcss"
    BINDINGS = [Binding("enter", "open_selected", "Open", show=True), Binding("f5", "rescan", "Rescan", show=False)]

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static("looking for stores…", id="details")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label, key in COLUMNS:
            table.add_column(label, key=key)
        table.focus()
        self.call_after_refresh(self.action_rescan)  # paint first, then read stores

    def action_rescan(self) -> None:
        self.summaries: list[StoreSummary] = []
        self.query_one(DataTable).clear()
        self._scan(list(self.app.paths))

    @work(thread=True, exclusive=True, group="scan")
    def _scan(self, paths: list[str]) -> None:
        stores = find_stores(paths)
        if not stores:
            deliver(self.app, self._show_details, None)
        for path in stores:
            if get_current_worker().is_cancelled:  # a rescan started: its rows replace these
                return
            deliver(self.app, self._add, summarize(path))
        deliver(self.app, self._scanned)

    def _add(self, s: StoreSummary) -> None:
        self.summaries.append(s)
        status = status_text(s)
        name = self.app.display_path(s.path)
        if s.error:
            row = (Text(clean(name)), status, Text(clean(s.error), style="red"), "", "", "", "")
        else:  # store strings as Text: never parsed as markup, escapes removed
            row = (Text(clean(name)), status, Text(clean(s.model)), str(s.units), f"{s.samples} x {s.steps}",
                   ",".join(f"{t:g}" for t in s.temperatures), Text(clean(", ".join(s.methods))))
        self.query_one(DataTable).add_row(*row, key=str(len(self.summaries) - 1))
        if len(self.summaries) == 1:
            self._show_details(s)

    def on_screen_resume(self) -> None:
        self.reload()

    def reload(self, force: bool = False) -> None:
        """The open store's progress changed (a probe is writing it): its status cell and details follow."""
        progress, path = self.app.progress, self.app.store_path
        if progress is None or path is None:
            return
        table = self.query_one(DataTable)
        for i, s in enumerate(getattr(self, "summaries", [])):
            if not s.error and s.path.resolve() == Path(path).resolve():
                s.done, s.cells, s.complete = progress.done, progress.cells, progress.complete
                table.update_cell(str(i), "status", status_text(s))
                if self._current() is s:
                    self._show_details(s)

    def _scanned(self) -> None:
        ok = [s for s in self.summaries if not s.error]
        for s in self.summaries:
            if s.error:
                self.app.notify(esc(f"{self.app.display_path(s.path)}: {s.error}"), severity="error", timeout=6)
        if self.app.ds is None and len(ok) == 1:
            self.app.open_store(ok[0].path)

    def _show_details(self, s: StoreSummary | None) -> None:
        details = self.query_one("#details", Static)
        if s is None:
            details.update(Text(f"no probe stores found under {', '.join(map(str, self.app.paths))}", style="yellow"))
            return
        text = Text()
        for label, value in provenance_lines(s):
            if label == "path":
                value = self.app.display_path(s.path)
            text.append(f"{label:>15} ", style="bold")
            text.append(f"{clean(value)}\n", style="red" if label == "error" else "")
        text.rstrip()
        details.update(text)

    def _current(self) -> StoreSummary | None:
        table = self.query_one(DataTable)
        if not self.summaries or table.cursor_row is None or table.cursor_row >= len(self.summaries):
            return None
        return self.summaries[table.cursor_row]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_details(self._current())

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_selected()

    def action_open_selected(self) -> None:
        s = self._current()
        if s is None:
            return
        if s.error:
            self.app.notify(esc(s.error), severity="error")
            return
        if self.app.open_store(s.path):
            self.app.switch_mode("heatmap")


def status_text(s: StoreSummary) -> Text:
    return Text(s.status, style="red" if s.error else "green" if s.status == "complete" else "yellow")
