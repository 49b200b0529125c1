"""One metric on one line: name, recent sparkline, latest value, trend arrow, and its eval counterpart."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from rich.style import Style
from rich.text import Text
from textual.app import RenderResult
from textual.events import Click
from textual.widget import Widget

from ..messages import MetricSelected
from ..series import Series
from ._style_cache import CachedComponentStyles
from .run_header import format_value

NAME_WIDTH = 16
VALUE_WIDTH = 10
EVAL_WIDTH = 15
TREND_FLAT = 0.02
"""A relative slope (see ``Series.trend``) below this reads as flat (→)."""
_BARS = "▁▂▃▄▅▆▇█"
_LOWER_BETTER = ("loss", "err", "perplex", "ppl", "mse", "mae", "nll", "wer", "cer")
_HIGHER_BETTER = ("acc", "f1", "precision", "recall", "auc", "score", "iou", "bleu", "map", "reward")


def better_direction(name: str) -> int:
    """Which way a metric improves, guessed from its name: -1 lower is better, +1 higher, 0 unknown."""
    low = name.lower().rsplit("/", 1)[-1]
    if any(k in low for k in _LOWER_BETTER):
        return -1
    if any(k in low for k in _HIGHER_BETTER):
        return 1
    return 0


def sparkline(values: np.ndarray, width: int) -> str:
    """Block characters for ``values`` squeezed into ``width`` columns (the mean of each column's points).

    Non-finite values are left out of the scale and shown as ``×``.
    """
    n = len(values)
    if width <= 0 or n == 0:
        return ""
    if n > width:
        starts = (np.arange(width) * n) // width
        with np.errstate(invalid="ignore"):
            values = np.add.reduceat(values, starts) / np.diff(np.append(starts, n))
    finite = np.isfinite(values)
    if not finite.any():
        return "×" * len(values)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    span = hi - lo
    if span <= 1e-9 * max(abs(hi), abs(lo)):
        span = 0.0  # a constant whose column means differ only by rounding is flat, not a dip
    out = []
    for v, ok in zip(values.tolist(), finite.tolist(), strict=True):
        if not ok:
            out.append("×")
        elif span <= 0:
            out.append(_BARS[0])
        else:
            out.append(_BARS[min(7, int((v - lo) / span * 8))])
    return "".join(out)


def eval_prefix(train_name: str, eval_name: str) -> str:
    """A short tag for an eval series: ``val`` for ``val_loss`` next to ``loss``, ``eval`` when it cannot tell."""
    base = train_name.rsplit("/", 1)[-1].removeprefix("train_")
    tag = eval_name.replace(base, "").strip("_/ ")
    return tag[:5] if tag else "eval"


class MetricRow(CachedComponentStyles, Widget):
    """A metric's one-line summary; click it (or move the list's cursor to it) to chart it.

    Args:
        metric: The metric's name.
        name: The widget's name.
        id: The widget's id.
        classes: The widget's CSS classes.
    """

    DEFAULT_CSS = """
    MetricRow {
        height: 1;
        width: 1fr;
        padding: 0 1;
    }
    MetricRow.-selected {
        background: $accent 30%;
        text-style: bold;
    }
    MetricRow > .metric-row--name { color: $foreground; }
    MetricRow > .metric-row--spark { color: $primary; }
    MetricRow > .metric-row--value { color: $text; text-style: bold; }
    MetricRow > .metric-row--eval { color: rgb(255, 135, 0); }
    MetricRow > .metric-row--better { color: $text-success; }
    MetricRow > .metric-row--worse { color: $text-error; }
    MetricRow > .metric-row--flat { color: $text-muted; }
    MetricRow > .metric-row--nonfinite { color: $text-error; text-style: bold; }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "metric-row--name",
        "metric-row--spark",
        "metric-row--value",
        "metric-row--eval",
        "metric-row--better",
        "metric-row--worse",
        "metric-row--flat",
        "metric-row--nonfinite",
    }
    """
    | Class | Description |
    | :- | :- |
    | `metric-row--name` | The metric's name. |
    | `metric-row--spark` | The sparkline of recent values. |
    | `metric-row--value` | The latest value. |
    | `metric-row--eval` | The eval counterpart's latest value (the chart draws eval in the same colour). |
    | `metric-row--better` | A trend arrow pointing the way the metric improves. |
    | `metric-row--worse` | A trend arrow pointing the other way. |
    | `metric-row--flat` | A flat arrow, or one for a metric with no better direction. |
    | `metric-row--nonfinite` | A NaN or Inf value. |
    """

    def __init__(
        self, metric: str, *, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.metric = metric
        self._series: Series | None = None
        self._eval: Series | None = None
        self._value: float | None = None
        self._eval_value: float | None = None
        self._trend = 0.0
        self._shown: tuple[str, str, str, str, str] | None = None

    @property
    def value(self) -> float | None:
        """The latest value shown."""
        return self._value

    @property
    def eval_value(self) -> float | None:
        """The eval counterpart's latest value shown, ``None`` without one."""
        return self._eval_value

    def update(self, series: Series | None, eval_series: Series | None = None) -> None:
        """Show a series' latest figures; repaints only when what the row shows changes.

        Args:
            series: The metric's series.
            eval_series: Its eval counterpart, if any.
        """
        self._series, self._eval = series, eval_series
        self._value = series.last_value if series is not None else None
        self._eval_value = eval_series.last_value if eval_series is not None else None
        self._trend = series.trend() if series is not None else 0.0
        parts = self._parts(self.content_size.width)
        if parts != self._shown:
            self._shown = parts
            self.refresh()

    def on_click(self, event: Click) -> None:
        self.post_message(MetricSelected(self.metric))

    def _parts(self, width: int) -> tuple[str, str, str, str, str]:
        """``(sparkline, value, arrow, arrow class, eval)`` as shown at ``width`` columns."""
        if self._value is None or abs(self._trend) < TREND_FLAT:
            arrow, arrow_cls = "→", "metric-row--flat"
        else:
            rising = self._trend > 0
            arrow = "↗" if rising else "↘"
            better = better_direction(self.metric)
            arrow_cls = (
                "metric-row--flat"
                if better == 0
                else ("metric-row--better" if (better > 0) == rising else "metric-row--worse")
            )
        ev = ""
        if self._eval is not None:
            ev = f"{eval_prefix(self.metric, self._eval.name)} {format_value(self._eval_value)}"
        spark_width = max(0, width - NAME_WIDTH - VALUE_WIDTH - EVAL_WIDTH - 5)
        spark = ""
        if self._series is not None and spark_width >= 4:
            # The whole run, not the last few points: a step in the LR or an early blow-up stays visible.
            spark = sparkline(self._series.downsample(spark_width)[3], spark_width)
        value = format_value(self._value).rjust(VALUE_WIDTH)
        return spark.ljust(spark_width), value, arrow, arrow_cls, ev[:EVAL_WIDTH].rjust(EVAL_WIDTH)

    def _style(self, cls: str, value: float | None = None) -> Style:
        if value is not None and not math.isfinite(value):
            cls = "metric-row--nonfinite"
        return self.component_style(cls)

    def render(self) -> RenderResult:
        width = self.content_size.width
        if self._shown is None or len(self._shown[0]) != max(
            0, width - NAME_WIDTH - VALUE_WIDTH - EVAL_WIDTH - 5
        ):
            self._shown = self._parts(width)  # first paint, or a new width
        spark, value, arrow, arrow_cls, ev = self._shown
        name = Text(self.metric, no_wrap=True, end="", style=self._style("metric-row--name"))
        name.truncate(NAME_WIDTH, overflow="ellipsis", pad=True)
        return Text.assemble(
            name,
            " ",
            (spark, self._style("metric-row--spark")),
            " ",
            (value, self._style("metric-row--value", self._value)),
            " ",
            (arrow, self._style(arrow_cls)),
            " ",
            (ev, self._style("metric-row--eval", self._eval_value)),
            no_wrap=True,
            end="",
        )
