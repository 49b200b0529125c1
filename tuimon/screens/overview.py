"""The overview screen: run header, notice line, metric rows and the selected metric's chart."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Horizontal, Vertical
from textual.events import Resize
from textual.geometry import Size
from textual.screen import Screen
from textual.widgets import Footer, Static

from ..messages import MetricSelected
from ..state import RunState
from ..widgets import MetricChart, MetricList, NoticeBar, RunHeader, RunInfo
from ..widgets.checks_table import count_verdicts, verdict_counts_markup

MIN_WIDTH = 60
MIN_HEIGHT = 15


class OverviewScreen(Screen[None]):
    """Everything about one run on one screen; the app calls :meth:`update` from its repaint timer.

    Below :data:`MIN_WIDTH` × :data:`MIN_HEIGHT` it shows only a centred "terminal too small" note (the
    ``-too-small`` class), and before the first metric a "waiting for …" note (the ``-empty`` class). Narrow
    terminals stack the metric rows above the chart (the ``-narrow`` breakpoint class; layout in ``app.tcss``).
    """

    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]] | None] = [(0, "-narrow"), (120, "-wide")]

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "toggle_smoothing", "Smooth"),
        Binding("l", "toggle_log", "Log y"),
        Binding("up,k", "move(-1)", "Metric ↑", show=False),
        Binding("down,j", "move(1)", "Metric ↓", show=False),
    ]

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._state: RunState | None = None
        self._check_counts: dict[str, int] = {}

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        with Horizontal(id="notice-line"):
            yield NoticeBar(id="notice")
            yield Static("", id="checks-badge")  # sanity checks: shown only when the run has some
        with Container(id="body"):
            with Vertical(id="side"):
                yield MetricList(id="metrics")
                yield RunInfo(id="info")
            yield MetricChart(id="chart")
        yield Static("waiting…", id="waiting")
        yield Static("", id="too-small")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(MetricList).border_title = "metrics"
        self.query_one(RunInfo).border_title = "run"
        self.query_one(MetricList).focus()
        self._check_size(self.size)

    def on_resize(self, event: Resize) -> None:
        self._check_size(event.size)

    def _check_size(self, size: Size) -> None:
        small = size.width < MIN_WIDTH or size.height < MIN_HEIGHT
        self.set_class(small, "-too-small")
        if small:
            self.query_one("#too-small", Static).update(
                f"terminal too small: need at least {MIN_WIDTH}×{MIN_HEIGHT}, have {size.width}×{size.height}"
            )

    def update(self, state: RunState, *, status: str, label: str, notice: str | None) -> None:
        """Show the run's latest state.

        Args:
            state: The run state.
            status: The source's connection state.
            label: What to call the run before its hello arrives.
            notice: The source's latest note, if any.
        """
        self._state = state
        self.query_one(RunHeader).update(state, status=status, label=label)
        run_file = state.hello.get("run_file")
        self.query_one(NoticeBar).update(
            notice,
            state.events[-1] if state.events else None,
            run_file=run_file if isinstance(run_file, str) else None,
        )
        self._show_check_counts(state)
        metrics = self.query_one(MetricList)
        metrics.update(state)
        self.query_one(RunInfo).update(state)
        empty = not metrics.names
        self.set_class(empty, "-empty")
        if empty:
            who = state.name or label
            note = {
                "loading": f"loading {who}…",
                "replay": f"{who} has no metrics",
                "ended": f"{who} ended with no metrics",
            }
            self.query_one("#waiting", Static).update(note.get(status, f"waiting for {who}…"))
        self._chart(metrics.selected)

    def _show_check_counts(self, state: RunState) -> None:
        """The notice line's right end: ``checks ✓5 ✗1 (c)``, when the run has sent sanity checks."""
        counts = count_verdicts(state.checks.values())
        if counts == self._check_counts:
            return
        self._check_counts = counts
        self.set_class(bool(state.checks), "-checks")
        badge = self.query_one("#checks-badge", Static)
        badge.update(f"[$text-muted]checks[/] {verdict_counts_markup(counts)} [$text-muted](c)[/]")

    def clear(self) -> None:
        """Forget the metrics shown (a new run); the next :meth:`update` fills the screen again."""
        self.query_one(MetricList).clear()
        self.query_one(MetricChart).update(None, None)

    def _chart(self, metric: str | None) -> None:
        state = self._state
        chart = self.query_one(MetricChart)
        if state is None or metric is None:
            chart.update(None, None)
            return
        ev = state.eval_for(metric) if metric in state.train else None
        chart.update(metric, state.series(metric), ev)

    @on(MetricSelected)
    def _selected(self, message: MetricSelected) -> None:
        self._chart(message.name)

    def action_toggle_smoothing(self) -> None:
        """Turn the chart's EMA smoothing on or off."""
        chart = self.query_one(MetricChart)
        chart.smoothing = not chart.smoothing

    def action_toggle_log(self) -> None:
        """Turn the chart's log y axis on or off."""
        chart = self.query_one(MetricChart)
        chart.log_y = not chart.log_y

    def action_move(self, delta: int) -> None:
        """Select the previous or next metric, whatever has focus."""
        self.query_one(MetricList).action_move(delta)
