"""Theory vs measured: predicted against measured KL and 1-cos(p) per unit, with Spearman's rho."""

from __future__ import annotations

import math

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Footer, Header, Static

from .. import views
from ..widgets.braille import Series
from ..widgets.plot import Plot
from .base import DataScreen, SelectionBar, switch_bindings

FIELDS = ("method", "temperature", "locality", "timing", "kind")


def rho_text(rho: float, n: int) -> str:
    return f"Spearman rho = {rho:.3f} (n={n})" if math.isfinite(rho) else f"Spearman rho = n/a (n={n})"


class TheoryScreen(DataScreen):
    CSS_PATH = "theory.tcss"
    FIELDS = FIELDS
    BINDINGS = switch_bindings(FIELDS)

    def compose(self) -> ComposeResult:
        yield Header()
        yield SelectionBar(id="selection")
        with Horizontal(id="plots"):
            yield Plot("KL", id="kl")
            yield Plot("1-cos(p)", id="cos")
        yield Static("x = predicted (Taylor), y = measured, one dot per unit (mean over samples and steps); "
                     "dim line: y = x", id="legend")
        yield Footer()

    def load(self, ds, sel) -> views.Theory:
        return views.theory(ds, sel)

    def show(self, data: views.Theory) -> None:
        for key, pred, meas, name in (("kl", data.kl_pred, data.kl, "KL(p||q)"),
                                      ("cos", data.cos_pred, data.cos, "1-cos(p,q)")):
            rho, n = data.rho(key)
            self.query_one(f"#{key}", Plot).plot(
                [Series(name, pred, meas, "yellow" if key == "kl" else "magenta", lines=False)],
                title=f"{name}: predicted vs measured", footer=rho_text(rho, n), logx=True, logy=True, diagonal=True)
