"""Rank & plan: the data screens' method, kind, temperature, locality and timing, plus strategy and budget;
rank in a worker; review; export."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, ProgressBar, Select, Static

from prunelens.errors import PrunelensError
from prunelens.plan.document import Plan
from prunelens.safe_text import clean, esc

from .. import backend
from .. import selection as S
from ..widgets.scale import fmt
from ..workers import deliver

RESULT_COLUMNS = (("#", "rank"), ("unit", "unit"), ("score", "score"), ("kl_pred", "kl_pred"), ("kl", "kl"),
                  ("1-cos p", "cos_p"), ("plan", "chosen"))
SHARED = ("method", "kind", "temperature", "locality", "timing")  # the Selects that mirror the data screens


@dataclass(frozen=True)
class Choices:
    method: str
    by: str
    kind: str | None  # None: every kind
    temperature: float
    budget: str
    locality: str
    timing: str

    def as_kwargs(self) -> dict[str, Any]:
        return dict(method=self.method, kind=self.kind, temperature=self.temperature, by=self.by,
                    locality=self.locality, timing=self.timing)

    def label(self) -> str:
        """Every choice, named: what the status line and the export message say."""
        return (f"{self.method} · {self.by} · {self.kind or 'all kinds'} · T={self.temperature:g} · "
                f"{self.locality} · {self.timing} · budget {self.budget}")


class PlanScreen(Screen):
    CSS_PATH = "plan.tcss"
    BINDINGS = [Binding("r", "rank", "Rank"), Binding("e", "export", "Export"),
                Binding("ctrl+r", "rank", "Rank", show=False), Binding("ctrl+e", "export", "Export", show=False)]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.plan: Plan | None = None
        self.planned: Choices | None = None
        self._store_id: int | None = None
        self._options: dict[str, list[tuple[str, Any]]] = {}
        self._store_path = None  # the store the ranking shown was made from
        self._loading = False  # the strategies are being listed (first visit: imports torch)
        self._rank_queued = False  # `r` pressed meanwhile: rank as soon as they are there

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="row-method"):
            yield Select([], prompt="method", id="method", allow_blank=True)
            yield Select([], prompt="strategy", id="by", allow_blank=True)
        with Horizontal(id="row-choices"):
            yield Select([], prompt="kind", id="kind", allow_blank=True)
            yield Select([], prompt="T", id="temperature", allow_blank=True)
            yield Select([], prompt="locality", id="locality", allow_blank=True)
            yield Select([], prompt="timing", id="timing", allow_blank=True)
        with Horizontal(id="actions"):
            yield Input("2", placeholder="budget: units (2) or fraction (0.25)", id="budget")
            yield Input("plan.json", placeholder="export path", id="path")
            yield Button("Rank", id="rank", variant="primary")
            yield Button("Export", id="export")
        with Horizontal(id="status-row"):
            yield ProgressBar(total=2, show_eta=False, show_percentage=False, id="progress")
            yield Static("choose, then Rank (r)", id="status")
        yield DataTable(id="ranking", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label, key in RESULT_COLUMNS:
            table.add_column(label, key=key)

    def on_screen_resume(self) -> None:
        ds = self.app.ds
        if ds is None:
            self._status("no store open: press 1 for Runs and Enter on a store", "yellow")
            return
        if id(ds) != self._store_id:
            self._new_store(ds)
        self._follow(self.app.selection)

    def reload(self, force: bool = False) -> None:
        """The app's hook when the open store changes or a probe adds cells: follow it."""
        self.on_screen_resume()

    def _new_store(self, ds) -> None:
        first = self._store_id is None
        self._store_id = id(ds)
        if self.app.store_path != self._store_path:  # another store (not the same one with new cells)
            self._store_path = self.app.store_path
            self.plan = self.planned = None
            self.query_one(DataTable).clear()
        for name in SHARED:
            options = [(Text(clean(S.option_label(name, v))), v) for v in S.choices(ds, name)]  # Text: never markup
            if options != self._options.get(name):  # the same store reopened (new cells): the boxes stay as they are
                self._options[name] = options
                self.query_one(f"#{name}", Select).set_options(options)
        if first:
            self._status("loading the ranking strategies…", "dim")
            self._loading = True
            self._warm_up()

    def _follow(self, sel: S.Selection | None) -> None:
        """Set the shared Selects to the data screens' selection; a plan of other choices is dropped."""
        if sel is None:
            return
        for name in SHARED:
            box = self.query_one(f"#{name}", Select)
            if box.value != getattr(sel, name):
                box.value = getattr(sel, name)
        self._check_stale()

    def on_select_changed(self, event: Select.Changed) -> None:
        """A shared Select changed here: the data screens follow it, and a plan of other choices is dropped."""
        name = event.select.id
        sel = self.app.selection
        if name in SHARED and sel is not None and event.value is not Select.NULL and event.value != getattr(sel, name):
            self.app.selection = replace(sel, **{name: event.value})
        self._check_stale()

    def _check_stale(self) -> None:
        try:
            current = self.choices()
        except PrunelensError:
            return
        if self.plan is not None and self.planned is not None and current != self.planned:
            self.plan = self.planned = None
            self.query_one(DataTable).clear()
        if self.plan is None and not self._loading and not self._rank_queued:
            self._status(f"{current.label()}: r ranks")

    @work(thread=True, group="warm")
    def _warm_up(self) -> None:
        """List the strategies (this imports the planning code: torch, plugins) off the UI thread."""
        try:
            strategies = backend.ranker_choices()  # loads the plugins, so the first ranking starts at once
        except Exception as exc:
            self.app.call_from_thread(self._warm_up_failed, str(exc))
            return
        self.app.call_from_thread(self._set_strategies, strategies)

    def _warm_up_failed(self, message: str) -> None:
        self._loading = self._rank_queued = False
        self._status(message, "red")

    def _set_strategies(self, strategies: list[tuple[str, str]]) -> None:
        by = self.query_one("#by", Select)
        by.set_options([(Text(clean(name)), name) for name, _ in strategies])
        if strategies:
            by.value = "kl_pred" if any(n == "kl_pred" for n, _ in strategies) else strategies[0][0]
        self._loading = False
        if self._rank_queued:
            self._rank_queued = False
            self.action_rank()
        elif self.plan is None:
            self._check_stale()

    def _status(self, message: str, style: str = "") -> None:
        self.query_one("#status", Static).update(Text(clean(message), style=style))

    def choices(self) -> Choices:
        values = {}
        for name in ("method", "by", *SHARED[1:]):
            value = self.query_one(f"#{name}", Select).value
            if value is Select.NULL:
                raise PrunelensError(f"choose a {name if name != 'by' else 'strategy'} first")
            values[name] = value
        kind = None if values["kind"] == "all" else str(values["kind"])
        return Choices(str(values["method"]), str(values["by"]), kind, float(values["temperature"]),
                       self.query_one("#budget", Input).value.strip(), str(values["locality"]),
                       str(values["timing"]))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"rank": self.action_rank, "export": self.action_export}[event.button.id]()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "budget":  # a plan of another budget is dropped too
            self._check_stale()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        (self.action_rank if event.input.id == "budget" else self.action_export)()

    def action_rank(self) -> None:
        if self.app.ds is None:
            self._status("no store open: press 1 for Runs and Enter on a store", "yellow")
            return
        if self._loading:
            self._rank_queued = True
            self._status("loading the ranking strategies… the ranking starts when they are ready", "bold")
            return
        try:
            choices = self.choices()
        except PrunelensError as exc:
            self._status(str(exc), "red")
            return
        self.query_one(ProgressBar).update(progress=0)
        self._status(f"ranking: {choices.label()}…", "bold")
        self._rank(self.app.ds, choices, backend.store_path_of(self.app.store_path))

    @work(thread=True, exclusive=True, group="rank")
    def _rank(self, ds, choices: Choices, store_path: str) -> None:
        call = partial(deliver, self.app)  # a newer ranking (r again) replaces this one's results
        try:
            df = backend.rank_units(ds, **choices.as_kwargs())
            call(self.query_one(ProgressBar).advance, 1)
            plan = backend.plan_from_store(ds, df, **choices.as_kwargs(), budget=choices.budget, store_path=store_path)
            call(self.query_one(ProgressBar).advance, 1)
        except Exception as exc:  # shown, never raised into the UI
            call(self._status, str(exc) if isinstance(exc, PrunelensError) else f"{type(exc).__name__}: {exc}", "red")
            return
        call(self._show_ranking, df, plan, choices)

    def _show_ranking(self, df, plan: Plan, choices: Choices) -> None:
        self.plan, self.planned = plan, choices
        chosen = set(plan.unit_names)
        table = self.query_one(DataTable)
        table.clear()
        for row in df.itertuples(index=False):
            mark = Text("✓ plan", style="bold green") if row.unit in chosen else Text("")
            rank = "" if row.rank is None or str(row.rank) == "<NA>" else str(row.rank)
            table.add_row(rank, Text(clean(row.unit)), fmt(row.score), fmt(row.kl_pred), fmt(row.kl),
                          fmt(row.cos_dev_probability), mark)
        self._status(f"plan {', '.join(plan.unit_names)} ({choices.label()}); e exports", "green")

    def action_export(self) -> None:
        if self.plan is None:
            self._status("rank first (r), then export", "yellow")
            return
        path = self.query_one("#path", Input).value.strip()
        try:
            written = backend.save_plan(self.plan, path)
        except Exception as exc:
            self._status(f"export failed: {exc}", "red")
            return
        message = f"wrote {' and '.join(str(p) for p in written)} ({plan_label(self.plan)} plan)"
        self._status(message, "bold green")
        self.app.notify(esc(message))


def plan_label(plan: Plan) -> str:
    """The plan's method (its units' methods for a mixed plan)."""
    specs = list(dict.fromkeys(spec for _, spec in plan.unit_methods()))
    return " + ".join(specs) if specs else str(plan.method)
