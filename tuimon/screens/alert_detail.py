"""The alert detail screen: every alert (active, or the resolved history) and the selected one's evidence,
remedies, suggested actions and where to look (the chart at its onset, or the layers heatmap at its layer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from ..alerts import Alert, AlertState, describe_action
from ..messages import AlertActionRequested
from ..state import RunState
from ..widgets.alert_panel import SEVERITY_STYLE, Part, alert_line


@dataclass(frozen=True)
class AlertJump:
    """Where the user asked to go from an alert (the detail screen's result)."""

    target: Literal["chart", "layers"]
    """``"chart"``: the learning-curve chart; ``"layers"``: the layers heatmap."""
    alert_id: str
    """The alert's id."""
    name: str | None
    """The metric (chart) or the layer (heatmap) to show; ``None`` keeps the chart's metric."""
    step: int
    """The step to mark: the alert's onset."""
    stat: str | None = None
    """The heatmap statistic that shows the alert's evidence (see :data:`RULE_STATS`)."""


RULE_STATS: dict[str, str] = {
    "exploding_gradients": "grad_norm",
    "vanishing_gradients": "grad_norm",
    "nonfinite": "grad_norm",
    "update_ratio": "update_ratio",
    "dead_units": "dead",
    "saturation": "saturated",
}
"""The layers heatmap's statistic for the rules that name layers (others keep the statistic shown)."""


def _number(v: float | int | str) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def details_content(alert: Alert, *, has_layers: bool) -> Content:
    """Everything about one alert (what the detail pane shows); text from the wire is never parsed as markup.

    Args:
        alert: The alert.
        has_layers: Whether the run has per-layer statistics (so the heatmap jump is offered).

    Returns:
        Several lines.
    """
    style = SEVERITY_STYLE[alert.severity]
    key = "bold $text-accent"
    lines: list[list[Part]] = []
    head: list[Part] = [(f"{alert.glyph} {alert.severity}", style), " · ", (alert.rule, "bold")]
    if alert.state == "resolved":
        head += [" · ", ("resolved", "$text-success")]
    lines.append(head)
    if alert.message:
        lines.append([alert.message])
    facts = [
        f"step {alert.first_step}"
        if alert.last_step == alert.first_step
        else f"since step {alert.first_step}, last seen at step {alert.last_step}"
    ]
    if alert.confidence is not None:
        facts.append(f"confidence {alert.confidence:.0%}")
    if alert.updates > 1:
        facts.append(f"{alert.updates} updates")
    lines.append([(" · ".join(facts), "$text-muted")])
    if alert.layers:
        lines.append([("layers", "bold"), "  " + ", ".join(alert.layers)])
    if alert.metric:
        lines.append([("metric", "bold"), "  " + alert.metric])
    lines.append([(f"id {alert.id}", "$text-muted")])
    if alert.evidence:
        lines += [[], [("Evidence", "bold")]]
        width = min(24, max(len(k) for k in alert.evidence))
        lines += [
            ["  ", (k.ljust(width), "$text-secondary"), "  " + _number(v)] for k, v in alert.evidence.items()
        ]
    if alert.remedies:
        lines += [[], [("Remedies", "bold")]]
        lines += [["  • " + r] for r in alert.remedies]
    if alert.actions:
        lines += [[], [("Suggested actions", "bold")]]
        for i, action in enumerate(alert.actions, 1):
            command = describe_action(action["command"], action["args"])
            lines.append(
                [
                    "  ",
                    ("a" if i == 1 else str(i), key),
                    "  ",
                    (command, "bold"),
                    "  ",
                    (action["label"], "$text-muted"),
                ]
            )
    lines += [[], [("Show", "bold")]]
    metric = alert.metric or "the selected metric"
    lines.append(["  ", ("c", key), f"  {metric} in the chart, marked at step {alert.first_step}"])
    if alert.layers and has_layers:
        lines.append(
            ["  ", ("g", key), f"  {alert.layers[0]} in the layers heatmap at step {alert.first_step}"]
        )
    return Content("\n").join(Content.assemble(*line) for line in lines)


class AlertDetail(ModalScreen[AlertJump | None]):
    """Alerts over the overview: the list on top (active, or resolved with ``h``), the selected one's details below.

    Dismissed with an :class:`AlertJump` when the user asks to see the alert in the chart (``c``) or the layers
    heatmap (``g``; Enter picks the heatmap when the alert names a layer, else the chart), or ``None`` (escape).
    ``a`` (the first) or ``2``–``8`` post :class:`~tuimon.messages.AlertActionRequested` for a suggested action.
    The app calls :meth:`update` from its repaint timer, so the list follows the run.

    Args:
        state: The run state.
        alert_id: The alert to select first (default: the most severe active one, else the latest resolved one).
        name: The screen's name.
        id: The screen's id.
        classes: The screen's CSS classes.
    """

    DEFAULT_CSS = """
    AlertDetail {
        align: center middle;
        background: $background 60%;
    }
    AlertDetail > #alert-box {
        width: 100%;
        max-width: 120;
        height: 100%;
        max-height: 48;
        border: round $primary;
        border-title-style: bold;
        border-subtitle-color: $text-muted;
        background: $surface;
    }
    AlertDetail #alert-tabs { height: 1; padding: 0 1; background: $panel; }
    AlertDetail #alert-list {
        height: auto;
        max-height: 35%;
        border: none;
        padding: 0;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    AlertDetail #alert-body { height: 1fr; border-top: solid $primary 40%; padding: 0 1; }
    AlertDetail #alert-empty { height: 1fr; content-align: center middle; color: $text-muted; text-style: italic; }
    AlertDetail.-empty #alert-list, AlertDetail.-empty #alert-body { display: none; }
    AlertDetail #alert-empty { display: none; }
    AlertDetail.-empty #alert-empty { display: block; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("h", "toggle_history", "History"),
        Binding("c", "jump('chart')", "Chart"),
        Binding("g", "jump('layers')", "Heatmap"),
        Binding("a,1", "action(1)", "Action"),
        *(Binding(str(i), f"action({i})", show=False) for i in range(2, 9)),
    ]

    def __init__(
        self,
        state: RunState,
        alert_id: str | None = None,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._state = state
        self._version: tuple[int, int] | None = None
        found = state.alerts.get(alert_id) if alert_id is not None else None
        self.history = found is not None and not found.active or (found is None and not state.alerts.active)
        """Whether the list shows the resolved alerts rather than the active ones."""
        self.selected_id: str | None = found.id if found is not None else None
        """The alert shown."""
        self._shown_key: tuple[object, ...] | None = None

    @property
    def alerts(self) -> AlertState:
        """The alerts shown."""
        return self._state.alerts

    @property
    def listed(self) -> list[Alert]:
        """The alerts in the list, in order."""
        return self.alerts.history if self.history else self.alerts.active

    @property
    def selected(self) -> Alert | None:
        """The alert whose details are shown."""
        listed = self.listed
        return next((a for a in listed if a.id == self.selected_id), listed[0] if listed else None)

    def compose(self) -> ComposeResult:
        with Vertical(id="alert-box") as box:
            box.border_title = "alerts"
            box.border_subtitle = "↑↓ pick · c chart · g heatmap · a action · h history · esc close"
            yield Static("", id="alert-tabs")
            yield OptionList(id="alert-list")
            with VerticalScroll(id="alert-body"):
                yield Static("", id="alert-details")
            yield Static("", id="alert-empty")

    def on_mount(self) -> None:
        self.update(self._state)
        self.query_one(OptionList).focus()

    def update(self, state: RunState) -> None:
        """Show the run's latest alerts; cheap when they did not change.

        Args:
            state: The run state.
        """
        if state is not self._state:
            self._state = state
            self._version = None
        alerts = state.alerts
        if (id(alerts), alerts.version) == self._version:
            return
        self._version = (id(alerts), alerts.version)
        listed = self.listed
        active, resolved = len(alerts.active), len(alerts.history)
        on, off = "[reverse b]", "[$text-muted]"
        tabs = (
            f"{off if self.history else on} active {active} [/]  {on if self.history else off} resolved {resolved} [/]"
            "  [$text-muted]h switches[/]"
        )
        self.query_one("#alert-tabs", Static).update(Content.from_markup(tabs))
        self.set_class(not listed, "-empty")
        what = "resolved" if self.history else "active"
        self.query_one("#alert-empty", Static).update(
            f"no {what} alerts"
            + (" — h shows the others" if (resolved if not self.history else active) else "")
        )
        options = self.query_one(OptionList)
        selected = self.selected
        self.selected_id = selected.id if selected is not None else None
        rule_w = max((len(a.rule) for a in listed), default=0)
        options.clear_options()
        options.add_options(
            [Option(alert_line(a, rule_width=min(19, rule_w)), id=f"{i}") for i, a in enumerate(listed)]
        )
        if selected is not None:
            options.highlighted = listed.index(selected)
        self._show(selected)

    def _show(self, alert: Alert | None) -> None:
        has_layers = bool(self._state.layers.params)
        key = (alert, has_layers)
        if key == self._shown_key:
            return
        self._shown_key = key
        content = details_content(alert, has_layers=has_layers) if alert is not None else Content()
        self.query_one("#alert-details", Static).update(content)

    @on(OptionList.OptionHighlighted, "#alert-list")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        listed = self.listed
        index = event.option_index
        if 0 <= index < len(listed):
            self.selected_id = listed[index].id
            self._show(listed[index])

    @on(OptionList.OptionSelected, "#alert-list")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        alert = self.selected
        if alert is not None:
            self.action_jump("layers" if alert.layers and self._state.layers.params else "chart")

    def action_toggle_history(self) -> None:
        """Switch the list between the active alerts and the resolved ones."""
        self.history = not self.history
        self.selected_id = None
        self._version = None
        self.update(self._state)

    def action_jump(self, target: Literal["chart", "layers"]) -> None:
        """Close and show the selected alert in the chart or in the layers heatmap."""
        alert = self.selected
        if alert is None:
            return
        if target == "layers":
            if not alert.layers:
                self.notify(f"{alert.rule} names no layer", timeout=3)
                return
            if not self._state.layers.params:
                self.notify("no per-layer statistics in this run", timeout=3)
                return
            self.dismiss(
                AlertJump("layers", alert.id, alert.layers[0], alert.first_step, RULE_STATS.get(alert.rule))
            )
        else:
            self.dismiss(AlertJump("chart", alert.id, alert.metric, alert.first_step))

    def action_action(self, number: int) -> None:
        """Request the selected alert's suggested action ``number`` (1 is the first)."""
        alert = self.selected
        if alert is None:
            return
        if not 1 <= number <= len(alert.actions):
            self.notify(
                f"{alert.rule} suggests no action {number}"
                if alert.actions
                else f"{alert.rule} suggests no action",
                timeout=3,
            )
            return
        self.post_message(AlertActionRequested(alert.id, dict(alert.actions[number - 1])))

    def action_close(self) -> None:
        """Close without jumping."""
        self.dismiss(None)
