"""Pilot tests: the app at 80x24 over fixture stores — every screen, switches, ranking and export."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from textual.widgets import DataTable

from prunelens.workflow.export import prepare_plan
from prunelens_tui.app import SCREENS, PrunelensApp
from prunelens_tui.screens.heatmap import HeatmapScreen
from prunelens_tui.screens.help import HelpScreen, binding_rows
from prunelens_tui.synthetic import make_store, synthetic_dataset
from prunelens_tui.widgets.heatmap import HeatmapGrid
from prunelens_tui.widgets.scale import fmt

KW = dict(methods=("drop", "magnitude:sparsity=0.5"), num_layers=4, samples=3, steps=8, temperatures=(0.7, 1.0))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("app") / "run.zarr", **KW)


async def settle(pilot) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def test_every_screen_and_switches(store):
    mem = synthetic_dataset(**KW)
    app = PrunelensApp([store], cwd=store.parent)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.ds is not None and app.sub_title == "run.zarr"  # the one store opened itself
        await pilot.press("2")
        await settle(pilot)
        grid = app.screen.query_one(HeatmapGrid)
        # default view: kl_pred, drop, propagated, teacher_forced, T=1.0 (closest to 1)
        np.testing.assert_allclose(grid.values, mem["kl_pred"].values[0, :, 1, 0, 1].mean(axis=1), rtol=1e-6)
        await pilot.press("v", "v")  # kl_pred -> kl -> cos_dev
        await pilot.press("s")  # probability -> embedding
        await pilot.press("t")  # T=1.0 -> 0.7
        await pilot.press("l")  # propagated -> local
        await pilot.press("m")  # drop -> magnitude
        await settle(pilot)
        sel = app.selection
        assert (sel.metric, sel.space, sel.temperature, sel.locality, sel.method) == \
            ("cos_dev", "embedding", 0.7, "local", "magnitude:sparsity=0.5")
        np.testing.assert_allclose(grid.values, mem["cos_dev"].values[1, :, 0, 0, 0, 0].mean(axis=1), rtol=1e-6)
        await pilot.press("down", "down", "right")
        await settle(pilot)
        assert grid.cursor == (2, 1)
        value_line = str(app.screen.query_one("#value").render())
        assert value_line.startswith("L0.mlp  step 1") and f"cos_dev = {fmt(grid.values[2, 1])}" in value_line
        await pilot.click(HeatmapGrid, offset=(9 + 3 * grid.cell_width, 1 + 5))  # mouse: column 3, row 5 = L1.mlp
        assert grid.cursor == (5, 3)
        for key, name in (("3", "curves"), ("4", "theory"), ("5", "plan"), ("1", "runs")):
            await pilot.press(key)
            await settle(pilot)
            assert isinstance(app.screen, SCREENS[name])
        await pilot.press("3", "k")  # curves: kind all -> block
        await settle(pilot)
        cos_plot = app.screen.query_one("#cos")
        assert cos_plot.series and "block" in cos_plot.title
        await pilot.press("4")
        await settle(pilot)
        footer = app.screen.query_one("#kl").footer.plain
        assert footer.startswith("Spearman rho = ") and "(n=4)" in footer  # kind=block: 4 units
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_a_slow_older_load_never_overwrites_a_newer_one(tmp_path, monkeypatch):
    """Two quick ``m`` presses: the first method's load is slow and ends last; the heatmap still shows the
    second method (CI once drew the first method's grid under the second method's bar)."""
    methods = ("drop", "magnitude:sparsity=0.3", "magnitude:sparsity=0.5")
    kw = dict(KW, methods=methods)
    store = make_store(tmp_path / "run.zarr", **kw)
    mem = synthetic_dataset(**kw)
    real_load = HeatmapScreen.load
    slow = threading.Event()

    def load(self, ds, sel):
        data = real_load(self, ds, sel)
        if sel.method == methods[1]:
            slow.wait(5.0)  # released once the newer load has been drawn
        return data

    monkeypatch.setattr(HeatmapScreen, "load", load)
    app = PrunelensApp([store], cwd=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        await pilot.press("m", "m")  # drop -> 0.3 (slow) -> 0.5
        grid = app.screen.query_one(HeatmapGrid)
        want = mem["kl_pred"].values[2, :, 1, 0, 1].mean(axis=1)  # 0.5, T=1.0, propagated, teacher_forced
        for _ in range(200):  # the newer load lands first
            await pilot.pause(0.02)
            if grid.values.shape == want.shape and np.allclose(grid.values, want, rtol=1e-6):
                break
        np.testing.assert_allclose(grid.values, want, rtol=1e-6)
        slow.set()  # now the older load ends
        for _ in range(25):
            await pilot.pause(0.02)
        await settle(pilot)
        assert app.selection.method == methods[2]
        np.testing.assert_allclose(grid.values, want, rtol=1e-6)
        assert methods[2] in str(app.screen.query_one("#title").render())


async def test_a_rescan_during_a_scan_lists_each_store_once(tmp_path, monkeypatch):
    """F5 while the first scan is still reading: the table lists every store once, not twice."""
    import prunelens_tui.screens.runs as runs_module

    for name in ("a.zarr", "b.zarr"):
        make_store(tmp_path / name, **KW)
    real_summarize, first = runs_module.summarize, threading.Event()
    calls = []

    def summarize(path):
        calls.append(path)
        if len(calls) == 1:
            first.wait(5.0)  # the first scan stalls on its first store until the rescan has finished
        return real_summarize(path)

    monkeypatch.setattr(runs_module, "summarize", summarize)
    app = PrunelensApp([str(tmp_path)], cwd=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(100):
            await pilot.pause(0.02)
            if calls:
                break
        await pilot.press("f5")
        for _ in range(200):
            await pilot.pause(0.02)
            if app.screen.query_one(DataTable).row_count == 2:
                break
        first.set()
        for _ in range(25):
            await pilot.pause(0.02)
        await settle(pilot)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 2 and len(app.screen.summaries) == 2
        assert sorted(s.path.name for s in app.screen.summaries) == ["a.zarr", "b.zarr"]


async def test_rank_and_export_equal_plan_from_store(store, tmp_path):
    plans = pytest.importorskip("prunelens.plan.unit_selection", reason="prunelens.plan.unit_selection is not in the tree")
    from textual.widgets import Input, Select

    from prunelens_tui.backend import open_store

    out = tmp_path / "plan.json"
    app = PrunelensApp([store], cwd=store.parent)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("5")
        await settle(pilot)
        screen = app.screen
        screen.query_one("#budget", Input).value = "lots"
        await pilot.press("r")
        await settle(pilot)
        assert screen.plan is None and "budget" in str(screen.query_one("#status").render()).lower()
        await pilot.press("e")  # export before a successful ranking: a message, no file, no crash
        await pilot.pause()
        assert "rank first" in str(screen.query_one("#status").render())
        screen.query_one("#method", Select).value = "drop"
        screen.query_one("#kind", Select).value = "block"
        screen.query_one("#temperature", Select).value = 0.7
        screen.query_one("#by", Select).value = "kl_pred"
        budget = screen.query_one("#budget", Input)
        await pilot.click("#budget")
        budget.value = ""
        await pilot.press("2", "enter")  # Enter in the budget box ranks
        await settle(pilot)
        assert screen.plan is not None, str(screen.query_one("#status").render())
        table = screen.query_one("#ranking")
        assert table.row_count == 4
        path = screen.query_one("#path", Input)
        path.value = ""
        await pilot.click("#path")
        await pilot.press(*str(out), "enter")  # typed path; Enter exports
        await settle(pilot)
    assert out.exists(), "the plan was not written"
    ds = open_store(store)
    expected = prepare_plan(plans.plan_from_store(ds, method="drop", kind="block", temperature=0.7, by="kl_pred",
                                                  budget=2, store_path=str(store)), ds)
    got = json.loads(out.read_text())
    want = json.loads(expected.to_json())
    got.pop("created"), want.pop("created")  # a timestamp
    assert got == want
    assert len(got["units"]) == 2
    assert out.with_suffix(".yaml").read_text() == expected.to_mergekit_yaml()


async def test_bad_stores_are_messages_not_crashes(tmp_path):
    good = make_store(tmp_path / "good.zarr", **KW)
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "x.txt").write_text("not zarr")
    newer = make_store(tmp_path / "newer.zarr", **KW)
    meta = json.loads((newer / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = 99
    (newer / "zarr.json").write_text(json.dumps(meta))
    app = PrunelensApp([tmp_path, tmp_path / "missing.zarr"], cwd=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        status = {s.path.name: s.status for s in screen.summaries}
        assert status == {"good.zarr": "complete", "junk.zarr": "error", "newer.zarr": "error",
                          "missing.zarr": "error"}
        assert app.store_path == good  # the one good store opened
        errors = [n for n in app._notifications if n.severity == "error"]
        assert len(errors) == 3
        junk_row = [s.path.name for s in screen.summaries].index("junk.zarr")
        screen.query_one("#runs").move_cursor(row=junk_row)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SCREENS["runs"]) and app.store_path == good
        assert "junk.zarr" in str(screen.query_one("#details").render())


async def test_empty_directory_and_data_screens_without_a_store(tmp_path):
    app = PrunelensApp([tmp_path], cwd=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "no probe stores found" in str(app.screen.query_one("#details").render())
        await pilot.press("2", "m", "5", "r")
        await settle(pilot)
        assert "no store open" in str(app.screen.query_one("#status").render())
        assert app.ds is None


def test_help_lists_every_binding():
    app = PrunelensApp(["."])
    groups = [("global", app.BINDINGS)] + [(n, c.BINDINGS) for n, c in SCREENS.items()]
    rows = binding_rows(groups + [("heatmap grid", HeatmapGrid.BINDINGS)])
    listed = {(where, key) for where, key, _ in rows}
    for name, cls in SCREENS.items():
        for b in cls.BINDINGS:
            assert (name, b.key.replace("question_mark", "?").replace("enter", "Enter")) in listed
    for key in ("m", "v", "s", "t", "l", "g", "k"):
        assert ("heatmap", key) in listed
    assert ("global", "?") in listed and ("global", "q") in listed and ("global", "5") in listed


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    """A store written by the real probe engine (drop, every unit of a tiny 2-layer llama)."""
    pytest.importorskip("prunelens.probe.run", reason="the probe engine is not in the tree")
    from conftest import make_tiny_model

    from prunelens.compression.methods import parse_method
    from prunelens.model.adapters import get_adapter
    from prunelens.model.loading import LoadedModel
    from prunelens.probe.engine import ProbeSettings
    from prunelens.probe.prompts import Prompts
    from prunelens.probe.run import run_probe
    from prunelens.units import all_units

    model = make_tiny_model("llama", layers=2)
    loaded = LoadedModel(model, None, get_adapter(model), "tiny-llama", "tiny-hash")
    prompts = Prompts([[(7 * i + 3 * j) % 90 + 2 for j in range(5)] for i in range(2)])
    out = tmp_path_factory.mktemp("real") / "probe.zarr"
    settings = ProbeSettings(steps=3, temperatures=(0.7, 1.0), timings=("teacher_forced",))
    run_probe(loaded, [parse_method("drop")], all_units(2), prompts, settings, out, progress=False)
    return out


async def test_real_probe_store_every_screen_and_plan(real_store, tmp_path):
    plans = pytest.importorskip("prunelens.plan.unit_selection", reason="prunelens.plan.unit_selection is not in the tree")
    from textual.widgets import Input

    from prunelens_tui.backend import open_store

    ds = open_store(real_store)
    out = tmp_path / "real-plan.json"
    app = PrunelensApp([real_store.parent], cwd=real_store.parent)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert [s.status for s in app.screen.summaries] == ["complete"]
        assert app.screen.summaries[0].model == "tiny-llama"
        await pilot.press("2")
        await settle(pilot)
        grid = app.screen.query_one(HeatmapGrid)
        expected = ds["kl_pred"].sel({"method": "drop", "locality": "propagated", "timing": "teacher_forced",
                                      "temperature": 1.0}).values.mean(axis=1)  # [unit, step]
        np.testing.assert_allclose(grid.values, expected, rtol=1e-6)
        await pilot.press("k")  # kind all -> block: the plan screen follows it
        for key in "34":
            await pilot.press(key)
            await settle(pilot)
        assert app.screen.query_one("#kl").footer.plain.startswith("Spearman rho = ")
        await pilot.press("5")
        await settle(pilot)
        app.screen.query_one("#budget", Input).value = "1"
        app.screen.query_one("#path", Input).value = str(out)
        await pilot.press("r")
        await settle(pilot)
        await pilot.press("e")
        await settle(pilot)
    want = prepare_plan(plans.plan_from_store(ds, method="drop", kind="block", temperature=1.0, by="kl_pred",
                                              budget=1, store_path=str(real_store)), ds)
    got, want = json.loads(out.read_text()), json.loads(want.to_json())
    got.pop("created"), want.pop("created")
    assert got == want and len(got["units"]) == 1
