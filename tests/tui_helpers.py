"""Shared helpers of the TUI pilot tests: settle the app, read the screen as plain text."""

from __future__ import annotations

import os

import pytest

SIZE = (80, 24)
MONO = pytest.mark.parametrize("mono", [False, True], ids=["colour", "mono"])


async def settle(pilot) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def screen_text(app) -> list[str]:
    """The screen as the terminal shows it, one string per row (no styles)."""
    from rich.console import Console

    console = Console(width=app.size.width, record=True, file=open(os.devnull, "w"), color_system=None)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text().splitlines()


def use_mono(monkeypatch, mono: bool) -> None:
    """``NO_COLOR=1`` for a monochrome run (textual reads it when the app is made)."""
    if mono:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
