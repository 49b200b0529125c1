"""The list of metric rows, one per metric the run has logged; its cursor picks the charted metric."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.reactive import reactive

from ..messages import MetricSelected
from ..state import DROPPED_NAMES_COUNTED, METRIC_NAMES_KEPT, RunState
from .metric_row import MetricRow


def dropped_note(dropped: int) -> str:
    """What the metric list says about names it does not show: ``1,234 more metric names not shown (first 256
    kept)``; empty when none were dropped."""
    if not dropped:
        return ""
    at_least = "≥" if dropped >= DROPPED_NAMES_COUNTED else ""
    return f"{at_least}{dropped:,} more metric names not shown (first {METRIC_NAMES_KEPT} kept)"


class MetricList(VerticalScroll, can_focus=True):
    """A scrollable column of :class:`MetricRow` s that grows as metrics appear; ↑/↓ (or k/j) move the selection.

    Rows are added by :meth:`update`, never removed (a new run resets the list with :meth:`clear`). Each time the
    selection changes the list posts :class:`~tuimon.messages.MetricSelected`. The state keeps the first
    :data:`~tuimon.state.METRIC_NAMES_KEPT` names only; the list's border subtitle says how many more were dropped.
    """

    DEFAULT_CSS = """
    MetricList {
        height: auto;
        width: 1fr;
        scrollbar-size-vertical: 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "move(-1)", "Prev metric", show=False),
        Binding("down,j", "move(1)", "Next metric", show=False),
        Binding("home", "jump(0)", "First metric", show=False),
        Binding("end", "jump(-1)", "Last metric", show=False),
    ]

    selected: reactive[str | None] = reactive(None, init=False)
    """The name of the selected metric, ``None`` before any metric has appeared."""

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._rows: dict[str, MetricRow] = {}
        self._dropped_note = ""

    @property
    def names(self) -> list[str]:
        """The metrics listed, top to bottom."""
        return list(self._rows)

    def row(self, metric: str) -> MetricRow | None:
        """The row showing ``metric``, if any."""
        return self._rows.get(metric)

    def update(self, state: RunState) -> None:
        """Add rows for new metrics and refresh every row from the state.

        Args:
            state: The run state.
        """
        new = [n for n in state.metric_names() if n not in self._rows]
        if new:
            rows = [MetricRow(n, classes="-selected" if n == self.selected else None) for n in new]
            self._rows.update(zip(new, rows, strict=True))
            self.mount_all(rows)
        for metric, row in self._rows.items():
            row.update(state.series(metric), state.eval_for(metric) if metric in state.train else None)
        if self.selected is None and self._rows:
            self.selected = next(iter(self._rows))
        note = dropped_note(state.names_dropped)
        if note != self._dropped_note:
            self._dropped_note = self.border_subtitle = note

    def clear(self) -> None:
        """Remove every row (a new run)."""
        self._rows.clear()
        self._dropped_note = self.border_subtitle = ""
        self.remove_children()
        self.selected = None

    def watch_selected(self, old: str | None, new: str | None) -> None:
        if old is not None and (row := self._rows.get(old)) is not None:
            row.remove_class("-selected")
        if new is not None and (row := self._rows.get(new)) is not None:
            row.add_class("-selected")
            if row.is_mounted:
                self.scroll_to_widget(row, animate=False)
        if new is not None:
            self.post_message(MetricSelected(new))

    def on_metric_selected(self, message: MetricSelected) -> None:
        # A click on a row: select it; the list then posts its own MetricSelected for the screen.
        if message.name != self.selected and message.name in self._rows:
            message.stop()
            self.selected = message.name

    def action_move(self, delta: int) -> None:
        """Select the previous (-1) or next (+1) metric."""
        names = self.names
        if not names:
            return
        i = names.index(self.selected) if self.selected in names else 0
        self.selected = names[max(0, min(len(names) - 1, i + delta))]

    def action_jump(self, index: int) -> None:
        """Select the first (0) or last (-1) metric."""
        if self._rows:
            self.selected = self.names[index]
