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
    """A ``rich.console.Console`` for command output; ``stderr=True`` for messages beside the data.

    Piped, a table's title is printed as its own line before the table: Rich would wrap it at
    the table's width and pad every piece with spaces.
    """
    from rich.console import Console

    console = Console(stderr=stderr, **kwargs)
    if not console.is_terminal and "width" not in kwargs:
        console = _pipe_console_class()(stderr=stderr, width=PIPE_WIDTH, **kwargs)
    return console


def _pipe_console_class() -> type:
    import copy

    from rich.console import Console
    from rich.table import Table

    class PipeConsole(Console):
        def print(self, *objects: Any, **kwargs: Any) -> None:
            if not any(isinstance(obj, Table) and obj.title for obj in objects):
                super().print(*objects, **kwargs)
                return
            for obj in objects:
                if isinstance(obj, Table) and obj.title:
                    untitled = copy.copy(obj)
                    untitled.title = None
                    super().print(obj.title, **kwargs)
                    obj = untitled
                super().print(obj, **kwargs)

    return PipeConsole


def silence_library_progress() -> None:
    """No progress bars from transformers ("Loading weights") or the Hugging Face hub (``--quiet``)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:  # pragma: no cover - the hub ships with transformers
        return
    disable_progress_bars()
