"""The one-line run header: name, step, speed, elapsed time, learning rate, connection state and loss counters.

A live run that a ``pause`` command holds says ``‖ paused since step N`` instead of ``● live`` (from the command
acks the state keeps), with no speed: its clock (agent time of the latest record) stands still because no step runs.
"""

from __future__ import annotations

import math
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget

from ..state import RunState
from ._style_cache import CachedComponentStyles

NAME_KEPT = 16
"""Columns of the run's name the header keeps before it drops figures (counters at zero, then elapsed time, lr,
speed): on a narrow terminal the run's name is worth more than its elapsed time."""
STATES = ("waiting", "loading", "live", "stale", "ended", "reconnecting", "replay")
"""The connection states a source reports (see ``tuimon.source.SourceUpdate.status``)."""


def format_elapsed(seconds: float) -> str:
    """``h:mm:ss`` for a duration in seconds (negative and non-finite read as 0)."""
    s = int(seconds) if math.isfinite(seconds) and seconds > 0 else 0
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def format_value(value: float | None) -> str:
    """A value with 4 significant digits (``-`` when there is none, ``nan``/``inf`` as such)."""
    if value is None:
        return "-"
    return f"{value:.4g}"


class RunHeader(CachedComponentStyles, Widget):
    """One line about the run as a whole, compact enough for 60 columns: the name keeps its first :data:`NAME_KEPT`
    columns while the figures give way (zero counters, elapsed time, lr, speed, in that order), then it is elided.

    Data comes in through :meth:`update` only; nothing is read from the state until then.
    """

    DEFAULT_CSS = """
    RunHeader {
        height: 1;
        width: 1fr;
        background: $panel;
        color: $foreground;
        padding: 0 1;
    }
    RunHeader > .run-header--name { text-style: bold; color: $text-primary; }
    RunHeader > .run-header--label { color: $text-muted; }
    RunHeader > .run-header--warn { color: $text-warning; text-style: bold; }
    RunHeader > .run-header--error { color: $text-error; text-style: bold; }
    RunHeader > .run-header--state-waiting { color: $text-muted; text-style: bold; }
    RunHeader > .run-header--state-loading { color: $text-accent; text-style: bold; }
    RunHeader > .run-header--state-live { color: $text-success; text-style: bold; }
    RunHeader > .run-header--state-stale { color: $text-warning; text-style: bold; }
    RunHeader > .run-header--state-ended { color: $text-secondary; text-style: bold; }
    RunHeader > .run-header--state-reconnecting { color: $text-warning; text-style: bold reverse; }
    RunHeader > .run-header--state-replay { color: $text-primary; text-style: bold; }
    RunHeader > .run-header--paused { color: $text-warning; text-style: bold reverse; }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "run-header--name",
        "run-header--label",
        "run-header--warn",
        "run-header--error",
        "run-header--paused",
        *(f"run-header--state-{s}" for s in STATES),
    }
    """
    | Class | Description |
    | :- | :- |
    | `run-header--name` | The run's name. |
    | `run-header--label` | The small words before figures (`step`, `lr`, ...). |
    | `run-header--warn` | A nonzero dropped or gap counter. |
    | `run-header--error` | A nonzero malformed counter. |
    | `run-header--state-<state>` | The state badge, one class per state in `STATES`. |
    | `run-header--paused` | The badge of a live run held by a ``pause`` command. |
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._run_name = ""
        self._status = "waiting"
        self._figures: tuple[int, float | None, float, float | None] = (0, None, 0.0, None)
        self._counters: tuple[int, int, int] = (0, 0, 0)
        self._paused_at: int | None = None

    @property
    def status(self) -> str:
        """The state shown in the badge."""
        return self._status

    @property
    def badge(self) -> str:
        """The state badge's text (``● live``, ``‖ paused since step 120``, ...)."""
        if self._paused_at is not None and self._status == "live":
            return "‖ paused" + (f" since step {self._paused_at:,}" if self._paused_at >= 0 else "")
        return f"● {self._status}"

    def update(self, state: RunState, *, status: str, label: str) -> None:
        """Show the run's latest figures.

        Args:
            state: The run state.
            status: The connection state (one of :data:`STATES`).
            label: What to call the run before its hello arrives (the source's label).
        """
        self._run_name = state.name or label
        self._status = status
        self._figures = (state.step, state.steps_per_second(), state.elapsed(), state.lr())
        self._counters = (state.dropped, state.gaps, state.malformed)
        self._paused_at = state.commands.paused_at()
        self.refresh()

    def render(self) -> RenderResult:
        label = self.component_style("run-header--label")
        step, sps, elapsed, lr = self._figures
        dropped, gaps, malformed = self._counters

        def counter(word: str, n: int, cls: str) -> tuple[str, Style]:
            return f"{word} {n:,}", self.component_style(cls) if n else label

        paused = self._paused_at is not None and self._status == "live"
        badge = (
            self.badge,
            self.component_style("run-header--paused")
            if paused
            else self.component_style(f"run-header--state-{self._status}")
            if self._status in STATES
            else label,
        )
        if paused:
            sps = None  # no step runs: the last speed would be a claim
        counters = (
            counter("drop", dropped, "run-header--warn"),
            " ",
            counter("gap", gaps, "run-header--warn"),
            *((" ", counter("bad", malformed, "run-header--error")) if malformed else ()),
        )
        # The parts after the name, in display order, each with the rank at which it gives way (0: never).
        parts: list[tuple[int, tuple[tuple[str, Style] | str, ...]]]
        if self._status == "loading" or (self._status == "waiting" and not step):
            # Before the history has arrived there is no step, speed or time to show: "step 0" would be a claim.
            note = "loading history…" if self._status == "loading" else "no records yet"
            parts = [(0, ((note, label),)), (0, (badge,)), (1, counters)]
        else:
            parts = [
                (0, (("step ", label), f"{step:,}")),
                (4, ("–" if sps is None else f"{sps:.1f}" if sps < 100 else f"{sps:,.0f}", (" it/s", label))),
                (2, (format_elapsed(elapsed),)),
                *([(3, (("lr ", label), f"{lr:.3g}"))] if lr is not None else []),
                (0, (badge,)),
                (1 if not (dropped or gaps or malformed) else 5, counters),
            ]
        width = self.content_size.width
        name = Text(self._run_name, style=self.component_style("run-header--name"), no_wrap=True, end="")
        keep_name = (
            min(name.cell_len, NAME_KEPT) + 2
        )  # the name keeps this much (and a gap) before figures go
        right = _join(parts)
        for rank in range(1, 6):
            if right.cell_len + keep_name <= width:
                break
            parts = [(r, p) for r, p in parts if r == 0 or r > rank]
            right = _join(parts)
        room = width - right.cell_len - 2
        if room < 4:
            right.truncate(width, overflow="ellipsis")
            return right
        name.truncate(room, overflow="ellipsis")
        gap = " " * (width - name.cell_len - right.cell_len)
        return Text.assemble(name, gap, right, no_wrap=True, end="")


def _join(parts: list[tuple[int, tuple[tuple[str, Style] | str, ...]]]) -> Text:
    """The header's right-hand parts, two spaces apart."""
    pieces: list[tuple[str, Style] | str] = []
    for i, (_, part) in enumerate(parts):
        if i:
            pieces.append("  ")
        pieces.extend(part)
    return Text.assemble(*pieces, no_wrap=True, end="")
