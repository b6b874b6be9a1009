"""The Rank & plan screen follows the data screens' method, kind, temperature, locality and timing, names
them, and exports the plan ``prunelens plan`` writes for them (byte for byte but ``created``), with an
absolute ``store_path``. At 80x24, in colour and in monochrome (``NO_COLOR=1``)."""

from __future__ import annotations

import json
import os
import re

import pytest
from click.testing import CliRunner
from textual.widgets import Input, Select
from tui_helpers import MONO, SIZE, screen_text, settle, use_mono

from prunelens.cli import main
from prunelens.plan.document import Plan
from prunelens_tui.app import PrunelensApp
from prunelens_tui.backend import open_store
from prunelens_tui.synthetic import make_store

METHODS = ("drop", "magnitude:sparsity=0.3", "magnitude:sparsity=0.5")  # a sweep: two levels of one method


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("follow") / "run.zarr", methods=METHODS, num_layers=4, samples=3,
                      steps=8, temperatures=(0.7, 1.0), candidates=False)


def without_created(text: str) -> str:
    out, n = re.subn(r'\n  "created": "[^"]*",', "", text)
    assert n == 1, text
    return out


@MONO
async def test_plan_follows_method_switch_and_equals_cli(store, tmp_path, monkeypatch, mono):
    use_mono(monkeypatch, mono)
    monkeypatch.chdir(store.parent)  # the store given relative, as a user types it
    out = tmp_path / "tui-plan.json"
    app = PrunelensApp(["run.zarr"], cwd=store.parent)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("5")  # the plan screen first: it shows the defaults (drop, all kinds)
        await settle(pilot)
        assert app.screen.query_one("#method", Select).value == "drop"
        await pilot.press("2", "m", "m", "t", "l", "k")  # magnitude:sparsity=0.5, T=0.7, local, block
        await settle(pilot)
        await pilot.press("5")
        await settle(pilot)
        screen = app.screen
        values = {n: screen.query_one(f"#{n}", Select).value for n in ("method", "kind", "temperature", "locality",
                                                                       "timing")}
        assert values == {"method": "magnitude:sparsity=0.5", "kind": "block", "temperature": 0.7,
                          "locality": "local", "timing": "teacher_forced"}
        text = "\n".join(screen_text(app))
        assert "magnitude:sparsity=0.5" in text  # the method box shows the whole spec at 80 columns
        status = str(screen.query_one("#status").render())
        assert "magnitude:sparsity=0.5" in status and "block" in status and "local" in status
        screen.query_one("#path", Input).value = str(out)
        await pilot.press("r")
        await settle(pilot)
        status = str(screen.query_one("#status").render())
        assert status.startswith("plan ") and "magnitude:sparsity=0.5" in status, status
        assert "T=0.7" in status and "kl_pred" in status
        await pilot.press("e")
        await settle(pilot)
        assert "magnitude:sparsity=0.5" in str(screen.query_one("#status").render())
    tui_text = out.read_text()
    cli_out = tmp_path / "cli-plan.json"
    res = CliRunner().invoke(main, ["plan", "run.zarr", "--method", "magnitude:sparsity=0.5", "--kind", "block",
                                    "-T", "0.7", "--by", "kl_pred", "--locality", "local", "--timing",
                                    "teacher_forced", "--budget", "2", "--out", str(cli_out)])
    assert res.exit_code == 0, res.output
    assert without_created(tui_text) == without_created(cli_out.read_text())  # byte for byte but the timestamp
    plan = json.loads(tui_text)
    assert plan["method"] == "magnitude:sparsity=0.5" and plan["kind"] == "block" and plan["temperature"] == 0.7
    assert plan["locality"] == "local" and len(plan["units"]) == 2
    assert plan["store_path"] == str(store.resolve()) and os.path.isabs(plan["store_path"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # what `validate` does with the plan from another directory
    assert open_store(Plan.load(out).store_path).sizes["unit"] == 12


@MONO
async def test_plan_screen_choices_drive_the_data_screens_and_drop_a_stale_plan(store, tmp_path, monkeypatch,
                                                                                mono):
    use_mono(monkeypatch, mono)
    app = PrunelensApp([store], cwd=store.parent)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("5")
        await settle(pilot)
        screen = app.screen
        await pilot.press("r")
        await settle(pilot)
        assert screen.plan is not None and screen.plan.method == "drop"
        screen.query_one("#budget", Input).value = "3"
        await settle(pilot)
        assert screen.plan is None  # typed another budget: the 2-unit plan is not exported as if it were 3
        await pilot.press("r")
        await settle(pilot)
        assert screen.plan is not None and len(screen.plan.units) == 3
        screen.query_one("#method", Select).value = "magnitude:sparsity=0.3"
        screen.query_one("#locality", Select).value = "local"
        await settle(pilot)
        assert app.selection.method == "magnitude:sparsity=0.3" and app.selection.locality == "local"
        assert screen.plan is None  # a plan of other choices is never exported
        status = str(screen.query_one("#status").render())
        assert "magnitude:sparsity=0.3" in status and "r ranks" in status
        screen.query_one("#path", Input).value = str(tmp_path / "stale.json")
        await pilot.press("e")
        await settle(pilot)
        assert "rank first" in str(screen.query_one("#status").render())
        assert not (tmp_path / "stale.json").exists()
        await pilot.press("2")
        await settle(pilot)
        title = str(app.screen.query_one("#title").render())
        assert "magnitude:sparsity=0.3" in title and "local" in title  # the heatmap follows the plan screen


async def test_opening_another_store_drops_the_plan(tmp_path):
    for name in ("a.zarr", "b.zarr"):
        make_store(tmp_path / name, methods=("drop",), num_layers=3, samples=2, steps=4, temperatures=(1.0,),
                   candidates=False)
    app = PrunelensApp([tmp_path], cwd=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.ds is None  # two stores: none opens by itself
        await pilot.press("enter")  # a.zarr
        await settle(pilot)
        await pilot.press("5")
        await settle(pilot)
        await pilot.press("r")
        await settle(pilot)
        assert app.screen.plan is not None and app.screen.plan.store_path == str((tmp_path / "a.zarr").resolve())
        await pilot.press("1")
        await settle(pilot)
        app.screen.query_one("#runs").move_cursor(row=1)
        await pilot.press("enter")  # b.zarr
        await settle(pilot)
        assert app.store_path == tmp_path / "b.zarr"
        await pilot.press("5")
        await settle(pilot)
        screen = app.screen
        assert screen.plan is None and screen.query_one("#ranking").row_count == 0
        await pilot.press("e")
        await pilot.pause()
        assert "rank first" in str(screen.query_one("#status").render())
        await pilot.press("r")
        await settle(pilot)
        assert screen.plan.store_path == str((tmp_path / "b.zarr").resolve())
