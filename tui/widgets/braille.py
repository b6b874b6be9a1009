"""Line and scatter plots drawn with Unicode braille (2 x 4 dots per character)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rich.text import Text

from .scale import fmt

_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [dot row][dot col]
Y_LABEL = 8


@dataclass
class Series:
    label: str
    x: np.ndarray
    y: np.ndarray
    colour: str = "white"
    lines: bool = True  # join consecutive points; False draws points only
    marker: str | None = None  # a glyph at each point, so series differ without colour (NO_COLOR)


class Canvas:
    """A braille pixel grid of ``width x height`` characters with a colour per character."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.bits = np.zeros((height, width), dtype=np.int32)
        self.colours: list[list[str | None]] = [[None] * width for _ in range(height)]
        self.glyphs: dict[tuple[int, int], str] = {}  # (row, col) -> a marker drawn over the braille dots

    def dot(self, px: int, py: int, colour: str) -> None:
        if 0 <= px < 2 * self.width and 0 <= py < 4 * self.height:
            row, col = py // 4, px // 2
            self.bits[row, col] |= _BITS[py % 4][px % 2]
            self.colours[row][col] = colour

    def mark(self, px: int, py: int, glyph: str, colour: str, beside: bool = False) -> None:
        """Put ``glyph`` in the character cell that holds pixel (px, py). ``beside``: when another marker is
        there already, use the nearest free cell in the same row (a point is never hidden by another)."""
        if 0 <= px < 2 * self.width and 0 <= py < 4 * self.height:
            row, col = py // 4, px // 2
            if beside and (row, col) in self.glyphs:
                free = [c for d in (1, -1, 2, -2, 3, -3)
                        if 0 <= (c := col + d) < self.width and (row, c) not in self.glyphs]
                col = free[0] if free else col
            self.glyphs[row, col] = glyph
            self.colours[row][col] = colour

    def line(self, x0: int, y0: int, x1: int, y1: int, colour: str) -> None:
        n = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(n + 1):
            self.dot(round(x0 + (x1 - x0) * i / n), round(y0 + (y1 - y0) * i / n), colour)

    def rows(self) -> list[Text]:
        out = []
        for r in range(self.height):
            text = Text()
            for c in range(self.width):
                bits = int(self.bits[r, c])
                glyph = self.glyphs.get((r, c))
                char = glyph if glyph else chr(0x2800 + bits) if bits else " "
                text.append(char, style=self.colours[r][c] or "")
            out.append(text)
        return out


def _transform(v: np.ndarray, log: bool) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
    return v


def _range(values: list[np.ndarray]) -> tuple[float, float]:
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def render_plot(series: list[Series], width: int, height: int, *, logx: bool = False, logy: bool = False,
                diagonal: bool = False) -> Text:
    """A plot of ``series`` filling ``width x height`` characters, with axis labels.

    ``diagonal`` draws y = x (dim), for predicted-vs-measured scatters on shared axes.
    """
    pw, ph = max(4, width - Y_LABEL - 1), max(2, height - 1)
    xs = [_transform(s.x, logx) for s in series]
    ys = [_transform(s.y, logy) for s in series]
    x0, x1 = _range(xs)
    y0, y1 = _range(ys)
    if diagonal:
        x0 = y0 = min(x0, y0)
        x1 = y1 = max(x1, y1)
    canvas = Canvas(pw, ph)

    def px(v: float) -> int:
        return round((v - x0) / (x1 - x0) * (2 * pw - 1))

    def py(v: float) -> int:
        return round((y1 - v) / (y1 - y0) * (4 * ph - 1))

    if diagonal:
        canvas.line(px(x0), py(y0), px(x1), py(y1), "bright_black")
    marks = []
    for s, x, y in zip(series, xs, ys):
        prev = None
        for xv, yv in zip(x, y):
            if not (math.isfinite(xv) and math.isfinite(yv)):
                prev = None
                continue
            point = (px(xv), py(yv))
            if s.lines and prev is not None:
                canvas.line(*prev, *point, s.colour)
            elif s.lines:
                canvas.dot(*point, s.colour)
            elif not s.marker:  # a scatter marker: a 2 x 2 dot square, easy to see
                for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
                    canvas.dot(point[0] - dx, point[1] - dy, s.colour)
            if s.marker:
                marks.append((not s.lines, point, s.marker, s.colour))
            prev = point
    # after every line, so no line covers a marker; the joined (measured) markers first, then the points-only
    # (predicted) ones, each beside a marker already in its cell rather than over it
    for _, point, glyph, colour in sorted(marks, key=lambda m: m[0]):
        canvas.mark(*point, glyph, colour, beside=True)
    lines = []
    for r, row in enumerate(canvas.rows()):
        label = _axis_label(y1, logy) if r == 0 else _axis_label(y0, logy) if r == ph - 1 else ""
        lines.append(Text(label.rjust(Y_LABEL) + "│", style="dim") + row)
    lo, hi = _axis_label(x0, logx), _axis_label(x1, logx)
    lines.append(Text(" " * (Y_LABEL + 1) + lo + hi.rjust(max(1, pw - len(lo))), style="dim"))
    return Text("\n").join(lines)


def _axis_label(v: float, log: bool) -> str:
    return fmt(10**v) if log else fmt(v)
