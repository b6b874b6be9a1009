"""Details of the data screens at 80x24, in colour and in monochrome (``NO_COLOR=1``): ``v`` cycles only the
metrics the store has, every metric is in docs/tui.md, the selection bar is one line that keeps method specs
apart, the heatmap cursor shows by shape, and the curves' predicted glyphs are never hidden."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tui_helpers import MONO, SIZE, screen_text, settle, use_mono

from prunelens_tui.app import PrunelensApp
from prunelens_tui.screens.base import SelectionBar
from prunelens_tui.screens.curves import MEASURED_GLYPHS, PREDICTED_GLYPHS
from prunelens_tui.selection import CANDIDATE_METRICS, METRICS, Selection
from prunelens_tui.synthetic import make_store
from prunelens_tui.widgets.braille import Series, render_plot
from prunelens_tui.widgets.heatmap import LABEL_WIDTH, HeatmapGrid

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tui.md"
KW = dict(methods=("magnitude:sparsity=0.3", "magnitude:sparsity=0.5"), num_layers=6, samples=2, steps=16,
          temperatures=(0.7, 1.0))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A store probed on plain text: no answer candidates."""
    return make_store(tmp_path_factory.mktemp("plain") / "run.zarr", candidates=False, **KW)


@pytest.fixture(scope="module")
def with_candidates(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("cand") / "run.zarr", candidates=True, **KW)


async def cycle_metrics(app, pilot) -> list[str]:
    """Press ``v`` until the metric comes back; each metric seen once, with its heatmap checked."""
    seen = [app.selection.metric]
    grid = app.screen.query_one(HeatmapGrid)
    while True:
        assert np.isfinite(grid.values).any() or app.selection.metric in CANDIDATE_METRICS, app.selection.metric
        bar_row = screen_text(app)[1]
        assert len(bar_row.rstrip()) <= SIZE[0] and bar_row.startswith("m magnitude:sparsity=0.3"), bar_row
        await pilot.press("v")
        await settle(pilot)
        if app.selection.metric == seen[0]:
            return seen
        seen.append(app.selection.metric)


@MONO
async def test_v_cycles_only_the_metrics_the_store_has(plain, with_candidates, monkeypatch, mono):
    use_mono(monkeypatch, mono)
    for store, expected in ((plain, [m for m in METRICS if m not in CANDIDATE_METRICS]), (with_candidates, METRICS)):
        app = PrunelensApp([store], cwd=store.parent)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("2")
            await settle(pilot)
            seen = await cycle_metrics(app, pilot)
        assert seen == list(expected)
    assert len(CANDIDATE_METRICS) == 4


def test_docs_list_every_metric():
    text = DOCS.read_text()
    missing = [m for m in METRICS if f"`{m}`" not in text]
    assert not missing, f"docs/tui.md does not name {missing}"


@MONO
async def test_selection_bar_is_one_line_and_keeps_sweep_levels_apart(plain, monkeypatch, mono):
    use_mono(monkeypatch, mono)
    app = PrunelensApp([plain], cwd=plain.parent)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        bars = {}
        for _ in range(2):
            rows = screen_text(app)
            assert app.screen.query_one(SelectionBar).region.height == 1
            assert rows[2].startswith("kl_pred T=1 · ")  # the title right under the bar: the bar did not wrap
            bars[app.selection.method] = rows[1].rstrip()
            await pilot.press("m")
            await settle(pilot)
        for _ in range(3):  # 3 (curves) and 4 (theory) share the bar
            await pilot.press("3")
            await settle(pilot)
            assert screen_text(app)[1].rstrip().startswith("m magnitude:sparsity=0.3  t 1")
            await pilot.press("4")
            await settle(pilot)
            assert app.screen.query_one(SelectionBar).region.height == 1
    assert bars["magnitude:sparsity=0.3"] != bars["magnitude:sparsity=0.5"]
    assert all(len(b) <= SIZE[0] and f"m {m}  " in b for m, b in bars.items())


def test_selection_bar_squeezes_a_long_method_keeping_both_ends():
    bar = SelectionBar()
    spec = "a_third_party_pruner_from_a_plugin:sparsity=0.55,group_size=128"
    bar.show(Selection(spec, metric="cos_dev_pred", space="probability", temperature=0.7),
             ("method", "metric", "space", "temperature", "locality", "timing", "kind"))
    for width in (80, 60):
        line = bar.line(width).plain
        assert len(line) <= width and "…" in line, line
        assert "v cos_dev_pred" in line and "t 0.7" in line and "k all" in line
        method = line.split(" v ")[0]
        assert method.startswith("m a_") and method.endswith("=128"), line
    assert bar.line(80).plain.split(" v ")[0].endswith(",group_size=128")


@MONO
async def test_heatmap_cursor_shows_without_colour(plain, monkeypatch, mono):
    use_mono(monkeypatch, mono)
    app = PrunelensApp([plain], cwd=plain.parent)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        grid = app.screen.query_one(HeatmapGrid)
        for keys in ((), ("down", "down", "right", "right", "right"), ("end", "right")):
            await pilot.press(*keys)
            await settle(pilot)
            row, col = grid.cursor
            rows = screen_text(app)
            top = grid.region.y
            header = rows[top]
            at = LABEL_WIDTH + (col - grid._left) * grid.cell_width
            assert header[at] == "▼" and header.count("▼") == 1
            marked = [i for i, r in enumerate(rows) if r[:LABEL_WIDTH].endswith("▶")]
            assert len(marked) == 1
            line = rows[marked[0]]
            assert line.split()[0].rstrip("▶") == grid.units[row]
            assert line[at] == "[" and line[at + grid.cell_width - 1] == "]"


def test_predicted_glyphs_are_never_hidden():
    x = np.arange(8)
    y = np.asarray([0.1, 0.3, 0.2, 0.5, 0.4, 0.9, 0.7, 1.0])
    series = [Series("m", x, y, lines=True, marker="●"), Series("p", x, y, lines=False, marker="○"),
              Series("m2", x, y * 1.01, lines=True, marker="▲"), Series("p2", x, y * 1.02, lines=False, marker="△")]
    text = render_plot(series, 60, 12).plain  # every point of every series in the same cell as three others
    for glyph in "●○▲△":
        assert text.count(glyph) == len(x), (glyph, text)


@MONO
async def test_curves_show_every_measured_and_predicted_point(plain, monkeypatch, mono):
    use_mono(monkeypatch, mono)
    app = PrunelensApp([plain], cwd=plain.parent)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("3")
        await settle(pilot)
        plots = {p.id: p.render().plain for p in app.screen.query("Plot")}
    layers = KW["num_layers"]
    for name in MEASURED_GLYPHS:
        text = plots["kl" if name == "KL" else "cos"]
        assert text.count(MEASURED_GLYPHS[name]) == layers, (name, text)
        assert text.count(PREDICTED_GLYPHS[name]) == layers, (name, text)
