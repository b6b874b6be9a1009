"""Theory vs measured: predicted against measured KL and 1-cos(p) per unit, with Spearman's rho."""

from __future__ import annotations

import math

from .. import views
from ..widgets.braille import Series
from ..widgets.plot import Plot
from .base import TwoPlotScreen, switch_bindings

FIELDS = ("method", "temperature", "locality", "timing", "kind")


def rho_text(rho: float, n: int) -> str:
    return f"Spearman rho = {rho:.3f} (n={n})" if math.isfinite(rho) else f"Spearman rho = n/a (n={n})"


class TheoryScreen(TwoPlotScreen):
    CSS_PATH = "theory.tcss"
    FIELDS = FIELDS
    BINDINGS = switch_bindings(FIELDS)
    PLOTS = (("KL", "kl"), ("1-cos(p)", "cos"))
    LEGEND = "x = predicted (Taylor), y = measured, one dot per unit (mean over samples and steps); dim line: y = x"

    def load(self, ds, sel) -> views.Theory:
        return views.theory(ds, sel)

    def show(self, data: views.Theory) -> None:
        for key, pred, meas, name in (("kl", data.kl_pred, data.kl, "KL(p||q)"),
                                      ("cos", data.cos_pred, data.cos, "1-cos(p,q)")):
            rho, n = data.rho(key)
            self.query_one(f"#{key}", Plot).plot(
                [Series(name, pred, meas, "yellow" if key == "kl" else "magenta", lines=False)],
                title=f"{name}: predicted vs measured", footer=rho_text(rho, n), logx=True, logy=True, diagonal=True)
