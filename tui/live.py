"""Watch a store that a probe is still writing: a cheap change check, then the job's progress.

The writer creates one ``done`` chunk file per finished (method, unit) cell, so the
modification times of the directories under ``done/`` (and of the root ``zarr.json``,
rewritten when the probe finalises) change exactly when a cell lands. Checking them costs a
few ``stat`` calls; the ``done`` mask is read only after they changed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Progress:
    """A store's cells done out of all, and whether its probe marked it complete."""

    done: int
    cells: int
    complete: bool

    @property
    def finished(self) -> bool:
        return self.complete and self.done == self.cells

    def label(self) -> str:
        state = "complete" if self.finished else "probing:"
        return f"{state} {self.done}/{self.cells} cells"


def signature(path: str | Path) -> tuple:
    """What changes when a cell is written or the store is finalised (stat calls only)."""
    path = Path(path)
    stamps: list[tuple[str, int]] = []
    for name in ("zarr.json", "done"):
        try:
            stamps.append((name, (path / name).stat().st_mtime_ns))
        except OSError:
            stamps.append((name, -1))
    for root, dirs, _files in os.walk(path / "done"):
        for d in dirs:
            try:
                stamps.append((os.path.join(root, d), os.stat(os.path.join(root, d)).st_mtime_ns))
            except OSError:
                pass
    return tuple(sorted(stamps))


def progress(path: str | Path) -> Progress:
    """The store's ``done`` mask counted and its ``complete`` attr, read from disk (not from an open dataset)."""
    import zarr

    from prunelens_store.zarr_warnings import quiet

    path = Path(path)
    with quiet():
        done = np.asarray(zarr.open_array(str(path / "done"), mode="r")[:], dtype=bool)
    attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    complete = attrs.get("complete") is True or str(attrs.get("complete", "")).lower() in ("true", "1")
    return Progress(int(done.sum()), int(done.size), complete)


class StoreWatch:
    """``check()`` gives the store's new signature when it changed since the last ``accept()``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._seen = signature(self.path)

    def check(self) -> tuple | None:
        now = signature(self.path)
        return None if now == self._seen else now

    def accept(self, seen: tuple) -> None:
        """The change ``seen`` is shown (a read that failed half-way leaves it to be tried again)."""
        self._seen = seen
