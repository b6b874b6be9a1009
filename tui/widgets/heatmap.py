"""A unit x step heatmap grid with a cursor, scrolling and a colour scale."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.binding import Binding
from textual.events import Click
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from .scale import Scale

LABEL_WIDTH = 9
CURSOR_ROW = "▶"  # beside the cursor's unit label
CURSOR_COLUMN = "▼"  # over the cursor's step


class HeatmapGrid(Widget):
    """Rows are units, columns are steps; one character per cell."""

    can_focus = True

    BINDINGS = [
        Binding("up", "move(-1, 0)", "Up", show=False), Binding("down", "move(1, 0)", "Down", show=False),
        Binding("left", "move(0, -1)", "Left", show=False), Binding("right", "move(0, 1)", "Right", show=False),
        Binding("pageup", "move(-10, 0)", "Page up", show=False),
        Binding("pagedown", "move(10, 0)", "Page down", show=False),
        Binding("home", "jump(0)", "First unit", show=False), Binding("end", "jump(-1)", "Last unit", show=False),
    ]

    cursor: reactive[tuple[int, int]] = reactive((0, 0))

    class CursorMoved(Message):
        def __init__(self, grid: HeatmapGrid, unit: str, step: int, value: float) -> None:
            super().__init__()
            self.grid, self.unit, self.step, self.value = grid, unit, step, value

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.values = np.zeros((0, 0))
        self.units: list[str] = []
        self.steps: list[int] = []
        self.scale = Scale(0.0, 1.0, False)
        self._top = 0
        self._left = 0

    def set_data(self, values: np.ndarray, units: list[str], steps: list[int]) -> None:
        self.values, self.units, self.steps = values, units, steps
        self.scale = Scale.fit(values)
        row, col = self.cursor
        self.cursor = (min(row, max(0, len(units) - 1)), min(col, max(0, len(steps) - 1)))
        self._announce()
        self.refresh()

    def value_at(self, row: int, col: int) -> float:
        if 0 <= row < self.values.shape[0] and 0 <= col < self.values.shape[1]:
            return float(self.values[row, col])
        return float("nan")

    def _announce(self) -> None:
        if self.units and self.steps:
            row, col = self.cursor
            self.post_message(self.CursorMoved(self, self.units[row], self.steps[col], self.value_at(row, col)))

    def action_move(self, drow: int, dcol: int) -> None:
        if not self.units:
            return
        row, col = self.cursor
        self.cursor = (min(max(0, row + drow), len(self.units) - 1), min(max(0, col + dcol), len(self.steps) - 1))

    def action_jump(self, row: int) -> None:
        if self.units:
            self.cursor = (row % len(self.units), self.cursor[1])

    def watch_cursor(self) -> None:
        self._announce()
        self.refresh()

    @property
    def cell_width(self) -> int:
        """Characters per step: the steps share the whole width (a wide terminal gets wide cells)."""
        return max(1, (self.size.width - LABEL_WIDTH) // max(1, len(self.steps)))

    def _visible(self) -> tuple[int, int]:
        rows = max(1, self.size.height - 1)
        cols = max(1, (self.size.width - LABEL_WIDTH) // self.cell_width)
        row, col = self.cursor
        self._top = min(max(self._top, row - rows + 1), row)
        self._left = min(max(self._left, col - cols + 1), col)
        return rows, cols

    def on_click(self, event: Click) -> None:
        rows, cols = self._visible()
        if event.y >= 1 and event.x >= LABEL_WIDTH and self.units:
            row, col = self._top + event.y - 1, self._left + (event.x - LABEL_WIDTH) // self.cell_width
            if row < len(self.units) and col < len(self.steps):
                self.cursor = (row, col)
        self.focus()

    def render(self) -> Text:
        if not self.units:
            return Text("no units to show", style="dim")
        rows, cols = self._visible()
        cur_row, cur_col = self.cursor
        steps = self.steps[self._left:self._left + cols]
        header = Text("step".ljust(LABEL_WIDTH), style="bold")
        cw = self.cell_width
        ticks = _tick_line(steps, cw)
        at = (cur_col - self._left) * cw  # the cursor's column is marked in the step line too (seen without colour)
        header.append(ticks[:at], style="dim")
        header.append(CURSOR_COLUMN.ljust(cw)[:cw], style="bold")
        header.append(ticks[at + cw:], style="dim")
        lines = [header]
        for r in range(self._top, min(len(self.units), self._top + rows)):
            style = "bold reverse" if r == cur_row else "bold"
            line = Text(self.units[r][: LABEL_WIDTH - 1].ljust(LABEL_WIDTH - 1), style=style)
            line.append(CURSOR_ROW if r == cur_row else " ", style="bold")
            for c in range(self._left, self._left + len(steps)):
                glyph, colour = self.scale.glyph(self.value_at(r, c))
                if (r, c) == (cur_row, cur_col):
                    line.append(_cursor_cell(glyph, cw), style=f"bold {colour} reverse")
                else:
                    line.append(glyph * cw, style=colour)
            lines.append(line)
        return Text("\n").join(lines)


def _cursor_cell(glyph: str, width: int) -> str:
    """The cursor's cell: the level glyph between brackets where it is wide enough, so a monochrome
    terminal (``NO_COLOR``) shows the cursor by shape, not only by reverse video."""
    return f"[{glyph * (width - 2)}]" if width >= 3 else glyph * width


def _tick_line(steps: list[int], cell_width: int) -> str:
    """Step numbers at round steps, each over its own column, never overlapping."""
    every = next(t for t in (1, 2, 5, 10, 20, 50, 100, 10**9) if t * cell_width >= 5)
    out = [" "] * (len(steps) * cell_width)
    for i, s in enumerate(steps):
        label, at = str(s), i * cell_width
        if s % every == 0 and at + len(label) <= len(out):
            out[at:at + len(label)] = label
    return "".join(out)
