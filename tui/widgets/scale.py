"""A colour scale that reads in 16-colour terminals too: bar height carries the level, colour repeats it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rich.text import Text

GLYPHS = "▁▂▃▄▅▆▇█"
COLOURS = ("#3b4cc0", "#4f7ee8", "#5fb4e8", "#59c9a5", "#9ad45a", "#e5d94f", "#f2a340", "#e8523b")
NAN_GLYPH, NAN_STYLE = "·", "dim"


def fmt(value: float) -> str:
    """A short number: 3 significant digits, scientific when tiny or huge."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.2e}"


@dataclass
class Scale:
    lo: float
    hi: float
    log: bool

    @classmethod
    def fit(cls, values: np.ndarray) -> Scale:
        """Log scale when every value is positive and they span more than 50x; else linear."""
        finite = np.asarray(values, dtype=float)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            return cls(0.0, 1.0, False)
        lo, hi = float(finite.min()), float(finite.max())
        if lo > 0 and hi / lo > 50:
            return cls(lo, hi, True)
        return cls(lo, hi, False)

    def level(self, value: float) -> int | None:
        """0..7, or None for NaN."""
        if not math.isfinite(value):
            return None
        if self.log:
            if value <= 0:
                return 0
            frac = (math.log10(value) - math.log10(self.lo)) / max(1e-12, math.log10(self.hi) - math.log10(self.lo))
        else:
            frac = (value - self.lo) / (self.hi - self.lo) if self.hi > self.lo else 0.5
        return min(len(GLYPHS) - 1, max(0, int(frac * len(GLYPHS))))

    def glyph(self, value: float) -> tuple[str, str]:
        lv = self.level(value)
        return (NAN_GLYPH, NAN_STYLE) if lv is None else (GLYPHS[lv], COLOURS[lv])

    def legend(self) -> Text:
        text = Text(f"{fmt(self.lo)} ")
        for g, c in zip(GLYPHS, COLOURS):
            text.append(g, style=c)
        text.append(f" {fmt(self.hi)}{' (log)' if self.log else ''}  {NAN_GLYPH} = no data")
        return text
