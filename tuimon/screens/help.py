"""The help screen: keys, and what the connection states mean."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: tuple[tuple[str, str], ...] = (
    ("↑ ↓  k j", "select the metric to chart (or click its row)"),
    ("m", "toggle EMA smoothing of the chart"),
    ("y", "toggle a log y axis (values ≤ 0 are hidden)"),
    ("C", "show / close the sanity checks (↑ ↓ pick one)"),
    ("l", "live: set the learning rate (3e-4, x0.5, /10)"),
    ("c", "live: set gradient clipping (a max norm, or off)"),
    ("w", "live: set the weight decay"),
    ("p", "live: pause / resume the training loop"),
    ("s", "live: save a checkpoint now"),
    ("S", "live: stop the run gracefully (asks first)"),
    ("h", "the run's command history (works in replay)"),
    ("ctrl+p", "command palette: every command, custom ones too"),
    ("g", "show / close the per-layer statistics heatmap and table"),
    ("  1 2 3 4", "layers: grad norm, update ratio, weight norm, zero grads"),
    ("  5 6", "layers: dead units, saturated outputs, over time"),
    ("  h  enter", "layers: a tensor's weight / gradient histograms"),
    ("  ← ↑ ↓ →", "layers: move the heatmap's cursor (its value below)"),
    ("  + -  [ ]", "layers: zoom in / out, scroll older / newer"),
    ("  o  /", "layers: sort the table, filter it by name"),
    ("  f", "layers: the probe input's feature maps ([ ] next layer, m colours)"),
    ("A", "alerts: focus the alert panel (↑ ↓ pick, enter details, a its action); on a badge, open them"),
    ("  c  g", "alert details: show it in the chart / in the layers heatmap at its onset"),
    ("  h", "alert details: switch to the resolved alerts (history) and back"),
    ("  a  2…8", "alert details: the first (or n-th) suggested action, as a prefilled command"),
    ("? escape", "show / close this help"),
    ("q", "quit"),
)
"""Every key the viewer answers to, with what it does."""

STATES: tuple[tuple[str, str], ...] = (
    ("waiting", "no record from the run yet"),
    ("loading", "reading its history (run file, then the agent)"),
    ("live", "following the training process as it runs"),
    ("stale", "process alive, but silent for a few seconds"),
    ("reconnecting", "the trainer restarted: switching to its new run"),
    ("ended", "the run finished, or its process is gone"),
    ("replay", "a finished run, read from its run file"),
)
"""Every connection state the header shows, with its meaning."""

COUNTERS: tuple[tuple[str, str], ...] = (
    ("drop", "records the agent dropped (its queue was full)"),
    ("gap", "records missing from what this viewer received"),
    ("bad", "messages that could not be decoded (when any)"),
)
"""The header's counters."""


def _table(title: str, rows: tuple[tuple[str, str], ...], style: str) -> str:
    width = max(len(k) for k, _ in (*KEYS, *STATES, *COUNTERS))  # one key column for every section
    lines = [f"[b]{title}[/b]"]
    lines += [f"  [{style}]{k.ljust(width)}[/]  {v}" for k, v in rows]
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    """Keys, connection states and counters, in a box over the overview; escape or ? closes it."""

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
        background: $background 60%;
    }
    HelpScreen > VerticalScroll {
        width: auto;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: round $primary;
        border-title-style: bold;
        background: $surface;
        padding: 0 2;
    }
    HelpScreen Static { width: auto; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark", "close", "Close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll() as box:
            box.border_title = "tuimon help"
            box.border_subtitle = "escape to close"
            yield Static(
                "\n\n".join(
                    (
                        _table("Keys", KEYS, "bold $text-accent"),
                        _table("States", STATES, "bold $text-primary"),
                        _table("Counters", COUNTERS, "bold $text-warning"),
                    )
                ),
                id="help-text",
            )

    def action_close(self) -> None:
        """Close the help."""
        self.dismiss(None)
