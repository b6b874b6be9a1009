"""Where prunelens keeps prepared models and caches (override with PRUNELENS_HOME)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "PRUNELENS_HOME"


def home() -> Path:
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".cache" / "prunelens").expanduser()


def models_dir() -> Path:
    return home() / "models"


# -- output paths: never destroy what the user did not ask to replace ------------------------
CHECKPOINT_MARKER = "prunelens.json"  # every checkpoint prunelens writes has it


def _protected(path: Path) -> str | None:
    """Why ``path`` may never be replaced (the cwd, home, one of their parents, a root), or None."""
    cwd, home = Path.cwd().resolve(), Path.home().expanduser().resolve()
    if path == cwd or path in cwd.parents:
        return "the current directory or one of its parents"
    if path == home or path in home.parents:
        return "your home directory or one of its parents"
    if path == Path(path.anchor):
        return "a filesystem root"
    return None


def checkpoint_files(path: Path) -> list[str] | None:
    """The file names a prunelens checkpoint at ``path`` recorded in its marker (None when it recorded none)."""
    import json

    try:
        info = json.loads((path / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = info.get("files") if isinstance(info, dict) else None
    return [str(f) for f in files] if isinstance(files, list) else None


def guard_output_dir(out: str | Path, *, overwrite: bool, force: bool = False, flag: str = "--out") -> Path:
    """Check that a checkpoint may be written to directory ``out``; the resolved path, or a one-line error.

    A new or empty directory is fine. An existing non-empty one is replaced only when it is a
    prunelens checkpoint (``prunelens.json``) holding nothing but what it recorded and
    ``overwrite`` is set; a directory that is not a checkpoint, or holds other files, only with
    ``force`` as well. The current directory, home, their parents and a root: never.
    """
    from prunelens.errors import PrunelensError

    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise PrunelensError(f"{flag} {out} exists and is not a directory")
    if not path.exists() or not any(path.iterdir()):
        check_writable_dir(path.parent if not path.exists() else path, flag=flag, shown=out)
        return path
    why = _protected(path)
    if why is not None:
        raise PrunelensError(f"{flag} {out} is {why}; refusing to replace it: choose a new directory")
    if (path / CHECKPOINT_MARKER).is_file():
        if not overwrite:
            raise PrunelensError(f"{flag} {out} exists and is not empty: it holds a prunelens checkpoint "
                                 "(use --overwrite to replace it)")
        recorded = checkpoint_files(path)
        foreign = [] if recorded is None else sorted(set(p.name for p in path.iterdir()) - set(recorded))
        if foreign and not force:
            raise PrunelensError(f"{flag} {out} is a prunelens checkpoint but also holds other files "
                                 f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                                 "refusing to delete them (move them, or add --force)")
    elif not force:
        raise PrunelensError(f"{flag} {out} is not empty and is not a prunelens checkpoint (no {CHECKPOINT_MARKER}); "
                             "refusing to replace it: choose a new directory (or add --force to delete its contents)")
    check_writable_dir(path.parent, flag=flag, shown=out)
    return path


def check_writable_dir(directory: Path, *, flag: str, shown: str | Path) -> None:
    """One-line error unless files can be created in ``directory`` (or its nearest existing parent)."""
    from prunelens.errors import PrunelensError

    d = Path(directory)
    while not d.exists() and d != d.parent:
        d = d.parent
    if not d.is_dir():
        raise PrunelensError(f"{flag} {shown}: {d} is not a directory")
    import tempfile

    try:  # really try: os.access says yes to root on a read-only filesystem
        with tempfile.TemporaryFile(dir=d, prefix=".prunelens-write-test-"):
            pass
    except OSError as exc:
        raise PrunelensError(f"{flag} {shown}: cannot write in {d} ({exc.strerror or type(exc).__name__})") from None


def check_writable_file(path: str | Path | None, *, flag: str) -> None:
    """One-line error unless a file can be written at ``path`` (checked before any long work)."""
    from prunelens.errors import PrunelensError

    if path is None:
        return
    p = Path(path).expanduser()
    if p.exists():
        if p.is_dir():
            raise PrunelensError(f"{flag} {path} is a directory, not a file")
        try:
            with open(p, "ab"):
                pass
        except OSError as exc:
            raise PrunelensError(f"{flag} {path}: cannot write it ({exc.strerror or type(exc).__name__})") from None
        return
    check_writable_dir(p.parent if str(p.parent) else Path("."), flag=flag, shown=path)


# -- temporary siblings: named after their process, removed once that process is gone -----------
def temp_prefix(target: Path, what: str = "tmp") -> str:
    """Prefix of a hidden temporary sibling of ``target``: ``.NAME.tmp-PID-`` (mkdtemp adds a suffix)."""
    return f".{Path(target).name}.{what}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(target: Path, *, any_owner: bool = False) -> list[Path]:
    """Delete hidden temporaries of ``target`` left by killed runs (their process is gone); returns them.

    ``any_owner``: delete every temporary of ``target`` (the caller holds ``target``'s lock,
    so none can be in use), including older ones named without a process id.
    """
    import re
    import shutil

    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:tmp|old)-(?:(\d+)-)?")
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    for p in target.parent.iterdir():
        m = pattern.match(p.name)
        if m is None or not p.is_dir():
            continue
        pid = m.group(1)
        if any_owner or (pid is not None and int(pid) != os.getpid() and not _pid_alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
