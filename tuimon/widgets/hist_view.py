"""One parameter tensor's weight and gradient histograms: the latest as bars, their evolution as a heat strip.

Two panels (weight, gradient), side by side when the widget is wide enough, else one above the other. Each has a
header line (the kind; in red, the latest NaN/Inf counts when non-zero, else the step of the newest sample shown
that had any; the step and the samples shown), the latest histogram as vertical bars in eighth blocks (the tallest
bar's count written at its left), an x axis labelled with numbers, and a heat strip of the recent samples (newest on
top, two samples a line in half blocks, colour = count on a log scale in viridis, NaN/Inf samples marked red at the
right edge). Every sample shown is re-binned (:func:`tuimon.hists.rebin`) onto one x range, the union of the
:data:`RECENT` latest samples' own ranges, labelled with numbers: recent values fill the axis however small they are
(no vanishing into one bin because of an early wide sample), and older samples are drawn on the same scale, so a
distribution that narrows or drifts shows it.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from ..hists import HistSeries, HistState, rebin
from ._style_cache import CachedComponentStyles
from .grad_heatmap import LEVELS, PALETTE

KIND_LABELS: dict[str, str] = {"weight": "weights", "grad": "gradients"}
"""The panels' names, by histogram kind."""
NONFINITE_MARK = "#ff5555"
"""The strip's mark for a sample that held NaN or Inf."""
MISSING_MARK = "#3a3a3a"
"""The strip's colour for a sample with no finite value (no gradient at that step)."""
RECENT = 8
"""The x axis spans the union of the ranges of this many latest samples (older, wider ones are cut at its ends)."""
MIN_PANEL_WIDTH = 34
"""Panels go side by side when each gets at least this many columns."""
BARS = " ▁▂▃▄▅▆▇█"
_GAP = 2  # columns between side-by-side panels


def format_value(v: float) -> str:
    """An axis number: 3 significant digits, ``0`` for zero."""
    return "0" if v == 0 else f"{v:.3g}"


class HistView(CachedComponentStyles, Widget):
    """The weight and gradient histograms of one parameter tensor over its recent samples.

    Data comes in through :meth:`update`; it repaints only when the histograms, the tensor or the size changed.
    Before the run has sent any ``histograms`` record it shows :attr:`empty_note`.

    Args:
        name: The widget's name.
        id: The widget's id.
        classes: The widget's CSS classes.
    """

    DEFAULT_CSS = """
    HistView {
        height: 1fr;
        width: 1fr;
    }
    HistView > .hist-view--header { color: $text; text-style: bold; }
    HistView > .hist-view--axis { color: $text-muted; }
    HistView > .hist-view--bar { color: $accent; }
    HistView > .hist-view--nonfinite { color: #ff5555; text-style: bold; }
    HistView > .hist-view--note { color: $text-muted; text-style: italic; }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "hist-view--header",
        "hist-view--axis",
        "hist-view--bar",
        "hist-view--nonfinite",
        "hist-view--note",
    }
    """
    | Class | Description |
    | :- | :- |
    | `hist-view--header` | A panel's name. |
    | `hist-view--axis` | Axis numbers, step labels and sample counts. |
    | `hist-view--bar` | The latest histogram's bars. |
    | `hist-view--nonfinite` | NaN/Inf counts (shown only when non-zero). |
    | `hist-view--note` | What the view says when there is nothing to draw. |
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._hists: HistState | None = None
        self.param: str | None = None
        """The parameter tensor shown (``None``: the first of the index)."""
        self.empty_note = "no histograms in this run yet"
        """What the view says before the first ``histograms`` record."""
        self.spans: dict[str, tuple[float, float] | None] = {}
        """The x range each panel shows (the union of its samples' ranges), ``None`` when it has no finite value."""
        self.shown_steps: list[int] = []
        """The steps of the samples in the strips, newest first."""
        self._key: tuple[object, ...] | None = None
        self._lines: list[Strip] = []

    # -- data in ------------------------------------------------------------------------------------------------

    def update(self, hists: HistState, param: str | None = None, *, empty_note: str | None = None) -> None:
        """Show the histograms of ``param`` in ``hists``; cheap when nothing changed.

        Args:
            hists: The run's histogram state.
            param: A parameter name (``None``, or one the index lacks: the first tensor).
            empty_note: What to say while the run has no histograms (default: the last one given).
        """
        self._hists = hists
        self.param = param
        if empty_note is not None:
            self.empty_note = empty_note
        if self._state_key() != self._key:
            self._key = None
            self.refresh()

    @property
    def index(self) -> int | None:
        """The position of the tensor shown in the histogram index, ``None`` when there is none."""
        h = self._hists
        if h is None or not h.names:
            return None
        i = h.index(self.param) if self.param is not None else None
        return 0 if i is None else i

    def _state_key(self) -> tuple[object, ...]:
        h = self._hists
        return (id(h), h.version if h is not None else -1, self.param, self.empty_note, self.size)

    def on_resize(self) -> None:
        self._key = None
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._key = None
        if self.is_mounted:
            self.refresh()

    # -- paint ------------------------------------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        if self._key is None:
            self._build()
            self._key = self._state_key()
        return self._lines[y] if y < len(self._lines) else Strip.blank(self.size.width, self.rich_style)

    def _build(self) -> None:
        w, h = self.content_size
        base = self.rich_style
        self._lines = []
        self.spans = {}
        self.shown_steps = []
        if w <= 0 or h <= 0:
            return
        hists, index = self._hists, self.index
        if hists is None or index is None or not hists.kept:
            self._note(self.empty_note, w, h)
            return
        self.border_title = f"{hists.names[index]} · histograms"
        side = w >= 2 * MIN_PANEL_WIDTH + _GAP
        if side:
            pw = (w - _GAP) // 2
            left = self._panel(hists.series(index, "weight"), pw, h)
            right = self._panel(hists.series(index, "grad"), w - _GAP - pw, h)
            gap = Segment(" " * _GAP, base)
            self._lines = [Strip([*a, gap, *b]) for a, b in zip(left, right, strict=True)]
        else:
            top_h = max(1, h // 2)
            top = self._panel(hists.series(index, "weight"), w, top_h)
            bottom = self._panel(hists.series(index, "grad"), w, h - top_h) if h > top_h else []
            self._lines = [Strip(segs) for segs in (*top, *bottom)]

    def _note(self, text: str, w: int, h: int) -> None:
        style = self.rich_style + self.component_style("hist-view--note")
        words, lines, line = text.split(), [], ""
        for word in words:
            if line and len(line) + 1 + len(word) > w:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
        top = max(0, (h - len(lines)) // 2)
        blank = Strip.blank(w, self.rich_style)
        self._lines = [blank] * top + [Strip([Segment(t[:w].center(w), style)]) for t in lines]

    def _panel(self, series: HistSeries, pw: int, ph: int) -> list[list[Segment]]:
        """A panel of ``ph`` lines, each ``pw`` cells wide."""
        base = self.rich_style
        head_style = base + self.component_style("hist-view--header")
        axis = base + self.component_style("hist-view--axis")
        bad_style = base + self.component_style("hist-view--nonfinite")
        lines: list[list[Segment]] = []

        rest = ph - 2  # below the header and the axis
        bar_h = max(1, min(8, rest * 2 // 5)) if rest >= 3 else max(0, rest)
        strip_h = max(0, rest - bar_h)
        n_shown = min(len(series), max(1, 2 * strip_h))
        recent = slice(len(series) - n_shown, len(series))
        self.shown_steps = [int(s) for s in series.steps[recent][::-1]]
        gutter = max(4, len(str(int(series.steps.max()))) + 1) if len(series) else 4
        plot_w = max(1, pw - gutter - 1)  # the last column marks NaN/Inf samples

        nan, inf = int(series.nan[-1]), int(series.inf[-1])
        # Header: kind, NaN/Inf (first, so a narrow panel cuts the rest), step and samples shown.
        head = [Segment(KIND_LABELS[series.kind], head_style)]
        flagged = (series.nan + series.inf)[recent] > 0
        if nan or inf:
            head.append(Segment(f" NaN {nan} · Inf {inf}", bad_style))
        elif flagged.any():
            last_bad = int(series.steps[recent][np.flatnonzero(flagged)[-1]])
            head.append(Segment(f" NaN/Inf at step {last_bad}", bad_style))
        used = sum(len(seg.text) for seg in head)
        for info in (f" · step {int(series.steps[-1])}", f" · {n_shown} samples" if strip_h else ""):
            if info and used + len(info) <= pw:  # whole or not at all: a cut number would mislead
                head.append(Segment(info, axis))
                used += len(info)
        lines.append(_fit(head, pw, base))

        span = series.span(RECENT)
        self.spans[series.kind] = span
        if span is None:
            text = (
                "no gradient in these samples"
                if series.kind == "grad"
                else "no finite value in these samples"
            )
            lines.append(_fit([Segment(text, axis)], pw, base))
            return _pad(lines, pw, ph, base)
        lo, hi = span
        if hi <= lo:  # every value the same: a range around it, so it lands mid-axis
            pad = abs(lo) * 0.1 or 0.5
            lo, hi = lo - pad, hi + pad
        counts = np.stack(
            [
                rebin(series.counts[i], series.lo[i], series.hi[i], lo, hi, plot_w)
                for i in range(recent.start, recent.stop)
            ]
        )

        # The latest histogram as bars (eighth blocks), tallest = the panel's bar height.
        latest = counts[-1]
        peak = float(latest.max())
        bar_style = base + self.component_style("hist-view--bar")
        eighths = (
            np.rint(latest / peak * bar_h * 8).astype(np.int64) if peak > 0 else np.zeros(plot_w, np.int64)
        )
        eighths[(latest > 0) & (eighths == 0)] = 1  # a bin with any value shows
        for row in range(bar_h):
            floor = (bar_h - 1 - row) * 8
            text = "".join(BARS[int(min(8, max(0, e - floor)))] for e in eighths)
            label = f"{peak:.0f}".rjust(gutter - 1) + " " if row == 0 and peak else " " * gutter
            lines.append([Segment(label[:gutter], axis), Segment(text, bar_style), Segment(" ", base)])

        # The x axis: both ends and zero, as numbers.
        lines.append([Segment(" " * gutter, base), Segment(_axis(lo, hi, plot_w), axis), Segment(" ", base)])

        # The heat strip: newest on top, two samples a line (upper half the newer).
        if strip_h:
            rows = counts[::-1]
            flagged = flagged[::-1]
            measured = series.measured()[recent][::-1]
            top = float(rows.max())
            scale = math.log1p(top) if top > 0 else 1.0
            levels = np.rint(np.log1p(rows) / scale * (LEVELS - 1)).astype(np.int64)
            n_lines = (len(rows) + 1) // 2
            steps = self.shown_steps
            for y in range(min(strip_h, n_lines)):
                a, b = 2 * y, 2 * y + 1
                if y == 0:
                    label = str(steps[0])
                elif y == n_lines - 1:
                    label = str(steps[-1])
                else:
                    label = ""
                segs = [Segment(label.rjust(gutter - 1)[: gutter - 1] + " ", axis)]
                for x in range(plot_w):
                    up = _strip_color(rows[a, x], levels[a, x], measured[a])
                    down = _strip_color(rows[b, x], levels[b, x], measured[b]) if b < len(rows) else None
                    segs.append(_cell(up, down, base))
                mark_up = NONFINITE_MARK if flagged[a] else None
                mark_down = NONFINITE_MARK if b < len(rows) and flagged[b] else None
                segs.append(_cell(mark_up, mark_down, base))
                lines.append(segs)
        return _pad(lines, pw, ph, base)


def _strip_color(count: float, level: int, measured: bool) -> str | None:
    if not measured:
        return MISSING_MARK
    return PALETTE[min(LEVELS - 1, max(0, int(level)))] if count > 0 else None


def _axis(lo: float, hi: float, width: int) -> str:
    """``width`` characters: ``lo`` at the left, ``hi`` at the right, ``0`` under zero when it fits between."""
    left, right = format_value(lo), format_value(hi)
    chars = [" "] * width
    if len(left) + len(right) + 1 > width:
        return (left + " " + right)[:width] if len(left) + 1 < width else left[:width]
    chars[: len(left)] = left
    chars[width - len(right) :] = right
    if lo < 0 < hi:
        x = int((0 - lo) / (hi - lo) * width)
        if len(left) + 2 <= x and x + 2 < width - len(right):
            chars[x] = "0"
    return "".join(chars)


def _fit(segs: list[Segment], width: int, base: Style) -> list[Segment]:
    """Segments cut or padded to exactly ``width`` cells."""
    out: list[Segment] = []
    used = 0
    for s in segs:
        if used >= width:
            break
        text = s.text[: width - used]
        out.append(Segment(text, s.style))
        used += len(text)
    if used < width:
        out.append(Segment(" " * (width - used), base))
    return out


def _pad(lines: list[list[Segment]], width: int, height: int, base: Style) -> list[list[Segment]]:
    """Exactly ``height`` lines of exactly ``width`` cells."""
    out = [_fit(segs, width, base) for segs in lines[:height]]
    out += [[Segment(" " * width, base)]] * (height - len(out))
    return out


_CELLS: dict[tuple[str | None, str | None, Style], Segment] = {}


def _cell(upper: str | None, lower: str | None, base: Style) -> Segment:
    """One half-block cell: the upper half ``upper``'s colour, the lower half ``lower``'s (``None``: background)."""
    key = (upper, lower, base)
    seg = _CELLS.get(key)
    if seg is None:
        if len(_CELLS) > 20_000:
            _CELLS.clear()
        if upper is None and lower is None:
            seg = Segment(" ", base)
        elif upper is None:
            seg = Segment("▄", base + Style(color=lower))
        elif lower is None:
            seg = Segment("▀", base + Style(color=upper))
        else:
            seg = Segment("▀", base + Style(color=upper, bgcolor=lower))
        _CELLS[key] = seg
    return seg
