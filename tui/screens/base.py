"""Shared parts of the data screens: one-key switches and loading in a worker thread."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from prunelens.safe_text import esc

from .. import selection as S
from ..selection import SWITCHES
from ..widgets.plot import Plot


def switch_bindings(fields: tuple[str, ...]) -> list[Binding]:
    """One key per field (``m`` method, ``v`` metric, ...) that cycles through the store's values."""
    return [Binding(SWITCHES[f][0], f"cycle('{f}')", f"switch {SWITCHES[f][1]}", show=False) for f in fields]


class SelectionBar(Static):
    """Shows the current choice of every switch this screen uses, with its key."""

    def show(self, sel: S.Selection | None, fields: tuple[str, ...], dims: tuple[str, ...] = (),
             shown: dict[str, str] | None = None) -> None:
        """``dims``: the shown metric's dims; a switch the metric does not have is drawn dim. ``shown``: what
        the screen actually draws for a field where that differs from the choice (``k all→block``)."""
        if sel is None:
            self.update(Text("no store open: press 1 for Runs and Enter on a store", style="bold yellow"))
            return
        text = Text()
        for f in fields:
            value = getattr(sel, f)
            unused = dims and f in ("space", "temperature") and f not in dims
            text.append(f"{SWITCHES[f][0]}", style="dim" if unused else "bold reverse")
            if shown and f in shown and str(shown[f]) != str(value):
                value = f"{value}→{shown[f]}"
            text.append(f" {value:g}  " if isinstance(value, float) else f" {value}  ", style="dim" if unused else "")
        self.update(text)


class DataScreen(Screen):
    """A screen that draws the open store through ``load()`` (worker thread) and ``show()`` (UI thread)."""

    FIELDS: ClassVar[tuple[str, ...]] = ()
    _drawn: Any = None

    def on_screen_resume(self) -> None:
        self.reload()

    def reload(self, force: bool = False) -> None:
        app = self.app
        bar = self.query_one(SelectionBar)
        dims = tuple(app.ds[app.selection.metric].dims) if app.ds is not None else ()
        bar.show(app.selection, self.FIELDS, dims if "metric" in self.FIELDS else ())
        key = (id(app.ds), app.selection)
        if app.ds is None or (key == self._drawn and not force):
            if app.ds is None:
                self.show_empty()
            return
        self._drawn = key
        self._load(app.ds, app.selection)

    @work(thread=True, exclusive=True, group="load")
    def _load(self, ds, sel) -> None:
        try:
            data = self.load(ds, sel)
        except Exception as exc:  # a damaged chunk is a message, not a crash
            self.app.call_from_thread(self.app.notify, esc(f"cannot read the store: {exc}"), severity="error")
            return
        self.app.call_from_thread(self.show, data)

    def action_cycle(self, field: str) -> None:
        if self.app.ds is None:
            self.app.notify("open a store first (1: Runs)", severity="warning")
            return
        self.app.selection = S.cycle(self.app.selection, self.app.ds, field)
        self.reload()

    def load(self, ds, sel) -> Any:  # worker thread: read numbers only
        raise NotImplementedError

    def show(self, data: Any) -> None:  # UI thread: update widgets
        raise NotImplementedError

    def show_empty(self) -> None:
        pass


class TwoPlotScreen(DataScreen):
    """A data screen of two plots side by side (``PLOTS``: (title, id) each) over a legend line."""

    PLOTS: ClassVar[tuple[tuple[str, str], ...]] = ()
    LEGEND: ClassVar[str] = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield SelectionBar(id="selection")
        with Horizontal(id="plots"):
            for title, plot_id in self.PLOTS:
                yield Plot(title, id=plot_id)
        yield Static(self.LEGEND, id="legend")
        yield Footer()
