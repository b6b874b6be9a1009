"""Layer curves: 1-cos in the three spaces and KL across layers, measured (line) beside predicted (dots)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from .. import views
from ..widgets.braille import Series
from ..widgets.plot import Plot
from .base import SelectionBar, TwoPlotScreen, switch_bindings

FIELDS = ("method", "temperature", "locality", "timing", "kind")
SPACE_COLOURS = {"1-cos embedding": "cyan", "1-cos logit": "green", "1-cos probability": "magenta", "KL": "yellow"}
# glyphs tell the series apart without colour (NO_COLOR, monochrome terminals): filled = measured, hollow = predicted
MEASURED_GLYPHS = {"1-cos embedding": "●", "1-cos logit": "▲", "1-cos probability": "■", "KL": "◆"}
PREDICTED_GLYPHS = {"1-cos embedding": "○", "1-cos logit": "△", "1-cos probability": "□", "KL": "◇"}


class CurvesScreen(TwoPlotScreen):
    CSS_PATH = "curves.tcss"
    FIELDS = FIELDS
    BINDINGS = switch_bindings(FIELDS)
    PLOTS = (("1-cos by layer", "cos"), ("KL by layer", "kl"))

    def load(self, ds, sel) -> views.Curves:
        return views.layer_curves(ds, sel)

    def show(self, data: views.Curves) -> None:
        self.query_one(SelectionBar).show(self.app.selection, self.FIELDS, shown={"kind": data.kind})
        cos: list[Series] = []
        kl: list[Series] = []
        for name, (measured, predicted) in data.series.items():
            colour = SPACE_COLOURS[name]
            target = kl if name == "KL" else cos
            target.append(Series(name, data.layers, measured, colour, lines=True, marker=MEASURED_GLYPHS[name]))
            target.append(Series(name + " pred", data.layers, predicted, colour, lines=False,
                                 marker=PREDICTED_GLYPHS[name]))
        self.query_one("#cos", Plot).plot(cos, title=f"1-cos by layer ({data.kind}, log y)", logy=True)
        self.query_one("#kl", Plot).plot(kl, title=f"KL(p||q) by layer ({data.kind}, log y)", logy=True)
        legend = Text("filled, joined = measured; hollow = predicted:  ")
        for name, colour in SPACE_COLOURS.items():
            glyphs = MEASURED_GLYPHS[name] + PREDICTED_GLYPHS[name]
            legend.append(f"{glyphs} {name.replace('1-cos ', '')}  ", style=colour)
        self.query_one("#legend", Static).update(legend)
