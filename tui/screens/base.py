"""Shared parts of the data screens: one-key switches and loading in a worker thread."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, Static

from prunelens.safe_text import esc

from .. import selection as S
from ..selection import SWITCHES
from ..widgets.plot import Plot
from ..workers import deliver


def switch_bindings(fields: tuple[str, ...]) -> list[Binding]:
    """One key per field (``m`` method, ``v`` metric, ...) that cycles through the store's values."""
    return [Binding(SWITCHES[f][0], f"cycle('{f}')", f"switch {SWITCHES[f][1]}", show=False) for f in fields]


# shorter names, used only when the whole bar does not fit the terminal's width
SHORT = {"probability": "prob", "embedding": "emb", "propagated": "prop", "teacher_forced": "forced",
         "free_running": "free", "sublayer": "sub"}


def squeeze(value: str, width: int) -> str:
    """``value`` in at most ``width`` characters: its start and its end kept (``magn…sparsity=0.5``)."""
    if len(value) <= width:
        return value
    tail = max(1, (2 * (width - 1)) // 3)
    return value[: max(0, width - 1 - tail)] + "…" + value[-tail:]


class SelectionBar(Widget):
    """One line: the current choice of every switch this screen uses, with its key; it always fits the width."""

    DEFAULT_CSS = "SelectionBar { height: 1; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sel: S.Selection | None = None
        self.fields: tuple[str, ...] = ()
        self.dims: tuple[str, ...] = ()
        self.shown: dict[str, str] = {}
        self.extra = ""  # e.g. a running probe's progress, drawn at the end

    def show(self, sel: S.Selection | None, fields: tuple[str, ...], dims: tuple[str, ...] = (),
             shown: dict[str, str] | None = None) -> None:
        """``dims``: the shown metric's dims; a switch the metric does not have is drawn dim. ``shown``: what
        the screen actually draws for a field where that differs from the choice (``k all→block``)."""
        self.sel, self.fields, self.dims, self.shown = sel, fields, dims, dict(shown or {})
        self.refresh()

    def parts(self) -> list[tuple[str, str, bool]]:
        """(key, value, unused) per switch."""
        assert self.sel is not None
        out = []
        for f in self.fields:
            value = getattr(self.sel, f)
            text = f"{value:g}" if isinstance(value, float) else str(value)
            if f in self.shown and str(self.shown[f]) != text:
                text = f"{text}→{self.shown[f]}"
            out.append((SWITCHES[f][0], text, bool(self.dims) and f in ("space", "temperature") and f not in self.dims))
        return out

    def line(self, width: int) -> Text:
        """The bar in ``width`` characters: full names, else short names and single spaces, else the
        longest value (the method) squeezed in the middle."""
        if self.sel is None:
            return Text("no store open: press 1 for Runs and Enter on a store", style="bold yellow")
        parts = self.parts()
        extra = f"  {self.extra}" if self.extra else ""
        for short, sep in ((False, "  "), (True, "  "), (True, " ")):
            shown = [(k, SHORT.get(v, v) if short else v, u) for k, v, u in parts]
            if _length(shown, sep) + len(extra) <= width:
                break
        over = _length(shown, sep) + len(extra) - width
        if over > 0:
            i = max(range(len(shown)), key=lambda j: len(shown[j][1]))
            k, v, u = shown[i]
            shown[i] = (k, squeeze(v, max(4, len(v) - over)), u)
        text = Text()
        for i, (key, value, unused) in enumerate(shown):
            text.append(key, style="dim" if unused else "bold reverse")
            text.append(f" {value}", style="dim" if unused else "")
            if i < len(shown) - 1:
                text.append(sep)
        if extra:
            text.append(extra, style="bold")
        return text

    def render(self) -> Text:
        return self.line(self.size.width or 80)


def _length(parts: list[tuple[str, str, bool]], sep: str) -> int:
    return sum(len(k) + 1 + len(v) for k, v, _ in parts) + len(sep) * max(0, len(parts) - 1)


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
            deliver(self.app, self.app.notify, esc(f"cannot read the store: {exc}"), severity="error")
            return
        deliver(self.app, self.show, data)

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
