"""The overview's alert panel: the active alerts, most severe first, or a one-line badge on small terminals."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.content import Content
from textual.events import Click
from textual.reactive import reactive
from textual.widget import Widget

from ..alerts import Alert, AlertState
from ..messages import AlertActionRequested, AlertChosen

SEVERITY_STYLE: dict[str, str] = {
    "critical": "bold $text-error",
    "warning": "bold $text-warning",
    "info": "$text-primary",
}
"""The style of each severity's glyph and name."""
LAYER_WIDTH = 18
"""Columns kept for the layer (longer names keep their end: ``…layer4.1.conv2.weight``)."""
RULE_WIDTH = 19
"""Columns kept for the rule's name (the longest rule, ``exploding_gradients``, fits)."""


Part = str | tuple[str, str]
"""A piece of a line: plain text, or ``(text, style)``; text from the wire is never parsed as markup."""


def badge_text(alerts: AlertState, *, hint: str = "A") -> Content:
    """The one-line summary: ``✖ 3 alerts (1 critical, 2 warning) — press A · rule layer since step N: message``,
    or ``✓ no alerts``.

    Args:
        alerts: The alert state.
        hint: The key that opens the alerts.

    Returns:
        The line.
    """
    n = len(alerts)
    resolved = len(alerts.history)
    if not n:
        parts: list[Part] = [("✓", "$text-success"), " ", ("no alerts", "$text-muted")]
        if resolved:
            parts.append((f" · {resolved} resolved — press {hint}", "$text-muted"))
        return Content.assemble(*parts, *_ignored(alerts))
    counts = alerts.counts()
    first = alerts.active[0]
    tally = ", ".join(f"{counts[sev]} {sev}" for sev in ("critical", "warning", "info") if counts[sev])
    where = f" {first.layers[0]}" if first.layers else ""
    return Content.assemble(
        (f"{first.glyph} {n} alert{'s' if n != 1 else ''}", SEVERITY_STYLE[first.severity]),
        f" ({tally})",
        *_ignored(alerts),
        (f" — press {hint}", "$text-muted"),
        f" · {first.rule}{where} since step {first.first_step}",
        (f": {first.message}", "$text-muted"),
    )


def _ignored(alerts: AlertState) -> list[Part]:
    """`` · 2 bad alert records ignored`` when some were, else nothing."""
    bad = alerts.malformed + alerts.overflow
    return [(f" · {bad} bad alert record{'s' if bad != 1 else ''} ignored", "$text-warning")] if bad else []


def alert_line(alert: Alert, *, rule_width: int = RULE_WIDTH, layer_width: int = LAYER_WIDTH) -> Content:
    """One alert as one line: glyph, rule, layer, since step, message.

    Args:
        alert: The alert.
        rule_width: Columns for the rule.
        layer_width: Columns for the layer (0: no layer column).

    Returns:
        The line.
    """
    style = SEVERITY_STYLE[alert.severity]
    parts: list[Part] = [(alert.glyph, style), " ", (alert.rule.ljust(rule_width), style), " "]
    if layer_width:
        layer = alert.layers[0] if alert.layers else (alert.metric or "")
        if len(alert.layers) > 1:
            layer += f" +{len(alert.layers) - 1}"
        if len(layer) > layer_width:
            layer = "…" + layer[len(layer) - layer_width + 1 :]
        parts += [(layer.ljust(layer_width), "$text-secondary"), " "]
    parts += [(f"since {alert.first_step}".ljust(13), "$text-muted"), " ", alert.message or alert.id]
    return Content.assemble(*parts)


class AlertPanel(Widget, can_focus=True):
    """The active alerts, most severe first (rule, layer, onset step and the one-line message), with a selection.

    Data comes in through :meth:`update`, which does nothing unless the alerts changed. With no active alert the
    panel is one quiet line (``✓ no alerts``); with :attr:`compact` set (small terminals) it is one line that
    counts the alerts and names the most severe. Keys when focused: ``↑``/``↓`` move the selection, Enter opens
    the selected alert (posts :class:`~tuimon.messages.AlertChosen`), ``a`` requests its first suggested action
    (posts :class:`~tuimon.messages.AlertActionRequested`).

    Args:
        name: The widget's name.
        id: The widget's id.
        classes: The widget's CSS classes.
    """

    DEFAULT_CSS = """
    AlertPanel {
        height: auto;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    AlertPanel.-list {
        border: round $error 60%;
        border-title-color: $text-error;
        border-title-style: bold;
        border-subtitle-color: $text-muted;
        padding: 0 0 0 1;
    }
    AlertPanel.-list.-warning { border: round $warning 60%; border-title-color: $text-warning; }
    AlertPanel.-list.-info { border: round $primary 50%; border-title-color: $text-primary; }
    AlertPanel.-list:focus { border: round $error; }
    AlertPanel.-list.-warning:focus { border: round $warning; }
    AlertPanel.-list.-info:focus { border: round $primary; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "move(-1)", "Alert ↑", show=False),
        Binding("down,j", "move(1)", "Alert ↓", show=False),
        Binding("enter", "open", "Details"),
        Binding("a", "action", "Suggested action"),
    ]

    compact: reactive[bool] = reactive(False)
    """Show only the one-line badge (set by the screen on small terminals)."""
    max_rows: reactive[int] = reactive(4)
    """Alerts listed at most; the list scrolls with the selection beyond that."""

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._alerts: AlertState | None = None
        self._version = -1
        self.selected_id: str | None = None
        """The id of the selected alert (``None`` with no active alert)."""
        self._top = 0
        self._lines: list[Content] = []

    @property
    def alerts(self) -> list[Alert]:
        """The active alerts shown, in order."""
        return self._alerts.active if self._alerts is not None else []

    @property
    def selected(self) -> Alert | None:
        """The selected alert."""
        alerts = self.alerts
        return next((a for a in alerts if a.id == self.selected_id), alerts[0] if alerts else None)

    def update(self, alerts: AlertState) -> None:
        """Show these alerts; cheap when they did not change.

        Args:
            alerts: The run's alert state.
        """
        if alerts is self._alerts and alerts.version == self._version:
            return
        self._alerts, self._version = alerts, alerts.version
        self._relayout()

    def watch_compact(self) -> None:
        self._relayout()

    def watch_max_rows(self) -> None:
        self._relayout()

    def on_focus(self) -> None:
        self._relayout(focused=True)

    def on_blur(self) -> None:
        self._relayout(focused=False)

    def _relayout(self, focused: bool | None = None) -> None:
        focused = self.has_focus if focused is None else focused
        alerts = self.alerts
        if alerts and self.selected_id not in {a.id for a in alerts}:
            self.selected_id = alerts[0].id
        elif not alerts:
            self.selected_id = None
        listing = bool(alerts) and not self.compact
        self.set_class(listing, "-list")
        top = alerts[0].severity if alerts else None
        self.set_class(top == "warning", "-warning")
        self.set_class(top == "info", "-info")
        state = self._alerts
        if not listing:
            self._lines = [badge_text(state) if state is not None else badge_text(AlertState())]
            self.border_title = self.border_subtitle = ""
            self.refresh(layout=True)
            return
        assert state is not None
        rows = max(1, self.max_rows)
        index = next((i for i, a in enumerate(alerts) if a.id == self.selected_id), 0)
        self._top = max(0, min(self._top, index, len(alerts) - rows))
        if index >= self._top + rows:
            self._top = index - rows + 1
        rule_w = min(RULE_WIDTH, max(len(a.rule) for a in alerts))
        lines = []
        for i, a in enumerate(alerts[self._top : self._top + rows], self._top):
            line = alert_line(a, rule_width=rule_w)
            if i == index and focused:
                line = Content.assemble("▸", line).stylize("reverse")
            else:
                line = Content.assemble(" ", line)
            lines.append(line)
        self._lines = lines
        counts = state.counts()
        title = " · ".join(f"{n} {sev}" for sev, n in counts.items() if n)
        self.border_title = f"alerts · {title}"
        more = f"{self._top + 1}–{self._top + len(lines)} of {len(alerts)} · " if len(alerts) > rows else ""
        history = f"{len(state.history)} resolved · " if state.history else ""
        bad = state.malformed + state.overflow
        ignored = f"{bad} bad record{'s' if bad != 1 else ''} ignored · " if bad else ""
        self.border_subtitle = f"{more}{history}{ignored}A focus · ⏎ details · a action"
        self.refresh(layout=True)

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        return max(1, len(self._lines))

    def render(self) -> Content:
        return Content("\n").join(self._lines)

    def on_click(self, event: Click) -> None:
        """A click on an alert's line opens it; a click on the badge opens the most severe one."""
        alerts = self.alerts
        offset = event.get_content_offset(self)
        if not alerts or offset is None:
            return
        if self.has_class("-list"):
            index = self._top + offset.y
            if not 0 <= index < len(alerts):
                return
            self.selected_id = alerts[index].id
            self._relayout()
        self.action_open()

    def action_move(self, delta: int) -> None:
        """Select the previous (-1) or next (+1) alert."""
        alerts = self.alerts
        if not alerts:
            return
        index = next((i for i, a in enumerate(alerts) if a.id == self.selected_id), 0)
        self.selected_id = alerts[max(0, min(len(alerts) - 1, index + delta))].id
        self._relayout()

    def action_open(self) -> None:
        """Open the selected alert's details."""
        selected = self.selected
        self.post_message(AlertChosen(selected.id if selected is not None else None))

    def action_action(self) -> None:
        """Request the selected alert's first suggested action."""
        selected = self.selected
        if selected is None:
            return
        if not selected.actions:
            self.notify(f"{selected.rule} suggests no action", timeout=3)
            return
        self.post_message(AlertActionRequested(selected.id, dict(selected.actions[0])))
