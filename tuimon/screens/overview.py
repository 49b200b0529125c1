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

from ..messages import AlertChosen, MetricSelected
from ..state import RunState
from ..widgets import AlertPanel, MetricChart, MetricList, NoticeBar, RunHeader, RunInfo
from ..widgets.checks_table import count_verdicts, verdict_counts_markup
from .alert_detail import AlertDetail, AlertJump
from .layers import LayersScreen

MIN_WIDTH = 60
MIN_HEIGHT = 15
ALERT_LIST_HEIGHT = 28
"""From this terminal height up, the alert panel lists the active alerts; below it, it is a one-line badge."""


class OverviewScreen(Screen[None]):
    """Everything about one run on one screen; the app calls :meth:`update` from its repaint timer.

    Below :data:`MIN_WIDTH` × :data:`MIN_HEIGHT` it shows only a centred "terminal too small" note (the
    ``-too-small`` class), and before the first metric a "waiting for …" note (the ``-empty`` class). Narrow
    terminals stack the metric rows above the chart (the ``-narrow`` breakpoint class; layout in ``app.tcss``) and
    leave out the run panel, which ``i`` shows at any width (:class:`~tuimon.screens.run_info.RunInfoScreen`). While
    the history loads (status ``loading``) the body stays hidden behind a "loading …" note.
    """

    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]] | None] = [(0, "-narrow"), (120, "-wide")]

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("m", "toggle_smoothing", "Smooth"),
        Binding("y", "toggle_log", "Log y"),
        Binding("up,k", "move(-1)", "Metric ↑", show=False),
        Binding("down,j", "move(1)", "Metric ↓", show=False),
        Binding("A", "alerts", "Alerts"),
        Binding("i", "run_info", "Run"),
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
        yield AlertPanel(id="alerts")
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
        panel = self.query_one(AlertPanel)
        panel.compact = size.height < ALERT_LIST_HEIGHT
        panel.max_rows = 3 if size.height < 40 else 6
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
        self.query_one(AlertPanel).update(state.alerts)
        metrics = self.query_one(MetricList)
        metrics.update(state)
        self.query_one(RunInfo).update(state)
        empty = (
            not metrics.names or status == "loading"
        )  # a half-loaded history is not the run: say "loading"
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
        """The notice line's right end: ``checks ✓5 ✗1 (C)``, when the run has sent sanity checks."""
        counts = count_verdicts(state.checks.values())
        if counts == self._check_counts:
            return
        self._check_counts = counts
        self.set_class(bool(state.checks), "-checks")
        badge = self.query_one("#checks-badge", Static)
        badge.update(f"[$text-muted]checks[/] {verdict_counts_markup(counts)} [$text-muted](C)[/]")

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
        chart.update(metric, state.series(metric), ev, markers=state.markers)

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

    def action_run_info(self) -> None:
        """Show the run panel (id, model, optimizer, device, process, command) over the overview, at any width."""
        from .run_info import RunInfoScreen

        self.app.push_screen(RunInfoScreen(self._state or RunState()))

    # -- alerts (widgets/alert_panel.py, screens/alert_detail.py) --

    def action_alerts(self) -> None:
        """Focus the alert panel (or give the focus back to the metrics); open the alerts when it is a badge."""
        panel = self.query_one(AlertPanel)
        if panel.has_focus:
            self.query_one(MetricList).focus()
        elif panel.compact or not panel.alerts:
            self.open_alert(None)
        else:
            panel.focus()

    @on(AlertChosen)
    def _alert_chosen(self, message: AlertChosen) -> None:
        self.open_alert(message.alert_id)

    def open_alert(self, alert_id: str | None) -> None:
        """Open the alert detail screen at ``alert_id`` (``None``: the most severe active alert, else the history).

        Args:
            alert_id: The alert to show first.
        """
        state = self._state or RunState()
        if not len(state.alerts) and not state.alerts.history:
            self.notify("no alerts: the diagnosis rules have found nothing wrong", timeout=3)
            return
        self.app.push_screen(AlertDetail(state, alert_id), self._alert_jump)

    def _alert_jump(self, jump: AlertJump | None) -> None:
        """Go where the detail screen asked: the chart at the onset, or the layers heatmap at the layer."""
        if jump is None:
            return
        state = self._state or RunState()
        if jump.target == "layers":
            layers = LayersScreen(state)
            self.app.push_screen(layers)
            layers.show_layer(jump.name or "", jump.step, jump.stat)
            return
        metrics = self.query_one(MetricList)
        name = jump.name
        if name is not None and name not in metrics.names:
            # An eval metric is charted with its train twin: find the train name it pairs with.
            series = state.series(name)
            name = next(
                (n for n in metrics.names if series is not None and state.eval_for(n) is series), None
            )
        if name is not None and name in metrics.names:
            metrics.selected = name
        chart = self.query_one(MetricChart)
        self._chart(metrics.selected)
        chart.mark_step(metrics.selected, jump.step)
