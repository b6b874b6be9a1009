"""Results of worker threads reach the UI only while their worker is still the current one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.app import App
from textual.worker import get_current_worker


def deliver(app: App, show: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """From a worker thread: run ``show(*args, **kwargs)`` on the UI thread unless the worker was cancelled.

    An ``exclusive`` worker is cancelled (on the UI thread) when a newer one of its group starts, but its
    thread runs on; without this check a slow, older result could land after a newer one and overwrite it
    (two quick ``m`` presses drew the first method's heatmap under the second method's bar)."""
    worker = get_current_worker()

    def apply() -> None:
        if not worker.is_cancelled:
            show(*args, **kwargs)

    app.call_from_thread(apply)
