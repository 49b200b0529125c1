"""The command history: every live command of the run, its outcome and the step it took effect at.

Built from the run state's :class:`~tuimon.control.CommandLog`, which learns from ``command`` and ``ack`` records
(stream or run file) as well as this viewer's own replies, so it is the same live, on a second viewer and in
``tuimon replay``.
"""

from __future__ import annotations

import time
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ..control import TrackedCommand, describe
from ..state import RunState

_STATUS_STYLE = {
    "applied": "green",
    "rejected": "red",
    "no answer": "red",
    "overwritten": "red",
    "ignored": "red",
    "queued": "yellow",
    "pending": "yellow",
}


def history_lines(entries: list[TrackedCommand]) -> Text:
    """The history as text, newest first: time, status, and what happened."""
    text = Text(no_wrap=True, overflow="ellipsis", end="")
    if not entries:
        text.append("no commands sent to this run", style="italic")
        return text
    for i, cmd in enumerate(reversed(entries)):
        when = time.strftime("%H:%M:%S", time.localtime(cmd.ts)) if cmd.ts else "--:--:--"
        text.append(f"{when} ", style="dim")
        text.append(f"{cmd.status:<11} ", style=_STATUS_STYLE.get(cmd.status, ""))
        text.append(describe(cmd))
        if i < len(entries) - 1:
            text.append("\n")
    return text


class CommandHistoryScreen(ModalScreen[None]):
    """Every command of the run, newest first; ``h`` or escape closes it. The app calls :meth:`update`.

    Args:
        state: The run state.
    """

    DEFAULT_CSS = """
    CommandHistoryScreen {
        align: center middle;
        background: $background 60%;
    }
    CommandHistoryScreen > VerticalScroll {
        width: 90%;
        max-width: 120;
        height: auto;
        max-height: 90%;
        border: round $primary;
        border-title-style: bold;
        border-subtitle-color: $text-muted;
        background: $surface;
        padding: 0 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,h", "close", "Close")]

    def __init__(self, state: RunState) -> None:
        super().__init__()
        self._state = state
        self._version = -1

    def compose(self) -> ComposeResult:
        with VerticalScroll() as box:
            box.border_title = "commands"
            box.border_subtitle = "h or escape to close"
            yield Static("", id="history")

    def on_mount(self) -> None:
        self.update(self._state)

    @property
    def text(self) -> str:
        """What the screen shows, as plain text."""
        return history_lines(self._state.commands.entries()).plain

    def update(self, state: RunState) -> None:
        """Show the run's commands (repaints only when they changed)."""
        self._state = state
        log = state.commands
        if log.version == self._version:
            return
        self._version = log.version
        self.query_one("#history", Static).update(history_lines(log.entries()))

    def action_close(self) -> None:
        """Close the history."""
        self.dismiss(None)
