"""Help: every key binding of every screen, generated from the bindings themselves."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


def _key_label(key: str) -> str:
    return {"question_mark": "?", "enter": "Enter", "escape": "Esc"}.get(key, key)


def binding_rows(groups: list[tuple[str, list]]) -> list[tuple[str, str, str]]:
    """(where, key, what) for every binding in ``groups`` of (name, BINDINGS)."""
    rows = []
    for where, bindings in groups:
        for b in bindings:
            b = b if isinstance(b, Binding) else Binding(*b)
            for key in b.key.split(","):
                rows.append((where, _key_label(key.strip()), b.description or b.action))
    return rows


class HelpScreen(ModalScreen):
    CSS_PATH = "help.tcss"
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close help")]

    def __init__(self, groups: list[tuple[str, list]]) -> None:
        super().__init__()
        self.groups = groups

    def compose(self) -> ComposeResult:
        table = Table("screen", "key", "does", box=None, expand=True, title="prunelens tui — keys (Esc closes)")
        previous = None
        for where, key, what in binding_rows(self.groups + [("help", self.BINDINGS)]):
            table.add_row(where if where != previous else "", key, what)
            previous = where
        with VerticalScroll(id="help-body"):
            yield Static(table, id="help-table")
