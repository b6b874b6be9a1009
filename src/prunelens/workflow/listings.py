"""Tables that list what is installed: ranking strategies, evaluation tasks, plugins, bundled models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prunelens.safe_text import esc

if TYPE_CHECKING:
    from rich.table import Table


def _defaults(cls: Any) -> str:
    return ", ".join(f"{k}={p.default}" for k, p in cls.params.items())


def strategies_table(registry: dict[str, tuple[str, Any]]) -> Table:
    """``rank --list-strategies``: name, what it needs, plugin, parameters, description."""
    from rich.table import Table

    t = Table("strategy", "needs", "plugin", "parameters (default)", "description")
    for name, (owner, cls) in sorted(registry.items()):
        t.add_row(name, cls.needs, owner, _defaults(cls) or "-", cls.description)
    return t


def tasks_table(registry: dict[str, tuple[str, Any]]) -> Table:
    """``eval --list``: name, plugin, parameters, description (and whether it needs ``--reference``)."""
    from rich.table import Table

    table = Table("task", "plugin", "parameters (default)", "description")
    for name, (owner, cls) in sorted(registry.items()):
        needs = " [needs --reference]" if cls.needs_reference else ""
        table.add_row(name, owner, _defaults(cls), cls.description + needs)
    return table


def plugins_table(infos: list[Any]) -> Table:
    """``prunelens plugins``: name, version, source, hooks and what each plugin registers (or its error)."""
    from rich.table import Table

    table = Table("plugin", "version", "source", "hooks", "registers")
    for i in infos:
        regs = "; ".join(f"{k}: {', '.join(v)}" for k, v in
                         (("methods", i.methods), ("architectures", i.architectures), ("tasks", i.tasks),
                          ("rankers", i.rankers), ("allocators", i.allocators)) if v)
        # plugin strings are escaped: an error text like "[/0]" must print, not be parsed as markup
        table.add_row(esc(i.name), esc(i.version or "-"), esc(i.source), esc(", ".join(i.hooks)),
                      esc(regs) if not i.error else f"[red]error: {esc(i.error)}[/red]")
    return table


def models_table(rows: list[dict]) -> Table:
    """``prunelens models list``: alias, whether prepared, path, description."""
    from rich.table import Table

    table = Table("alias", "prepared", "path", "description")
    for r in rows:
        table.add_row(r["alias"], "yes" if r["prepared"] else "no", r["path"], r["description"])
    return table
