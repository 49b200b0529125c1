"""A heatmap of one per-parameter statistic over the whole run: parameter tensors down, time across.

Each cell is a half block (``▀``, foreground = the upper row's colour, background = the lower row's), so a line of
text shows two parameter rows. Colours follow viridis (perceptually uniform, legible to colour-blind readers, and
still ordered when Rich downsamples it to 256 colours) on a log scale (linear 0–100 % for the zero fraction);
NaN/Inf cells are a bright magenta ``×`` (a shape as well as a colour), outside the map, and counted in the legend. When the tensors outnumber the rows,
consecutive tensors are grouped by module prefix (``layer3.*``) and each group shows its maximum (one group a line
when they fit so, else just enough groups to fill the lines two rows each). The same widget
shows the measured modules' dead and saturated output fractions over the run (an :class:`~tuimon.layers.ActState`
in place of the :class:`~tuimon.layers.LayerState`: modules down instead of tensors).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.strip import Strip
from textual.widget import Widget

from ..layers import ActState, LayerState
from ._style_cache import CachedComponentStyles

FRACTIONS = frozenset({"grad_zero", "dead", "saturated"})
"""Statistics that are fractions (shown as percentages, on a linear 0–100 % scale)."""
ACT_STATS = frozenset({"dead", "saturated"})
"""Statistics of module outputs (an :class:`~tuimon.layers.ActState`), not of parameter tensors."""
STATS: dict[str, tuple[str, bool]] = {
    "grad_norm": ("grad norm", True),
    "update_ratio": ("update ratio", True),
    "weight_norm": ("weight norm", True),
    "grad_zero": ("zero grads", False),
    "dead": ("dead units", False),
    "saturated": ("saturated", False),
}
"""The statistics the heatmap can show: ``stat: (label, log scale)``."""

VIRIDIS = (
    "#440154",
    "#482878",
    "#3e4a89",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#fde725",
)
"""Viridis sampled at ten stops, dark (low) to yellow (high)."""
NONFINITE_COLOR = "#ff00ff"
"""NaN or Inf: bright magenta, which viridis never reaches."""
NONFINITE_CHAR = "×"
"""A cell (two rows) with a NaN or Inf is drawn as this, not as a half block: it differs from "not measured" and
from every value without colour too (``NO_COLOR``, monochrome terminals)."""
MISSING_COLOR = "#3a3a3a"
"""Not measured (no gradient, no update ratio): dark grey."""
CURSOR_COLOR = "#ffffff"
"""The cursor's half cell."""
LEVELS = 64
"""Colour levels between the map's ends (interpolated between the stops)."""
_NONFINITE, _MISSING, _BLANK = -2, -1, -3
_MAX_LABEL = 28
_FOOTER_LINES = 3  # time axis, legend, status


def _hex(c: str) -> tuple[int, int, int]:
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def _palette() -> list[str]:
    stops = [_hex(c) for c in VIRIDIS]
    out = []
    for i in range(LEVELS):
        x = i / (LEVELS - 1) * (len(stops) - 1)
        j = min(int(x), len(stops) - 2)
        f = x - j
        rgb = (round(a + (b - a) * f) for a, b in zip(stops[j], stops[j + 1], strict=True))
        out.append("#{:02x}{:02x}{:02x}".format(*rgb))
    return out


PALETTE = _palette()
"""The :data:`LEVELS` colours, low to high."""


def group_rows(names: list[str], max_rows: int) -> list[tuple[str, int, int]]:
    """Rows for ``names`` in at most ``max_rows``: one per name when they fit, else consecutive names grouped by
    the deepest module prefix that fits (``layer3.*``), else in equal runs.

    Args:
        names: Parameter names, model order.
        max_rows: The most rows wanted (>= 1).

    Returns:
        ``(label, start, stop)`` per row: the names ``names[start:stop]``.
    """
    n = len(names)
    max_rows = max(1, max_rows)
    if n <= max_rows:
        return [(name, i, i + 1) for i, name in enumerate(names)]
    parts = [name.split(".") for name in names]
    for depth in range(max(len(p) for p in parts) - 1, 0, -1):
        groups: list[tuple[str, int, int]] = []
        for i, p in enumerate(parts):
            key = ".".join(p[:depth]) if len(p) > depth else names[i]
            if groups and groups[-1][0] == key:
                groups[-1] = (key, groups[-1][1], i + 1)
            else:
                groups.append((key, i, i + 1))
            if len(groups) > max_rows:
                break
        if len(groups) <= max_rows:
            return [(k if b - a == 1 and k == names[a] else f"{k}.*", a, b) for k, a, b in groups]
    size = math.ceil(n / max_rows)
    out = []
    for a in range(0, n, size):
        b = min(n, a + size)
        first, last = names[a].rpartition(".")[0] or names[a], names[b - 1].rpartition(".")[0] or names[b - 1]
        out.append((f"{first}…{last}.*" if first != last else f"{first}.*", a, b))
    return out


def fill_rows(names: list[str], max_rows: int) -> list[tuple[str, int, int]]:
    """Like :func:`group_rows`, but with just enough consecutive names grouped by module prefix to fit, the deepest
    prefixes first and in model order: 22 tensors on 20 rows are 18 tensors and 2 groups (10 lines of half blocks),
    where :func:`group_rows` makes 12 groups (6 lines of half blocks, 4 left empty).

    Args:
        names: Parameter names, model order.
        max_rows: The most rows wanted (>= 1).

    Returns:
        ``(label, start, stop)`` per row: the names ``names[start:stop]``.
    """
    n = len(names)
    max_rows = max(1, max_rows)
    if n <= max_rows:
        return [(name, i, i + 1) for i, name in enumerate(names)]
    parts = [name.split(".") for name in names]
    rows: list[tuple[str | None, int, int]] = [(None, i, i + 1) for i in range(n)]  # (group key, start, stop)
    for depth in range(max(len(p) for p in parts) - 1, 0, -1):
        count = len(rows)
        merged: list[tuple[str | None, int, int]] = []
        j = 0
        while j < len(rows):
            a = rows[j][1]
            key = ".".join(parts[a][:depth]) if len(parts[a]) > depth else None
            k = j + 1
            while key is not None and k < len(rows) and _prefix(parts, rows[k], depth) == key:
                k += 1
            if k - j > 1 and count > max_rows:
                merged.append((key, a, rows[k - 1][2]))
                count -= k - j - 1
            else:
                merged.extend(rows[j:k])
            j = k
        rows = merged
        if count <= max_rows:
            return [(names[a] if key is None else f"{key}.*", a, b) for key, a, b in rows]
    size = math.ceil(n / max_rows)
    out = []
    for a in range(0, n, size):
        b = min(n, a + size)
        first, last = names[a].rpartition(".")[0] or names[a], names[b - 1].rpartition(".")[0] or names[b - 1]
        out.append((f"{first}…{last}.*" if first != last else f"{first}.*", a, b))
    return out


def _prefix(parts: list[list[str]], row: tuple[str | None, int, int], depth: int) -> str | None:
    """The module prefix ``depth`` deep that every name of ``row`` shares, or ``None``."""
    _, a, b = row
    if any(len(parts[i]) <= depth for i in range(a, b)):
        return None
    key = ".".join(parts[a][:depth])
    return key if all(".".join(parts[i][:depth]) == key for i in range(a + 1, b)) else None


def pair_label(upper: str, lower: str | None) -> str:
    """The label of a line that shows two rows: ``0.weight/bias`` when they share a prefix, else both names."""
    if lower is None:
        return upper
    a, b = upper.split("."), lower.split(".")
    common = 0
    while common < min(len(a), len(b)) - 1 and a[common] == b[common]:
        common += 1
    if common:
        return ".".join(a) + "/" + ".".join(b[common:])
    return f"{upper}/{lower}"


def format_stat(stat: str, value: float) -> str:
    """A value of a statistic as the legend and the status line show it."""
    if stat in FRACTIONS:
        return f"{value * 100:.3g}%"
    return f"{value:.6g}" if value != 0 else "0"


def _short(stat: str, value: float) -> str:
    return (
        f"{value * 100:.0f}%"
        if stat in FRACTIONS
        else f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
    )


class GradHeatmap(CachedComponentStyles, Widget, can_focus=True):
    """One statistic of every parameter tensor over the run, with a cursor that reads out exact values.

    Data comes in through :meth:`update`; it repaints only when the data version, the statistic, the size, the
    cursor, the zoom or the scroll changed. Keys: arrows move the cursor, ``+``/``-`` zoom (history columns per
    cell; the default fits the whole run), ``[``/``]`` (or shift+←/→) scroll older/newer by half a screen.

    Args:
        name: The widget's name.
        id: The widget's id.
        classes: The widget's CSS classes.
    """

    DEFAULT_CSS = """
    GradHeatmap {
        height: 1fr;
        width: 1fr;
    }
    GradHeatmap > .grad-heatmap--label { color: $text-muted; }
    GradHeatmap > .grad-heatmap--label-cursor { color: $text; text-style: bold; }
    GradHeatmap > .grad-heatmap--axis { color: $text-muted; }
    GradHeatmap > .grad-heatmap--status { color: $text; }
    GradHeatmap > .grad-heatmap--nonfinite { color: #ff00ff; text-style: bold; }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "grad-heatmap--label",
        "grad-heatmap--label-cursor",
        "grad-heatmap--axis",
        "grad-heatmap--status",
        "grad-heatmap--nonfinite",
    }
    """
    | Class | Description |
    | :- | :- |
    | `grad-heatmap--label` | Row names. |
    | `grad-heatmap--label-cursor` | The name of the row under the cursor. |
    | `grad-heatmap--axis` | The step axis and the legend's numbers. |
    | `grad-heatmap--status` | The status line (what is under the cursor). |
    | `grad-heatmap--nonfinite` | The legend's NaN/Inf count. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(0, -1)", "Row ↑", show=False),
        Binding("down", "cursor(0, 1)", "Row ↓", show=False),
        Binding("left", "cursor(-1, 0)", "Older", show=False),
        Binding("right", "cursor(1, 0)", "Newer", show=False),
        Binding("plus,equals_sign", "zoom(-1)", "Zoom in", key_display="+"),
        Binding("minus", "zoom(1)", "Zoom out", key_display="-"),
        Binding("left_square_bracket,shift+left", "scroll_cells(-1)", "Older", show=False),
        Binding("right_square_bracket,shift+right", "scroll_cells(1)", "Newer", show=False),
    ]

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._layers: LayerState | ActState | None = None
        self.stat = "grad_norm"
        """The statistic shown (a key of :data:`STATS`)."""
        self.cursor_row = 0
        """The row under the cursor (a tensor, or a group of them)."""
        self._cursor_col: int | None = None  # history column under the cursor; None follows the newest
        self._cells_per: int | None = None  # history columns per cell; None fits the whole run
        self._scroll = 0  # cells hidden at the right (0: the newest is visible)
        self._key: tuple[object, ...] | None = None
        self._lines: list[Strip] = []
        self.rows: list[tuple[str, int, int]] = []
        """The rows shown: ``(label, start, stop)`` over the parameter index."""
        self.grouped = False
        """Whether rows are groups of tensors (more tensors than fit)."""
        self.status = ""
        """The status line's text: the row, steps and exact value under the cursor."""
        self.nonfinite_cells = 0
        """NaN/Inf cells in the shown statistic's history (as the legend counts them)."""
        self._ncols = 0
        self._starts = np.zeros(
            0, dtype=np.int64
        )  # the first history column of each cell, over the whole run
        self._shown_cells = (0, 0)
        self._lines_rows: list[tuple[int, int]] = []
        self._scale = (0.0, 1.0, True)
        self._target: tuple[str, int] | None = None  # show_at()'s row name and step, until the next build

    # -- data in ------------------------------------------------------------------------------------------------

    def update(self, layers: LayerState | ActState, stat: str | None = None) -> None:
        """Show ``stat`` (default: the one shown) of ``layers``; cheap when nothing changed.

        Args:
            layers: The per-layer state, or the activation state for the statistics in :data:`ACT_STATS`.
            stat: A key of :data:`STATS`.
        """
        if stat is not None:
            if stat not in STATS:
                raise ValueError(f"invalid stat={stat!r}: must be one of {', '.join(STATS)}")
            self.stat = stat
        self._layers = layers
        self._rebuild()

    def _state_key(self) -> tuple[object, ...]:
        layers = self._layers
        return (
            id(layers),
            layers.version if layers is not None else -1,
            self.stat,
            self.size,
            self.cursor_row,
            self._cursor_col,
            self._cells_per,
            self._scroll,
        )

    def _rebuild(self, force: bool = False) -> None:
        key = self._state_key()
        if key == self._key and not force:
            return
        self._build()
        self._key = self._state_key()  # _build may clamp the cursor
        self.refresh()

    def on_resize(self) -> None:
        self._rebuild()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        if self.is_mounted:
            self._key = None
            self.refresh()

    # -- keys -----------------------------------------------------------------------------------------------------

    def show_at(self, name: str, step: int) -> None:
        """Put the cursor on the row of ``name`` (a tensor, or the group holding it) at the sample of ``step``
        (the newest sample at or after it), with the whole run in view; an unknown name keeps the row.

        Args:
            name: A row's name (a parameter tensor's, or a module's for the activation statistics).
            step: A training step.
        """
        self._target = (name, int(step))
        self._cells_per = None
        self._scroll = 0
        self._rebuild(force=True)

    def _aim(self, names: list[str], last_steps: np.ndarray) -> None:
        """Move the cursor to :meth:`show_at`'s target (called by the build, which knows the rows)."""
        assert self._target is not None
        name, step = self._target
        self._target = None
        if name in names:
            index = names.index(name)
            self.cursor_row = next(
                (r for r, (_, a, b) in enumerate(self.rows) if a <= index < b), self.cursor_row
            )
        n = len(last_steps)
        if n:
            col = min(n - 1, int(np.searchsorted(last_steps, step, side="left")))
            self._cursor_col = None if col == n - 1 else col

    def action_cursor(self, dx: int, dy: int) -> None:
        """Move the cursor by ``dx`` history columns (as shown) and ``dy`` rows."""
        self.cursor_row = max(0, min(len(self.rows) - 1, self.cursor_row + dy))
        starts, ncols = self._starts, self._ncols
        if dx and ncols:
            col = self._col_of_cursor()
            cell = self._cell_of(col)
            # Step to the next cell that shows another history column (a column may span several cells).
            while 0 <= cell + dx < len(starts) and int(starts[cell + dx]) == col:
                cell += dx
            cell = max(0, min(len(starts) - 1, cell + dx))
            col = int(starts[cell])
            self._cursor_col = None if cell == len(starts) - 1 else col
            first, stop = self._shown_cells
            if cell < first:
                self._scroll += first - cell
            elif cell >= stop:
                self._scroll = max(0, self._scroll - (cell - stop + 1))
        self._rebuild()

    def action_zoom(self, direction: int) -> None:
        """Zoom in (``-1``: fewer history columns per cell) or out (``1``); zooming out to the whole run fits it."""
        fit = self._fit_per()
        per = self._cells_per or fit
        per = max(1, per // 2) if direction < 0 else per * 2
        self._cells_per = None if per >= fit else per
        if self._cells_per is None:
            self._scroll = 0
        self._rebuild()

    def action_scroll_cells(self, direction: int) -> None:
        """Scroll half a screen older (``-1``) or newer (``1``), the cursor with it."""
        first, stop = self._shown_cells
        total = len(self._starts)
        half = max(1, (stop - first) // 2)
        before = self._scroll
        self._scroll = max(0, min(total - (stop - first), self._scroll - direction * half))
        moved = self._scroll - before
        if moved and total:
            cell = max(0, min(total - 1, self._cell_of(self._col_of_cursor()) - moved))
            self._cursor_col = None if cell == total - 1 else int(self._starts[cell])
        self._rebuild()

    def _col_of_cursor(self) -> int:
        if self._cursor_col is None or self._cursor_col >= self._ncols:
            return max(0, self._ncols - 1)
        return self._cursor_col

    def _cell_of(self, col: int) -> int:
        """The last cell that shows history column ``col``."""
        return max(0, int(np.searchsorted(self._starts, col, side="right")) - 1)

    # -- layout ---------------------------------------------------------------------------------------------------

    def _heat_lines(self) -> int:
        """Lines of cells at the current height."""
        h = self.content_size.height
        return max(1, h - _FOOTER_LINES - (1 if h >= 16 else 0))

    def _line_rows(self, lines: int) -> list[tuple[int, int]]:
        """``(upper row, lower row)`` per line: half blocks (two rows a line) when the rows outnumber the lines,
        else whole cells, each row on up to three lines (``-1``: no row)."""
        n = len(self.rows)
        if n > lines:
            return [(2 * y, 2 * y + 1 if 2 * y + 1 < n else -1) for y in range((n + 1) // 2)]
        per = max(1, min(3, lines // max(1, n)))
        return [(r, r) for r in range(n) for _ in range(per)]

    def _line_label(self, y: int) -> str:
        """The label of line ``y``: its row's name, its two rows' (``0.weight/bias``), or blank (a row's 2nd line)."""
        rows, (upper, lower) = self.rows, self._lines_rows[y]
        if upper == lower:
            return rows[upper][0] if y == 0 or self._lines_rows[y - 1][0] != upper else ""
        if lower < 0:
            return rows[upper][0]
        a, b = rows[upper][0], rows[lower][0]
        if self.grouped and (a.endswith("*") or b.endswith("*")):
            return f"{a}/{b}"
        return pair_label(a, b)

    def _fit_per(self) -> int:
        """History columns per cell that fit the whole run."""
        cells = max(1, self.content_size.width - self._label_width() - 1)
        return max(1, math.ceil(self._ncols / cells))

    def _label_width(self) -> int:
        longest = max((len(self._line_label(y)) for y in range(len(self._lines_rows))), default=4)
        return min(longest, _MAX_LABEL, max(6, self.content_size.width // 3))

    def _build(self) -> None:
        layers = self._layers
        w, h = self.content_size
        self._lines = []
        if layers is None or w <= 0 or h <= 0 or not layers.names:
            self.rows, self.status, self._lines_rows = [], "", []
            return
        values, bad = layers.history(self.stat)
        names = layers.names
        if self.stat in ACT_STATS:  # only the modules that have this measure (ReLUs for dead units, ...)
            keep = ~np.isnan(values).all(axis=1) | bad.any(axis=1)
            if keep.any():
                names = [n for n, k in zip(names, keep.tolist(), strict=True) if k]
                values, bad = values[keep], bad[keep]
        lines = self._heat_lines()
        self.rows = group_rows(names, 2 * lines)
        if len(self.rows) > lines and len(self.rows) < len(names):
            # Groups on half-block lines would leave lines empty: group only as many tensors as needed instead.
            self.rows = fill_rows(names, 2 * lines)
        self.grouped = len(self.rows) < len(names)
        self._lines_rows = self._line_rows(lines)
        label_w = self._label_width()
        cells_w = max(1, w - label_w - 1)
        self.cursor_row = max(0, min(len(self.rows) - 1, self.cursor_row))

        first_steps, last_steps, counts = layers.steps()
        ncols = self._ncols = values.shape[1]
        if self._target is not None:  # show_at(): aim the cursor now that the rows are known
            self._aim(names, last_steps)
        if self.grouped:
            starts = np.array([a for _, a, _ in self.rows])
            values = np.fmax.reduceat(values, starts, axis=0)
            bad = np.logical_or.reduceat(bad, starts, axis=0)
        # Cells over the whole run: the cell j shows history columns starts[j] .. starts[j+1]-1 (a repeated start
        # stretches a short run's columns over several cells). Fit: the run fills the width (up to 4 cells a
        # column); zoomed: a fixed number of columns per cell, scrolled.
        fit = max(1, math.ceil(ncols / cells_w))
        if self._cells_per is not None and self._cells_per >= fit:
            self._cells_per = None
        if not ncols:
            cstarts = np.zeros(0, dtype=np.int64)
        elif self._cells_per is None:
            total = min(cells_w, 4 * ncols)
            cstarts = (np.arange(total, dtype=np.int64) * ncols) // total
        else:
            cstarts = np.arange(0, ncols, self._cells_per, dtype=np.int64)
        self._starts = cstarts
        total = len(cstarts)
        if total:
            values = np.fmax.reduceat(values, cstarts, axis=1)
            bad = np.logical_or.reduceat(bad, cstarts, axis=1)
            first_steps = np.minimum.reduceat(first_steps, cstarts)
            last_steps = np.maximum.reduceat(last_steps, cstarts)
            counts = np.add.reduceat(counts, cstarts)
        shown = min(cells_w, total)
        self._scroll = max(0, min(self._scroll, total - shown))
        stop = total - self._scroll
        first = stop - shown
        self._shown_cells = (first, stop)
        cursor_col = self._col_of_cursor()
        cursor_cell = self._cell_of(cursor_col) if total else 0
        if total:
            cursor_col = int(cstarts[cursor_cell])  # the first column of the cell that shows it
        if total and not first <= cursor_cell < stop:
            cursor_cell = min(max(cursor_cell, first), stop - 1)
            cursor_col = int(cstarts[cursor_cell])
            self._cursor_col = None if cursor_cell == total - 1 else cursor_col
        cursor_cells = (cstarts == cursor_col) if total else np.zeros(0, dtype=bool)

        # Colour levels over the whole run (not the visible part), so scrolling keeps the colours.
        log = STATS[self.stat][1]
        finite = values[np.isfinite(values) & ~bad]
        self.nonfinite_cells = int(np.count_nonzero(bad))
        if log:
            positive = finite[finite > 0]
            lo = float(positive.min()) if positive.size else 1.0
            hi = float(positive.max()) if positive.size else 10.0
            if hi <= lo:
                lo, hi = lo / math.sqrt(10), hi * math.sqrt(10)
            scale_lo, scale_hi = math.log10(lo), math.log10(hi)
            with np.errstate(divide="ignore", invalid="ignore"):
                pos = (np.log10(np.maximum(values, lo)) - scale_lo) / (scale_hi - scale_lo)
        else:
            scale_lo, scale_hi = 0.0, 1.0
            pos = values.astype(np.float64)
        with np.errstate(invalid="ignore"):
            levels = np.rint(np.clip(pos, 0.0, 1.0) * (LEVELS - 1))
        levels = np.where(np.isnan(values), _MISSING, levels).astype(np.int64)
        levels[bad] = _NONFINITE
        self._scale = (scale_lo, scale_hi, log)

        view = levels[:, first:stop].tolist()
        cur = cursor_cells[first:stop].tolist()
        base = self.rich_style
        label_style = base + self.component_style("grad-heatmap--label")
        label_cursor = base + self.component_style("grad-heatmap--label-cursor")
        axis = base + self.component_style("grad-heatmap--axis")
        for y in range(lines):
            segs: list[Segment] = []
            if y < len(self._lines_rows):
                r0, r1 = self._lines_rows[y]
                label = self._line_label(y)
                if len(label) > label_w:
                    label = "…" + label[len(label) - label_w + 1 :]
                on_cursor = self.cursor_row in (r0, r1)
                segs.append(Segment(label.rjust(label_w), label_cursor if on_cursor else label_style))
                segs.append(Segment("▸" if on_cursor and label else " ", label_cursor))
                up = view[r0]
                down = view[r1] if r1 >= 0 else [_BLANK] * len(up)
                for x, (a, b) in enumerate(zip(up, down, strict=True)):
                    ca = CURSOR_COLOR if cur[x] and self.cursor_row == r0 else _color(a)
                    cb = CURSOR_COLOR if cur[x] and self.cursor_row == r1 else _color(b)
                    if (
                        a == _NONFINITE or b == _NONFINITE
                    ):  # a shape, not only a colour: "×" over the other half
                        mark = CURSOR_COLOR if cur[x] and self.cursor_row in (r0, r1) else NONFINITE_COLOR
                        segs.append(_cell(mark, cb if a == _NONFINITE else ca, base, NONFINITE_CHAR))
                    else:
                        segs.append(_cell(ca, cb, base))
            self._lines.append(Strip(segs).simplify())

        # Time axis: the first and last step shown.
        if shown:
            left = f"step {int(first_steps[first])}"
            right = f"{int(last_steps[stop - 1])}"
            gap = shown - len(left) - len(right)
            text = left + " " * gap + right if gap >= 1 else left[:shown]
        else:
            text = "no samples yet"
        self._lines.append(Strip([Segment(" " * (label_w + 1), base), Segment(text, axis)]))

        # Legend: the colour bar with its ends (and decade ticks when there is a line for them), NaN/Inf count.
        scale = "log scale" if log else "linear"
        lo_txt = _short(self.stat, 10**scale_lo if log else scale_lo)
        hi_txt = _short(self.stat, 10**scale_hi if log else scale_hi)
        rest = len(lo_txt) + len(hi_txt) + len(f" NaN/Inf {self.nonfinite_cells}") + len(" not measured") + 9
        bar_w = max(6, min(30, w - label_w - 1 - rest))
        legend = [Segment(scale[:label_w].rjust(label_w) + " ", label_style), Segment(lo_txt + " ", axis)]
        legend += [
            _cell(PALETTE[round(i / (bar_w - 1) * (LEVELS - 1))], None, base, "█") for i in range(bar_w)
        ]
        legend += [Segment(" " + hi_txt + "  ", axis), _cell(NONFINITE_COLOR, None, base, NONFINITE_CHAR)]
        nonfinite = base + self.component_style("grad-heatmap--nonfinite") if self.nonfinite_cells else axis
        legend += [
            Segment(f" NaN/Inf {self.nonfinite_cells}  ", nonfinite),
            _cell(MISSING_COLOR, None, base, "■"),
        ]
        legend.append(Segment(" not measured", axis))
        self._lines.append(Strip(legend))
        if h >= 16:
            ticks = [" "] * bar_w
            if log:
                for d in range(math.ceil(scale_lo), math.floor(scale_hi) + 1):
                    x = round((d - scale_lo) / (scale_hi - scale_lo) * (bar_w - 1))
                    t = f"1e{d}"
                    x0 = min(max(0, x - len(t) // 2), bar_w - len(t))
                    if x0 >= 0 and all(c == " " for c in ticks[max(0, x0 - 1) : x0 + len(t) + 1]):
                        ticks[x0 : x0 + len(t)] = list(t)
            start = label_w + 1 + len(lo_txt) + 1
            self._lines.append(Strip([Segment(" " * start, base), Segment("".join(ticks), axis)]))

        self.status = self._status(values, bad, first_steps, last_steps, counts, cursor_cell, total)
        title = f"{STATS[self.stat][0]} · {len(names)} {self._noun()}"
        if len(names) < len(layers.names):
            title += f" of {len(layers.names)}"
        if self.grouped:
            title += f" in {len(self.rows)} groups (max)"
        g = layers.global_grad_norm.last_value if isinstance(layers, LayerState) else None
        if g is not None:
            title += f" · ‖g‖ {g:.4g}"
        if self.border_title != title:
            self.border_title = title
        status_style = base + self.component_style("grad-heatmap--status")
        self._lines.append(Strip([Segment(self.status, status_style)]))

    def _status(
        self,
        values: np.ndarray,
        bad: np.ndarray,
        first_steps: np.ndarray,
        last_steps: np.ndarray,
        counts: np.ndarray,
        cell: int,
        total: int,
    ) -> str:
        label, a, b = self.rows[self.cursor_row]
        who = label if b - a == 1 else f"{label} ({b - a} {self._noun()}, max)"
        if not total:
            return f"{who} · no samples yet"
        s0, s1, n = int(first_steps[cell]), int(last_steps[cell]), int(counts[cell])
        steps = f"step {s0}" if s0 == s1 else f"steps {s0}–{s1} (max of {n})"
        v = float(values[self.cursor_row, cell])
        if bad[self.cursor_row, cell]:
            value = "NaN/Inf"
        elif math.isnan(v):
            value = "not measured"
        else:
            value = format_stat(self.stat, v)
        return f"{who} · {steps} · {STATS[self.stat][0]} {value}"

    def _noun(self) -> str:
        return "modules" if self.stat in ACT_STATS else "tensors"

    # -- paint ------------------------------------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        if self._key is None:
            self._build()
            self._key = self._state_key()
        return self._lines[y] if y < len(self._lines) else Strip.blank(self.size.width, self.rich_style)

    def legend_ticks(self) -> tuple[float, float]:
        """The colour scale's ends, as values (for the tests and the status)."""
        lo, hi, log = self._scale
        return (10**lo, 10**hi) if log else (lo, hi)


def _color(level: int) -> str | None:
    if level >= 0:
        return PALETTE[level]
    if level == _NONFINITE:
        return NONFINITE_COLOR
    if level == _MISSING:
        return MISSING_COLOR
    return None


_CELLS: dict[tuple[str | None, str | None, Style, str], Segment] = {}


def _cell(upper: str | None, lower: str | None, base: Style, char: str = "▀") -> Segment:
    """One half-block cell (cached: a screen repeats a few hundred colour pairs)."""
    key = (upper, lower, base, char)
    seg = _CELLS.get(key)
    if seg is None:
        if len(_CELLS) > 20_000:
            _CELLS.clear()
        if upper is None and lower is None:
            seg = Segment(" ", base)
        elif upper is None:
            seg = Segment("▄", base + Style(color=lower))
        elif lower is None:
            seg = Segment(char, base + Style(color=upper))
        else:
            seg = Segment(char, base + Style(color=upper, bgcolor=lower))
        _CELLS[key] = seg
    return seg
