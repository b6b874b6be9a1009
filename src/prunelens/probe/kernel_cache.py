"""The compiled-kernel cache loads only what this user built: a digest recorded at build time, checked before use.

A kept library (the C kernel's ``.so``, an AOTInductor ``.pt2`` package) is loaded, and its
code run, only when

* it and its digest file ``<name>.sha256`` are regular files (not symlinks) owned by this user and
  writable by no one else, in a folder owned by this user and writable by no one else, and
* the file's sha256 equals the digest recorded when this user built it.

Anything else (a planted or corrupt library, a missing digest) is rebuilt, never opened.
``$PRUNELENS_HOME/kernels`` is created with mode 0700; if it exists but another user owns it, or
others may write to it, kernels are built into a private temporary folder (0700) for this process
instead, with a one-line warning.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import warnings
from pathlib import Path

_PRIVATE: list[Path] = []  # this process's fallback folder, once made


def unsafe(path: Path, *, folder: bool = False) -> str | None:
    """Why ``path`` may not be trusted (another owner, writable by others, not a regular file/folder); None if it may.

    A file is looked at itself (a symlink is refused); a folder through any symlink (its target is judged).
    """
    try:
        st = os.stat(path) if folder else os.lstat(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if folder and not stat.S_ISDIR(st.st_mode):
        return "not a folder"
    if not folder and not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not {os.getuid()}"
    if st.st_mode & 0o022:
        return f"writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def cache_dir() -> Path:
    """The folder kernels are kept in: ``$PRUNELENS_HOME/kernels`` (made 0700) when only this user can write
    to it, else a private temporary folder for this process (and a warning saying why)."""
    from prunelens.paths import home

    kept = Path(home()) / "kernels"
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        reason: str | None = f"cannot be created ({exc.strerror})"
    else:
        reason = unsafe(kept, folder=True)
    if reason is None:
        return kept
    if not _PRIVATE:
        _PRIVATE.append(Path(tempfile.mkdtemp(prefix="prunelens-kernels-")))  # mode 0700
        warnings.warn(f"kernel cache {kept} is {reason}; building kernels into the private {_PRIVATE[0]}",
                      stacklevel=2)
    return _PRIVATE[0]


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def trusted(path: Path) -> bool:
    """Whether ``path`` is a library this user built (owner, modes and the recorded sha256 all agree)."""
    record = digest_path(path)
    if unsafe(path.parent, folder=True) or unsafe(path) or unsafe(record):
        return False
    try:
        return record.read_text().strip() == sha256_of(path)
    except OSError:
        return False


def keep(built: Path, path: Path) -> None:
    """Move the freshly built ``built`` to ``path`` with its digest recorded beside it (both mode 0600 or
    0700, renamed into place: a concurrent reader sees the old pair, the new pair or a mismatch it rebuilds)."""
    os.chmod(built, 0o700)
    record = digest_path(path).with_name(f".{path.name}.{os.getpid()}.sha256.tmp")
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(sha256_of(built) + "\n")
        os.replace(built, path)
        os.replace(record, digest_path(path))
    finally:
        record.unlink(missing_ok=True)


def discard(path: Path) -> None:
    """Remove a kept library and its digest (a build that does not load)."""
    for p in (path, digest_path(path)):
        try:
            p.unlink()
        except OSError:
            pass
