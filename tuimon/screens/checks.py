"""The sanity checks screen: every check with its verdict, and the selected one in full."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from ..state import RunState
from ..widgets import CheckDetails, ChecksTable
from ..widgets.checks_table import count_verdicts, verdict_counts_markup

EMPTY_NOTE = "no sanity checks in this run — call mon.sanity_check(batch, loss_fn) before training, or run `tuimon check`"
"""What the screen says when the run has sent no ``check`` record."""


class ChecksScreen(Screen[None]):
    """The run's sanity checks: a table of checks on top (↑/↓ pick one), the picked check's details below.

    The app calls :meth:`update` from its repaint timer; it does nothing unless a check record arrived. Without
    checks the screen shows :data:`EMPTY_NOTE` instead (the ``-empty`` class). Layout in ``app.tcss``.

    Args:
        state: The run state to show at once (the timer keeps it current after that).
        name: The screen's name.
        id: The screen's id.
        classes: The screen's CSS classes.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
    ]

    def __init__(
        self,
        state: RunState | None = None,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._state = state
        self._checks: dict[str, Mapping[str, Any]] = {}
        self._shown: tuple[Mapping[str, Any], ...] | None = None
        self._run_name: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="checks-title")
        yield ChecksTable(id="checks-table")
        yield CheckDetails(id="check-details")
        yield Static(Content(EMPTY_NOTE), id="checks-empty")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(ChecksTable)
        table.border_title = "checks"
        table.border_subtitle = "↑↓ select · tab details"
        table.focus()
        self.update(self._state if self._state is not None else RunState())

    @property
    def checks(self) -> list[str]:
        """The names of the checks listed, top to bottom."""
        return list(self._checks)

    def update(self, state: RunState) -> None:
        """Show the run's latest check results; cheap when none arrived since the last call.

        Args:
            state: The run state (its :attr:`~tuimon.state.RunState.checks`).
        """
        self._state = state
        payloads = tuple(state.checks.values())
        shown = self._shown
        if (
            shown is not None
            and state.name == self._run_name
            and len(payloads) == len(shown)
            and all(a is b for a, b in zip(payloads, shown, strict=True))
        ):
            return  # RunState replaces a check's payload when a new result arrives, so identity tells
        self._shown, self._run_name = payloads, state.name
        self._checks = dict(state.checks)
        empty = not self._checks
        self.set_class(empty, "-empty")
        counts = verdict_counts_markup(count_verdicts(payloads))
        who = Content(state.name or "this run")
        title = Content.from_markup("[b]sanity checks[/b] · $who", who=who)
        if counts:
            title += Content("  ") + Content.from_markup(counts)
        self.query_one("#checks-title", Static).update(title)
        table = self.query_one(ChecksTable)
        table.update(self._checks.values())
        self._detail(table.selected)

    def _detail(self, name: str | None) -> None:
        self.query_one(CheckDetails).update(self._checks.get(name) if name is not None else None)

    @on(DataTable.RowHighlighted, "ChecksTable")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail(event.row_key.value)

    def action_back(self) -> None:
        """Go back to the overview."""
        self.dismiss(None)
