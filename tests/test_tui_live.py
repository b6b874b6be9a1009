"""A store that a probe is still writing: the open TUI shows each cell as it lands (no restart) and the
job's progress, with the store writer filling cells between pilot pauses. At 80x24, colour and mono."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from tui_helpers import MONO, SIZE, settle, use_mono

from prunelens_store.schema import VARIABLES
from prunelens_store.writer import StoreWriter, build_template, create_store
from prunelens_tui.app import PrunelensApp
from prunelens_tui.widgets.heatmap import HeatmapGrid

UNITS, LAYERS, KINDS = ["L0", "L0.attn", "L1", "L1.attn"], [0, 0, 1, 1], ["block", "attn", "block", "attn"]
TEMPS, LOCALITIES, SAMPLES, STEPS = [0.7, 1.0], ["local", "propagated"], 2, 3


def running_store(path):
    """An empty store as ``prunelens probe`` creates it before its first cell."""
    ds = build_template(["drop"], UNITS, LAYERS, KINDS, SAMPLES, STEPS, TEMPS, LOCALITIES, ["teacher_forced"],
                        tokens=np.arange(2 * 8).reshape(2, 8), prompt_len=np.array([5, 5]),
                        dense_free_tokens=np.ones((SAMPLES, STEPS), dtype=np.int64), candidates=None,
                        attrs={"model_id": "tiny-llama"})
    create_store(path, ds, {"model_id": "tiny-llama"})
    return path


def cell(writer: StoreWriter, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.random(writer.group[n].shape[2:]).astype(np.float32) for n in VARIABLES
            if n not in ("done", "free_tokens")}


async def write(writer: StoreWriter, u: int, arrays: dict[str, np.ndarray]) -> None:
    """One cell, written off the app's event loop (as the probe's own process does)."""
    await asyncio.to_thread(writer.write_cell, 0, u, arrays, np.zeros((SAMPLES, STEPS), dtype=np.int64), 0)


async def wait_until(pilot, test, timeout: float = 6.0) -> float:
    """Seconds until ``test()`` holds (the TUI's poll runs meanwhile); fails after ``timeout``."""
    start = time.monotonic()
    while not test():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not shown within {timeout} s")
        await pilot.pause(0.1)
    return time.monotonic() - start


def kl_pred_row(arrays) -> np.ndarray:
    """What the heatmap draws for a unit by default: kl_pred, propagated, teacher-forced, T=1, mean over samples."""
    return arrays["kl_pred"][LOCALITIES.index("propagated"), 0, TEMPS.index(1.0)].astype(np.float64).mean(axis=0)


@MONO
async def test_new_cells_and_progress_show_while_the_store_is_written(tmp_path, monkeypatch, mono):
    use_mono(monkeypatch, mono)
    path = running_store(tmp_path / "probe.zarr")
    writer = StoreWriter(path)
    app = PrunelensApp([path], cwd=tmp_path)  # the default poll interval (PrunelensApp.POLL_SECONDS)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.store_path == path and app.sub_title == "probe.zarr · probing: 0/4 cells"
        await pilot.press("2")
        await settle(pilot)
        grid = app.screen.query_one(HeatmapGrid)
        assert np.isnan(grid.values).all()
        await pilot.press("down", "right")
        first = cell(writer, 1)
        await write(writer, 1, first)  # L0.attn
        waited = await wait_until(pilot, lambda: np.isfinite(grid.values[1]).all())
        assert waited < app.POLL_SECONDS + 3.0
        np.testing.assert_allclose(grid.values[1], kl_pred_row(first), rtol=1e-6)
        assert np.isnan(np.delete(grid.values, 1, axis=0)).all()
        assert app.sub_title == "probe.zarr · probing: 1/4 cells"
        assert grid.cursor == (1, 1)  # the cursor stays where it was
        value_line = str(app.screen.query_one("#value").render())
        assert value_line.startswith("L0.attn  step 1")
        await pilot.press("1")  # the Runs row follows too
        await settle(pilot)
        assert app.screen.summaries[0].status == "resumable 1/4"
        details = str(app.screen.query_one("#details").render())
        assert "resumable 1/4" in details and "new cells show as they land" in details
        await pilot.press("2")
        await settle(pilot)
        rest = {u: cell(writer, 10 + u) for u in (0, 2, 3)}
        for u, arrays in rest.items():
            await write(writer, u, arrays)
        await asyncio.to_thread(writer.finalise)
        await wait_until(pilot, lambda: app.progress is not None and app.progress.finished)
        await settle(pilot)
        grid = app.screen.query_one(HeatmapGrid)
        for u, arrays in rest.items():
            np.testing.assert_allclose(grid.values[u], kl_pred_row(arrays), rtol=1e-6)
        assert app.sub_title == "probe.zarr"  # complete: the name alone, and polling stops
        assert app.ds.attrs["complete"] in (True, "true", "True")


def test_store_watch_sees_a_cell_and_the_final_attrs(tmp_path):
    from prunelens_tui import live

    path = running_store(tmp_path / "probe.zarr")
    writer = StoreWriter(path)
    watch = live.StoreWatch(path)
    assert watch.check() is None and live.progress(path) == live.Progress(0, 4, False)
    writer.write_cell(0, 2, cell(writer, 2), np.zeros((SAMPLES, STEPS), dtype=np.int64), 0)
    seen = watch.check()
    assert seen is not None and live.progress(path) == live.Progress(1, 4, False)
    assert watch.check() == seen  # not accepted yet (the read failed, say): still reported
    watch.accept(seen)
    assert watch.check() is None
    for u in (0, 1, 3):
        writer.write_cell(0, u, cell(writer, u), np.zeros((SAMPLES, STEPS), dtype=np.int64), 0)
    writer.finalise()
    assert watch.check() is not None and live.progress(path).finished


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


async def test_a_read_slower_than_the_poll_interval_still_shows_its_cells(tmp_path, monkeypatch):
    """Each read of the store takes 5 poll intervals: the next ticks wait for it instead of replacing it (a
    replaced read's cells would never reach the screen)."""
    from prunelens_tui import backend

    path = running_store(tmp_path / "probe.zarr")
    writer = StoreWriter(path)
    app = PrunelensApp([path], cwd=tmp_path, poll_seconds=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        real_open = backend.open_store

        def slow_open(p, **kwargs):
            time.sleep(0.5)
            return real_open(p, **kwargs)

        monkeypatch.setattr(backend, "open_store", slow_open)
        arrays = cell(writer, 3)
        await write(writer, 2, arrays)  # L1
        grid = app.screen.query_one(HeatmapGrid)
        await wait_until(pilot, lambda: np.isfinite(grid.values[2]).all())
        np.testing.assert_allclose(grid.values[2], kl_pred_row(arrays), rtol=1e-6)
