"""Run a command in a fresh process under the heavy-run lock; report its wall time and peak RSS.

The lock (``flock`` on /tmp/prunelens-heavy.lock, the same lock ``flock(1)`` takes) keeps two big runs from
overlapping on a shared machine. The peak is the child's ``ru_maxrss`` from ``wait4`` (the largest resident set
of the process and of every descendant it waited for), so each measured run is its own process.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

LOCK = "/tmp/prunelens-heavy.lock"


@dataclass
class Measured:
    returncode: int
    seconds: float
    peak_bytes: int
    output: str


@contextmanager
def heavy_lock(path: str = LOCK) -> Iterator[None]:
    """Hold the shared heavy-run lock (blocks while another big run holds it); a no-op under a caller that holds
    it already and says so with ``PRUNELENS_HEAVY_LOCK_HELD=1`` (``flock LOCK env PRUNELENS_HEAVY_LOCK_HELD=1 ...``)."""
    if os.environ.get("PRUNELENS_HEAVY_LOCK_HELD") == "1":
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None, lock: bool = True) -> Measured:
    """Run ``cmd`` (under the heavy lock unless ``lock`` is False); wall seconds and peak RSS in bytes."""
    ctx = heavy_lock() if lock else nullcontext()
    with ctx:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})})
        assert proc.stdout is not None
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
    return Measured(proc.returncode, seconds, usage.ru_maxrss * 1024, output)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
