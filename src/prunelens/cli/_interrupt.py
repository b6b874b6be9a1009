"""What the ``prunelens`` command says on Ctrl-C: how to resume, only where the command resumes."""

from __future__ import annotations

import click

KEY = "prunelens.resume_hint"


def mark_resumable(hint: str = "rerun the same command to resume") -> None:
    """Declare that the running command resumes when rerun; ``hint`` is printed after Ctrl-C."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[KEY] = hint


def interrupted_message(ctx: click.Context) -> str:
    """``Interrupted; HINT.`` for a command that marked itself resumable, else ``Interrupted.``"""
    hint = ctx.meta.get(KEY)
    return f"Interrupted; {hint}." if hint else "Interrupted."
