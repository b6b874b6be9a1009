"""Run a command in a fresh process under the heavy-run lock; report its wall time and peak RSS.

The lock (``flock`` on /tmp/prunelens-heavy.lock, the same lock ``flock(1)`` takes) keeps two big runs from
overlapping on a shared machine. The peak is the command's ``ru_maxrss`` from ``wait4`` (the largest resident set
of the process and of every descendant it waited for), so each measured run is its own process.

Linux starts an exec'd process's ``ru_maxrss`` at the peak RSS of the process it was forked from (``exec`` folds
the old address space's high-water mark into it). A benchmark that built a 4 GB tensor before measuring a child
would see at least that in the child's peak. So the command is started by a small launcher (a fresh
interpreter, ~10 MB): the launcher inherits the caller's high-water mark, the command inherits only the
launcher's, and the launcher hands back the command's ``ru_maxrss`` and exit status.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

LOCK = "/tmp/prunelens-heavy.lock"
# argv: RESULT_FILE CMD...; runs CMD, writes its ru_maxrss (KiB) to RESULT_FILE, exits with its status
LAUNCHER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


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
    """Run ``cmd`` (under the heavy lock unless ``lock`` is False); wall seconds and peak RSS in bytes (the
    command's own, not the caller's: see the module docstring)."""
    ctx = heavy_lock() if lock else nullcontext()
    fd, result = tempfile.mkstemp(prefix="peak-", suffix=".txt")
    os.close(fd)
    try:
        with ctx:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", LAUNCHER, result, *cmd], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
            seconds = time.perf_counter() - t0
        text = open(result).read().strip()
    finally:
        os.unlink(result)
    peak = int(text) * 1024 if text else 0  # empty: the launcher itself failed (its output says why)
    return Measured(proc.returncode, seconds, peak, proc.stdout)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
