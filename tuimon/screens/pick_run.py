"""The run picker: shown when several live runs could be watched."""

from __future__ import annotations

import time
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from tuimon_agent.discovery import ConnectionInfo


def _started(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


class PickRun(ModalScreen[ConnectionInfo | None]):
    """A list of live runs (name, id, pid, started); enter picks one, escape picks none.

    Args:
        choices: The live runs, in the order to list them (newest first, as ``discovery.live_runs`` gives them).
    """

    DEFAULT_CSS = """
    PickRun {
        align: center middle;
    }
    PickRun > Vertical {
        width: auto;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: round $primary;
        border-title-style: bold;
        background: $surface;
        padding: 0 1;
    }
    PickRun DataTable { width: auto; height: auto; max-height: 20; }
    PickRun #pick-hint { color: $text-muted; margin-top: 1; width: auto; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, choices: list[ConnectionInfo]) -> None:
        super().__init__()
        self.choices = list(choices)

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = f"{len(self.choices)} live runs"
            yield DataTable(cursor_type="row", zebra_stripes=True)
            yield Static("↑/↓ choose · enter watch · escape quit", id="pick-hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("name", "run id", "pid", "started")
        for i, info in enumerate(self.choices):
            table.add_row(info.name, info.run_id, str(info.pid), _started(info.started), key=str(i))
        table.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.dismiss(self.choices[int(event.row_key.value or 0)])

    def action_cancel(self) -> None:
        """Pick no run."""
        self.dismiss(None)
