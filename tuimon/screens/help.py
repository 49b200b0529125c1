"""The help screen: keys, and what the connection states mean."""

from __future__ import annotations

import textwrap
from typing import ClassVar

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.events import Resize
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: tuple[tuple[str, str], ...] = (
    ("↑ ↓  k j", "select the metric to chart (or click its row)"),
    ("m", "toggle EMA smoothing of the chart"),
    ("y", "toggle a log y axis (values ≤ 0 are hidden)"),
    ("i", "the run panel: id, model, optimizer, device, process, command, run file"),
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
    ("  o  /", "layers: sort the table, filter the tables by name (the heatmap keeps its keys)"),
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


KEY_WIDTH = max(len(k) for k, _ in (*KEYS, *STATES, *COUNTERS))
"""One key column for every section, as wide as the widest key."""
BOX_WIDTH = 96
"""The help box's width at most (less on a narrower terminal); ``DEFAULT_CSS`` says the same."""


def _table(title: str, rows: tuple[tuple[str, str], ...], style: str, width: int) -> str:
    """A section: its title, then one line per key; a description too long for ``width`` columns wraps under itself."""
    indent = " " * (KEY_WIDTH + 4)
    room = max(12, width - len(indent))
    lines = [f"[b]{title}[/b]"]
    for key, what in rows:
        wrapped = textwrap.wrap(what, room, break_on_hyphens=False) or [""]
        lines.append(f"  [{style}]{escape(key.ljust(KEY_WIDTH))}[/]  {escape(wrapped[0])}")
        lines += [indent + escape(more) for more in wrapped[1:]]
    return "\n".join(lines)


def help_markup(width: int) -> str:
    """The help's text for a box ``width`` columns wide inside (keys, states, counters), as markup."""
    return "\n\n".join(
        (
            _table("Keys", KEYS, "bold $text-accent", width),
            _table("States", STATES, "bold $text-primary", width),
            _table("Counters", COUNTERS, "bold $text-warning", width),
        )
    )


class HelpScreen(ModalScreen[None]):
    """Keys, connection states and counters, in a box over the overview; escape or ? closes it.

    The box is :data:`BOX_WIDTH` columns wide, or the terminal's width when that is less; long descriptions wrap
    under themselves (re-wrapped on resize), so nothing is cut on the right and the scrollbar has its own column.
    """

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
        background: $background 60%;
    }
    HelpScreen > VerticalScroll {
        width: 96;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: round $primary;
        border-title-style: bold;
        background: $surface;
        padding: 0 2;
    }
    HelpScreen Static { width: 1fr; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark", "close", "Close"),
    ]

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._wrapped_at = BOX_WIDTH - 7

    def compose(self) -> ComposeResult:
        with VerticalScroll() as box:
            box.border_title = "tuimon help"
            box.border_subtitle = "escape to close"
            yield Static(help_markup(self._wrapped_at), id="help-text")

    def on_resize(self, event: Resize) -> None:
        # Inside the box: its borders (2), padding (4) and the scrollbar's column (1) come off the screen's width.
        width = max(20, min(BOX_WIDTH, event.size.width) - 7)
        if width != self._wrapped_at:
            self._wrapped_at = width
            self.query_one("#help-text", Static).update(help_markup(width))

    def action_close(self) -> None:
        """Close the help."""
        self.dismiss(None)
