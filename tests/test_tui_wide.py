"""The TUI on a wide terminal and while it is still loading: the heatmap fills the width, the Runs
table shows whole cells, and `r` pressed before the strategies are listed ranks once they are."""

from __future__ import annotations

import threading

import pytest

from prunelens_tui.app import PrunelensApp
from prunelens_tui.synthetic import make_store
from prunelens_tui.widgets.heatmap import LABEL_WIDTH, HeatmapGrid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("wide") / "a-store-name-long-enough-to-need-room.zarr",
                      methods=("drop", "wanda:sparsity=0.5", "rtn:bits=4,group_size=128"), num_layers=3, samples=2,
                      steps=16, temperatures=(0.7, 1.0))


async def settle(pilot) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def test_heatmap_uses_the_terminal_width(store):
    app = PrunelensApp([store], cwd=store.parent)
    async with app.run_test(size=(200, 30)) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        grid = app.screen.query_one(HeatmapGrid)
        used = LABEL_WIDTH + grid.cell_width * len(grid.steps)
        assert grid.size.width >= 190 and used > grid.size.width - len(grid.steps)  # all but the remainder
        row = grid.render().plain.splitlines()[1]
        assert len(row) == used


async def test_runs_table_shows_whole_cells_on_a_wide_terminal(store):
    from textual.widgets import DataTable

    app = PrunelensApp([store], cwd=store.parent)
    async with app.run_test(size=(200, 30)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(DataTable)
        row = [str(c) for c in table.get_row_at(0)]
        assert store.name in row[0] and "rtn:bits=4,group_size=128" in row[-1]
        widths = {c.label.plain: c.get_render_width(table) for c in table.columns.values()}
        assert widths["methods"] > len("drop, wanda:sparsity=0.5, rtn:bits=4,group_size=128")
        assert sum(widths.values()) > 80  # not cut to 80 columns
        assert "…" not in app.export_screenshot()


async def test_rank_pressed_while_strategies_load_runs_when_ready(store, monkeypatch):
    from prunelens_tui import backend
    from prunelens_tui.screens.plan import PlanScreen

    gate = threading.Event()
    real = backend.ranker_choices

    def slow_choices():
        gate.wait(10)
        return real()

    monkeypatch.setattr(backend, "ranker_choices", slow_choices)
    app = PrunelensApp([store], cwd=store.parent)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()  # the store opened
        await pilot.press("5")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, PlanScreen) and screen._loading
        await pilot.press("r")  # strategies still loading
        await pilot.pause()
        assert "loading" in str(screen.query_one("#status").render())
        gate.set()
        await settle(pilot)
        await settle(pilot)
        assert screen.plan is not None  # the queued `r` ranked
        from textual.widgets import DataTable

        assert screen.query_one("#ranking", DataTable).row_count > 0
