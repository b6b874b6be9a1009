"""Writing output files: atomically, with the modes the user's umask gives, and ``-`` for stdout.

``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 entries whatever the umask; renamed into
place they would leave plans, YAML and checkpoint directories unreadable to the group
while every other output is 0644/0755. ``atomic_write`` and ``make_temp_dir`` fix the
mode before the rename, so all outputs follow the umask like ``open()`` and ``mkdir`` do.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from prunelens.errors import PrunelensError

STDOUT = "-"
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode a new file gets from ``open()``: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode a new directory gets from ``mkdir``: 0o777 less the umask."""
    return 0o777 & ~current_umask()


def atomic_write(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written), mode per umask."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def make_temp_dir(prefix: str, parent: str | os.PathLike[str]) -> Path:
    """``tempfile.mkdtemp`` in ``parent`` with the mode ``mkdir`` would give (to be renamed into place)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, dir_mode())
    return tmp


def is_stdout(path: str | os.PathLike[str] | None) -> bool:
    return path is not None and str(path) == STDOUT


def write_output(path: str | os.PathLike[str], text: str) -> Path | None:
    """Write ``text`` to a file (atomically), or to standard output when ``path`` is ``-``; returns the file path."""
    if is_stdout(path):
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        return None
    return atomic_write(path, text)


def read_json(path: str | os.PathLike[str], what: str | None = None) -> Any:
    """Parse a JSON file; one-line ``PrunelensError`` (naming ``what`` or the path) if missing, unreadable or
    invalid."""
    name = what or str(path)
    p = Path(path)
    if not p.is_file():
        raise PrunelensError(f"{name}: file not found")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PrunelensError(f"{name}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise PrunelensError(f"{name}: not valid JSON (not UTF-8 text)") from None
    except OSError as exc:
        raise PrunelensError(f"{name}: cannot read ({exc.strerror})") from None


def json_safe(obj: Any) -> Any:
    """JSON-safe: NaN/inf and pandas NA -> None, numpy scalars and arrays -> Python, tuples -> lists."""
    import math

    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is not None and not isinstance(obj, (str, int, float, bool)):
        try:
            import pandas as pd

            if pd.isna(obj):
                return None
        except (ImportError, TypeError, ValueError):
            pass
        return str(obj)
    return obj


def json_text(obj: object) -> str:
    """Strict JSON (no NaN) for ``--json`` outputs, indented, ending in a newline."""
    return json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"


def follow_umask(root: str | os.PathLike[str]) -> None:
    """Give ``root`` and everything under it the modes the umask gives (``save_pretrained`` writes its
    safetensors 0600 through a temporary file; a shared checkpoint should read like any other output)."""
    fmode, dmode = file_mode(), dir_mode()
    root = Path(root)
    os.chmod(root, dmode)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(Path(dirpath) / d, dmode)
        for f in filenames:
            p = Path(dirpath) / f
            if not p.is_symlink():
                os.chmod(p, fmode)


def refuse_stdout_dir(path: str | os.PathLike[str] | None, flag: str) -> None:
    """A directory output cannot go to standard output: one clear error instead of a folder named ``-``."""
    if is_stdout(path):
        raise PrunelensError(f"{flag} names a directory; '-' (standard output) only works for file outputs")
