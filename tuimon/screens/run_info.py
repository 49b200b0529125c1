"""The run panel as a screen (``i``): what the run said about itself, at any terminal width."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ..state import RunState
from ..widgets import RunInfo


class RunInfoScreen(ModalScreen[None]):
    """The run's id, model, optimizer, device, process, command and run file, in a box over the overview.

    The overview shows the same panel beside the metrics from 120 columns up; below that it has no room for it,
    and ``i`` shows it here. Long values wrap; escape or ``i`` closes it.

    Args:
        state: The run state (its hello).
    """

    DEFAULT_CSS = """
    RunInfoScreen {
        align: center middle;
        background: $background 60%;
    }
    RunInfoScreen > VerticalScroll {
        width: 100;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: round $primary;
        border-title-style: bold;
        background: $surface;
        padding: 0 1;
    }
    RunInfoScreen RunInfo { width: 1fr; }
    RunInfoScreen #run-info-empty { color: $text-muted; text-style: italic; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,i", "close", "Close"),
    ]

    def __init__(self, state: RunState, *, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self._state = state

    def compose(self) -> ComposeResult:
        with VerticalScroll() as box:
            box.border_title = f"run {self._state.name}" if self._state.name else "run"
            box.border_subtitle = "escape to close"
            info = RunInfo(id="run-info", full=True)
            info.update(self._state)
            yield info
            if not info.lines:
                yield Static("the run has not said who it is yet (no hello record)", id="run-info-empty")

    def action_close(self) -> None:
        """Close the panel."""
        self.dismiss(None)
