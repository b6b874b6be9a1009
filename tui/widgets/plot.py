"""A widget that redraws a braille plot to fit its size."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from .braille import Series, render_plot


class Plot(Widget):
    """Shows ``series`` (set with ``plot()``) under a title line."""

    DEFAULT_CSS = "Plot { height: 1fr; }"

    def __init__(self, title: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.title = title
        self.series: list[Series] = []
        self.options: dict = {}
        self.footer: Text = Text()

    def plot(self, series: list[Series], title: str | None = None, footer: Text | str = "", **options) -> None:
        self.series, self.options = series, options
        if title is not None:
            self.title = title
        self.footer = footer if isinstance(footer, Text) else Text(footer)
        self.refresh()

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        body_h = max(3, height - 1 - (1 if self.footer.plain else 0))
        parts = [Text(self.title, style="bold")[:width]]
        if self.series:
            parts.append(render_plot(self.series, width, body_h, **self.options))
        else:
            parts.append(Text("no data", style="dim"))
        if self.footer.plain:
            parts.append(self.footer)
        return Text("\n").join(parts)
