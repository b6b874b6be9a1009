"""Snapshot tests of every screen at 80x24 over a deterministic synthetic store.

Regenerate after an intended change: pytest tests/test_tui_snapshots.py --snapshot-update
(then look at the SVGs under tests/__snapshots__/ before committing them).
"""

from __future__ import annotations

import pytest

from prunelens_tui.app import PrunelensApp
from prunelens_tui.synthetic import make_store

SIZE = (80, 24)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("snap") / "run.zarr", methods=("drop", "wanda:sparsity=0.5"),
                      num_layers=6, samples=4, steps=16, temperatures=(0.5, 0.7, 1.0))


def make_app(store) -> PrunelensApp:
    return PrunelensApp([store], cwd=store.parent)  # paths shown relative to cwd: stable across machines


async def settle(pilot) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def test_runs(snap_compare, store):
    assert snap_compare(make_app(store), terminal_size=SIZE, run_before=settle)


def test_heatmap_switched(snap_compare, store):
    async def go(pilot):
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        await pilot.press("v", "v", "s", "s", "down", "down", "down", "right", "right")  # cos_dev, logit
        await settle(pilot)

    assert snap_compare(make_app(store), terminal_size=SIZE, run_before=go)


def test_curves(snap_compare, store):
    async def go(pilot):
        await settle(pilot)
        await pilot.press("3")
        await settle(pilot)

    assert snap_compare(make_app(store), terminal_size=SIZE, run_before=go)


def test_theory(snap_compare, store):
    async def go(pilot):
        await settle(pilot)
        await pilot.press("4", "t")  # T=1.0 -> 0.5
        await settle(pilot)

    assert snap_compare(make_app(store), terminal_size=SIZE, run_before=go)


def test_plan_after_ranking(snap_compare, store):
    pytest.importorskip("prunelens.plan.document", reason="prunelens.plan.document is not in the tree")

    async def go(pilot):
        await settle(pilot)
        await pilot.press("5")
        await settle(pilot)
        await pilot.press("r")
        await settle(pilot)

    assert snap_compare(make_app(store), terminal_size=SIZE, run_before=go)


def test_help(snap_compare, store):
    async def go(pilot):
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(make_app(store), terminal_size=SIZE, run_before=go)


def test_curves_no_color(snap_compare, store, monkeypatch):
    """Under NO_COLOR the three 1-cos series (and KL) differ by glyph: ● ▲ ■ ◆ measured, ○ △ □ ◇ predicted."""
    monkeypatch.setenv("NO_COLOR", "1")
    seen: dict[str, str] = {}

    async def go(pilot):
        await settle(pilot)
        await pilot.press("3")
        await settle(pilot)
        from prunelens_tui.widgets.plot import Plot

        for plot in pilot.app.screen.query(Plot):
            seen[plot.id] = plot.render().plain
        seen["legend"] = str(pilot.app.screen.query_one("#legend").render())

    assert snap_compare(make_app(store), terminal_size=SIZE, run_before=go)
    assert pilot_saw_every_glyph(seen)


def pilot_saw_every_glyph(seen: dict[str, str]) -> bool:
    from prunelens_tui.screens.curves import MEASURED_GLYPHS, PREDICTED_GLYPHS

    cos_names = [n for n in MEASURED_GLYPHS if n != "KL"]
    glyphs = [MEASURED_GLYPHS[n] for n in cos_names] + [PREDICTED_GLYPHS[n] for n in cos_names]
    assert len(set(glyphs)) == 6  # six different glyphs for the three spaces, measured and predicted
    assert all(g in seen["cos"] for g in glyphs), seen["cos"]
    assert MEASURED_GLYPHS["KL"] in seen["kl"] and PREDICTED_GLYPHS["KL"] in seen["kl"]
    assert all(g in seen["legend"] for g in glyphs)
    return True


def test_plan_after_method_switch(snap_compare, store):
    """``m`` and ``k`` on the heatmap, then the plan screen: its boxes and status line name wanda and block."""
    pytest.importorskip("prunelens.plan.document", reason="prunelens.plan.document is not in the tree")

    async def go(pilot):
        await settle(pilot)
        await pilot.press("2", "m", "k")
        await settle(pilot)
        await pilot.press("5")
        await settle(pilot)
        await pilot.press("r")
        await settle(pilot)
        assert pilot.app.screen.plan.method == "wanda:sparsity=0.5" and pilot.app.screen.plan.kind == "block"

    assert snap_compare(make_app(store), terminal_size=SIZE, run_before=go)


def test_heatmap_no_color(snap_compare, store, monkeypatch):
    """Under NO_COLOR the cursor reads by shape: ▶ at its unit, ▼ over its step, [ ] around its cell."""
    monkeypatch.setenv("NO_COLOR", "1")

    async def go(pilot):
        await settle(pilot)
        await pilot.press("2", "down", "down", "right", "right", "right")
        await settle(pilot)

    assert snap_compare(make_app(store), terminal_size=SIZE, run_before=go)
