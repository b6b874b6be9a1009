"""Shell completion (click's) for method, ranker and task names.

Enable it with ``eval "$(_PRUNELENS_COMPLETE=bash_source prunelens)"`` (zsh: ``zsh_source``,
fish: ``fish_source``); see README "Shell completion". The names come from the plugin
registries, so a third-party plugin's methods, rankers and tasks complete too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from click.shell_completion import CompletionItem


def _names(registry: Callable[[], dict[str, tuple[str, Any]]]) -> dict[str, str]:
    try:
        return {name: getattr(cls, "description", "") or "" for name, (_, cls) in registry().items()}
    except Exception:  # a broken plugin must not break the user's shell
        return {}


def _complete(names: dict[str, str], incomplete: str, *, listed: bool = False) -> list[CompletionItem]:
    """Names starting with ``incomplete``; ``listed``: complete the last item of a comma-separated list."""
    head, item = "", incomplete
    if listed and "," in incomplete:
        head, item = incomplete.rsplit(",", 1)
        head += ","
    if ":" in item:  # parameters follow; nothing to offer
        return []
    return [CompletionItem(head + n, help=d.split(". ")[0][:80])
            for n, d in sorted(names.items()) if n.startswith(item)]


def complete_method(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
    from prunelens.compression.methods import method_registry

    return _complete(_names(method_registry), incomplete)


def complete_ranker(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
    from prunelens.plan.ranking import ranker_registry

    return _complete(_names(ranker_registry), incomplete)


def complete_tasks(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
    from prunelens.evaluation.task_runner import task_registry

    return _complete(_names(task_registry), incomplete, listed=True)
