"""One Rich console factory for every command: never truncates when the output is not a terminal.

On a terminal Rich fits tables to the window (wrapping, and cutting only words longer than
a column). Piped or redirected output (``prunelens models list | cat``, ``make demo > log``)
has no window: Rich would assume 80 columns and cut cells with an ellipsis. Here such a
console is as wide as the content needs, so every cell comes through whole.
"""

from __future__ import annotations

from typing import Any

# wide enough for any table prunelens prints; Rich pads nothing to this width (tables
# are as wide as their content, text lines are not filled), so it costs nothing
PIPE_WIDTH = 10_000


def make_console(*, stderr: bool = False, **kwargs: Any) -> Any:
    """A ``rich.console.Console`` for command output; ``stderr=True`` for messages beside the data."""
    from rich.console import Console

    console = Console(stderr=stderr, **kwargs)
    if not console.is_terminal and "width" not in kwargs:
        console = Console(stderr=stderr, width=PIPE_WIDTH, **kwargs)
    return console
