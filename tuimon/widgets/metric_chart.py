"""The chart of one metric over the whole run, with its eval counterpart overlaid."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from rich.text import Text
from textual.app import RenderResult
from textual.reactive import reactive
from textual.timer import Timer
from textual_plotext import PlotextPlot

from ..series import Series
from ..state import Marker
from ._plot_math import EMA_WEIGHT, ema, log_ticks, nice_ticks, step_label
from ._style_cache import CachedComponentStyles

MEAN_COLOR = (0, 175, 255)
"""xterm-256 colour 39: the metric's mean line (and the smoothed line)."""
BAND_COLOR = (98, 98, 98)
"""xterm-256 colour 241: each column's min and max (the envelope of what the mean hides)."""
RAW_COLOR = (138, 138, 138)
"""xterm-256 colour 245: the unsmoothed mean, drawn faintly under the smoothed line."""
EVAL_COLOR = (255, 135, 0)
"""xterm-256 colour 208: the eval series."""
MARKER_STYLES: dict[str, tuple[tuple[int, int, int], str]] = {
    "alert:critical": ((255, 0, 0), "critical"),
    "alert:warning": ((255, 215, 0), "warning"),
    "alert:info": ((95, 135, 255), "info"),
    "command": ((175, 95, 255), "command"),
}
"""Colour and legend label of each marker kind (``RunState.markers``); other kinds are grey and unlabelled."""
MARKER_GLYPHS: dict[str, str] = {
    "alert:critical": "!",
    "alert:warning": "▲",
    "alert:info": "i",
    "command": "»",
}
"""The glyph at the top of each kind's line and before its legend label, so that the kinds differ without colour
(``NO_COLOR``, a monochrome terminal, colour-blind readers); other kinds get ``│``."""
OTHER_MARKER_COLOR = (128, 128, 128)
"""A marker of a kind :data:`MARKER_STYLES` does not know."""
MARK_COLOR = (255, 255, 255)
"""The step :meth:`MetricChart.mark_step` marked (an alert's onset the user jumped to)."""
MAX_MARKERS = 16
"""Markers drawn at most (the latest ones in view): each is a line over the whole plot, one coloured run per row
for Textual to convert (``tests/benchmarks/bench_chart_markers.py`` measures what they add to a rebuild)."""
CPU_BUDGET = 0.04
"""While data streams in, rebuilds are spaced so that they take at most about this share of one core."""
_BUILD_OVERHEAD = (
    3.0  # Textual's conversion of plotext's output to strips costs about twice plotext's build (measured)
)


def _rgb(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


class MetricChart(CachedComponentStyles, PlotextPlot):
    """One metric over the whole run (from ``Series.downsample``): each column's min and max as faint lines, the
    mean as the main line, and the eval series as orange diamonds joined by a line.

    Data comes in through :meth:`update`; the plot is rebuilt when the widget renders. A rebuild costs milliseconds
    (plotext, then Textual's conversion), so while data streams in for the same metric the chart rebuilds at most
    once per ``min_interval``, or less often when its builds would take more than :data:`CPU_BUDGET` of a core (the
    latest update is always drawn, just later). The chart spans the whole run, so a second between rebuilds shows
    little; the header and the metric rows show the latest values at the app's 10 Hz. A new metric, a toggle or a
    resize redraws at once.

    Args:
        min_interval: Seconds between rebuilds caused by new data for the same metric, at least.
        name: The widget's name.
        id: The widget's id.
        classes: The widget's CSS classes.
    """

    DEFAULT_CSS = """
    MetricChart {
        border: round $primary 50%;
        border-title-color: $text-primary;
        border-title-style: bold;
        border-subtitle-color: $text-muted;
        padding: 0;
    }
    MetricChart:focus { border: round $primary; }
    MetricChart > .metric-chart--empty { color: $text-muted; text-style: italic; }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {"metric-chart--empty"}
    """
    | Class | Description |
    | :- | :- |
    | `metric-chart--empty` | The note shown when there is nothing to plot yet. |
    """

    smoothing: reactive[bool] = reactive(False)
    """Draw an EMA of the column means (over the faint raw means) instead of the means with their min/max."""
    log_y: reactive[bool] = reactive(False)
    """Use a log y axis; non-positive values are then left out (the title says so)."""

    def __init__(
        self,
        *,
        min_interval: float = 1.0,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.min_interval = min_interval
        self.metric: str | None = None
        self._title = ""
        self._subtitle = ""
        self._built_at = -math.inf
        self._build_seconds = 0.0
        self._pending: Timer | None = None
        self._ylo = self._yhi = math.nan
        self._series: Series | None = None
        self._eval: Series | None = None
        self._markers: Sequence[Marker] = ()
        self._mark: tuple[str, int] | None = None
        self.markers_drawn: list[Marker] = []
        """The markers the last build drew (tests read it)."""
        self.xtick_labels: list[str] = []
        """The step axis's labels in the last build."""
        self.updates = 0
        """How many times :meth:`update` ran (tests use it to check the repaint rate)."""
        self.renders = 0
        """How many times the plot was rebuilt."""

    @property
    def title(self) -> str:
        """The chart's title (the metric and the display modes)."""
        return self._title

    def update(
        self,
        metric: str | None,
        series: Series | None,
        eval_series: Series | None = None,
        *,
        markers: Sequence[Marker] = (),
    ) -> None:
        """Chart a metric.

        Args:
            metric: Its name (``None``: nothing selected yet).
            series: Its series.
            eval_series: Its eval counterpart, if any.
            markers: Vertical markers (``RunState.markers``); those in the charted step range are drawn, the
                latest :data:`MAX_MARKERS` of them.
        """
        self.updates += 1
        same = (metric, series, eval_series) == (self.metric, self._series, self._eval)
        self.metric, self._series, self._eval = metric, series, eval_series
        self._markers = markers
        self._set_titles()
        if not same or time.monotonic() - self._built_at >= self.min_interval:
            self._redraw()
        elif self._pending is None:
            self._pending = self.set_timer(
                self._built_at + self.min_interval - time.monotonic(), self._redraw
            )

    @property
    def marked_step(self) -> int | None:
        """The step :meth:`mark_step` marked, while the chart shows that metric."""
        return self._mark[1] if self._mark is not None and self._mark[0] == self.metric else None

    def mark_step(self, metric: str | None, step: int | None) -> None:
        """Mark one step of one metric's chart with a bright line (an alert's onset the user jumped to).

        Args:
            metric: The metric whose chart shows the mark (it goes when another metric is charted).
            step: The step; ``None`` removes the mark.
        """
        self._mark = (metric, step) if metric is not None and step is not None else None
        self._set_titles()
        self._redraw()

    def _redraw(self) -> None:
        if self._pending is not None:
            self._pending.stop()
            self._pending = None
        self.refresh()

    def watch_smoothing(self) -> None:
        self._set_titles()
        self._redraw()

    def watch_log_y(self) -> None:
        self._set_titles()
        self._redraw()

    def _set_titles(self) -> None:
        """Set the border's title and legend, only when they change (setting one always refreshes)."""
        if self.metric is None:
            title, legend = "chart", ""
        else:
            title, legend = self._titles(self.metric)
        if title != self._title:
            self._title = self.border_title = title
        if legend != self._subtitle:
            self._subtitle = self.border_subtitle = legend

    def _titles(self, metric: str) -> tuple[str, str]:
        parts = [metric]
        if self.smoothing:
            parts.append(f"EMA smoothing {EMA_WEIGHT:g}")
        if self.log_y:
            lows = [s.min() for s in (self._series, self._eval) if s is not None]
            hidden = any(v is not None and v <= 0 for v in lows)
            parts.append("log y (≤0 hidden)" if hidden else "log y")
        legend = f"[{_rgb(MEAN_COLOR)}]━[/] {metric}"
        if self._eval is not None:
            legend += f"  [{_rgb(EVAL_COLOR)}]◆[/] {self._eval.name}"
        self.markers_drawn = self._visible_markers()
        kinds = {m.kind for m in self.markers_drawn}
        onsets = [
            f"[{_rgb(c)}]{MARKER_GLYPHS[k]}[/] {label}"
            for k, (c, label) in MARKER_STYLES.items()
            if k in kinds and k[:6] == "alert:"
        ]
        if onsets:
            legend += "  alerts " + " ".join(onsets)
        if "command" in kinds:
            legend += f"  [{_rgb(MARKER_STYLES['command'][0])}]{MARKER_GLYPHS['command']}[/] {MARKER_STYLES['command'][1]}"
        if self.marked_step is not None:
            parts.append(f"[{_rgb(MARK_COLOR)}]│[/] step {self.marked_step}")
        return " · ".join(parts), legend

    def _visible_markers(self) -> list[Marker]:
        """The markers within the charted step range, the latest :data:`MAX_MARKERS` of them."""
        series = self._series
        if not self._markers or series is None or series.first_step is None or series.last_step is None:
            return []
        lo, hi = series.first_step, series.last_step
        if self._eval is not None and self._eval.last_step is not None:
            hi = max(hi, self._eval.last_step)
        shown = [m for m in self._markers if lo <= m.step <= hi]
        return shown[-MAX_MARKERS:]

    def _empty(self, note: str) -> RenderResult:
        style = self.component_style("metric-chart--empty")
        return Text(note, style=style, justify="center")

    def render(self) -> RenderResult:
        width = self.content_size.width
        series = self._series
        if self.metric is None:
            return self._empty("select a metric")
        if series is None or series.count == 0:
            return self._empty(f"no data for {self.metric} yet")
        self.renders += 1
        started = self._built_at = time.monotonic()
        self._ylo, self._yhi = math.inf, -math.inf
        plt = self.plt
        plt.clear_figure()
        plt.xaxes(True, False)
        plt.yaxes(True, False)
        plt.xlabel("step")
        steps, mins, maxs, means = series.downsample(max(8, width - 10))
        x = steps.astype(np.float64)
        lo, hi = float(steps[0]), float(steps[-1])
        if self._eval is not None and self._eval.last_step is not None:
            hi = max(hi, float(self._eval.last_step))
        ticks = nice_ticks(lo, hi, max(2, width // 14), integer=True)
        self.xtick_labels = [step_label(t) for t in ticks]
        plt.xticks(ticks, self.xtick_labels)
        for m in self.markers_drawn:  # first, so that the lines are drawn over them
            plt.vline(m.step, MARKER_STYLES.get(m.kind, (OTHER_MARKER_COLOR, ""))[0])
        if self.marked_step is not None and lo <= self.marked_step <= hi:
            plt.vline(self.marked_step, MARK_COLOR)
        if self.smoothing:
            self._line(x, means, RAW_COLOR)
            self._line(x, ema(means), MEAN_COLOR)
        else:
            if not np.array_equal(mins, maxs, equal_nan=True):
                self._line(x, maxs, BAND_COLOR)
                self._line(x, mins, BAND_COLOR)
            self._line(x, means, MEAN_COLOR)
        if self._eval is not None and self._eval.count:
            es, _, _, em = self._eval.downsample(max(8, width - 10))
            ex = es.astype(np.float64)
            self._line(ex, em, EVAL_COLOR)
            if len(ex) <= width // 3:  # diamonds only while they stay apart
                self._line(ex, em, EVAL_COLOR, marker="◆", scatter=True)
        if self.markers_drawn and math.isfinite(self._yhi):
            for m in self.markers_drawn:  # each line's glyph at its top: the kinds differ without colour too
                color = MARKER_STYLES.get(m.kind, (OTHER_MARKER_COLOR, ""))[0]
                plt.text(MARKER_GLYPHS.get(m.kind, "│"), m.step, self._yhi, color=color, alignment="center")
        rows = max(2, self.content_size.height // 3)
        if self.log_y:
            plt.yscale("log")
            yticks = log_ticks(self._ylo, self._yhi, rows)
        else:
            yticks = nice_ticks(self._ylo, self._yhi, rows, dense=True)
        if len(yticks) >= 2:
            plt.yticks(yticks, [f"{t:.4g}" for t in yticks])
        rendered = super().render()
        self._build_seconds = time.monotonic() - started
        return rendered

    def _line(
        self,
        x: np.ndarray,
        y: np.ndarray,
        color: tuple[int, int, int],
        *,
        marker: str = "braille",
        scatter: bool = False,
    ) -> None:
        """Plot the finite (and, on a log axis, positive) points of one line."""
        ok = np.isfinite(y)
        if self.log_y:
            ok &= y > 0
        if not ok.any():
            return
        self._ylo = min(self._ylo, float(y[ok].min()))
        self._yhi = max(self._yhi, float(y[ok].max()))
        draw = self.plt.scatter if scatter else self.plt.plot
        draw(x[ok].tolist(), y[ok].tolist(), marker=marker, color=color)
