"""Heatmap: unit x step of one metric (mean over samples), value under the cursor."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Footer, Header, Static

from prunelens.safe_text import clean

from .. import views
from ..widgets.heatmap import HeatmapGrid
from ..widgets.scale import fmt
from .base import DataScreen, SelectionBar, switch_bindings

FIELDS = ("method", "metric", "space", "temperature", "locality", "timing", "kind")


class HeatmapScreen(DataScreen):
    CSS_PATH = "heatmap.tcss"
    FIELDS = FIELDS
    BINDINGS = switch_bindings(FIELDS)

    def compose(self) -> ComposeResult:
        yield Header()
        yield SelectionBar(id="selection")
        yield Static(id="title")
        yield HeatmapGrid(id="grid")
        yield Static(id="legend")
        yield Static(id="value")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(HeatmapGrid).focus()

    def load(self, ds, sel) -> views.Heatmap:
        return views.heatmap(ds, sel)

    def show(self, data: views.Heatmap) -> None:
        self.query_one("#title", Static).update(Text(clean(data.title), style="bold"))
        grid = self.query_one(HeatmapGrid)
        grid.set_data(data.values, data.units, data.steps)
        self.query_one("#legend", Static).update(grid.scale.legend())

    def show_empty(self) -> None:
        self.query_one(HeatmapGrid).set_data(views.np.zeros((0, 0)), [], [])

    def on_heatmap_grid_cursor_moved(self, event: HeatmapGrid.CursorMoved) -> None:
        metric = self.app.selection.metric if self.app.selection else ""
        samples = self.app.ds.sizes.get("sample", 0) if self.app.ds is not None else 0
        self.query_one("#value", Static).update(
            Text.assemble((clean(event.unit), "bold"), f"  step {event.step}  ",
                          (f"{metric} = {fmt(event.value)}", "bold"), f"  (mean of {samples} samples)"))
