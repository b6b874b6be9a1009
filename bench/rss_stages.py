"""Where a prunelens command's resident memory grows: RSS sampled every 2 ms, attributed to the code running then.

    python bench/rss_stages.py probe --model DIR --method drop --units mlp --dtype bfloat16 --out S.zarr --quiet

Runs the prunelens CLI in this process (the arguments are the CLI's) while a thread reads the resident set
(``/proc/self/statm``) every 2 ms. Each time the RSS passes its previous maximum, the innermost prunelens frame of
the main thread is the stage charged with the growth. Printed per stage, in the order first reached: the RSS when
the stage first raised the maximum and the highest RSS it reached, then the whole run's ``ru_maxrss``. Run it as
a fresh process (``ru_maxrss`` includes whatever the process that started it had reached: see bench/peak.py).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def stage_of(frame) -> str:
    """The innermost frame in prunelens' own code (``file:function``); else the innermost frame."""
    inner = None
    while frame is not None:
        path = frame.f_code.co_filename
        if inner is None:
            inner = f"{Path(path).name}:{frame.f_code.co_name}"
        if f"{os.sep}prunelens{os.sep}" in path and "rss_stages" not in path:
            rel = path.split(f"{os.sep}prunelens{os.sep}", 1)[1]
            return f"{rel}:{frame.f_code.co_name}"
        frame = frame.f_back
    return f"(outside prunelens) {inner}"


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print("usage: python bench/rss_stages.py PRUNELENS-COMMAND [ARGS...]\n")
        print(__doc__)
        return
    main_id = threading.get_ident()
    stages: dict[str, list[float]] = {}  # stage -> [first time, RSS when first, max RSS]
    done = threading.Event()

    def sample() -> None:
        best, t0 = 0, time.perf_counter()
        while not done.is_set():
            r = rss()
            if r > best:
                best = r
                frame = sys._current_frames().get(main_id)
                key = stage_of(frame) if frame is not None else "(no frame)"
                s = stages.setdefault(key, [time.perf_counter() - t0, r, r])
                s[2] = max(s[2], r)
            time.sleep(0.002)

    sys.setswitchinterval(0.001)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    import prunelens.cli as cli

    code = 0
    try:
        cli.main(sys.argv[1:], standalone_mode=False)
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        done.set()
        th.join()
        print(f"{'t (s)':>7s} {'RSS first':>10s} {'RSS max':>10s}  stage (innermost prunelens frame)", file=sys.stderr)
        for key, (t, first, top) in stages.items():
            print(f"{t:7.1f} {first / 2**30:9.2f}G {top / 2**30:9.2f}G  {key}", file=sys.stderr)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"ru_maxrss {peak / 2**30:.2f} GiB", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
