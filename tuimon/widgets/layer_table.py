"""Every parameter tensor at the latest sample: one row each, sortable and filterable."""

from __future__ import annotations

import math

import numpy as np
from rich.text import Text
from textual.widgets import DataTable

from ..layers import ActState, LayerState

SORTS: tuple[tuple[str, str], ...] = (
    ("model", "model order"),
    ("grad_norm", "grad norm ↓"),
    ("weight_norm", "weight norm ↓"),
    ("update_ratio", "update ratio ↓"),
    ("grad_zero", "zeros ↓"),
    ("name", "name"),
)
"""The sort orders ``o`` cycles through: ``(key, label)``; statistics sort largest first, NaN/Inf on top."""

COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("shape", "shape", 11),
    ("grad_norm", "grad norm", 9),
    ("weight_norm", "weight", 9),
    ("update_ratio", "upd ratio", 9),
    ("grad_zero", "zeros", 6),
    ("dead", "dead", 4),
    ("sat", "sat", 4),
)
"""The columns after the name: ``(key, header, width)``. ``dead`` and ``sat`` are the latest dead and saturated
fractions of the activation that follows the parameter's module (:meth:`ActState.for_param_modules`), ``–`` when
there is none or the run has no activation statistics."""
NAME_MAX = 32
NAME_MIN = 12
"""The name column's width at least: on a narrow screen the last columns (``sat``, then ``dead``, which the
activations table shows too) give way before the names shrink below this."""


def format_cell(key: str, value: float | None) -> Text:
    """One statistic's cell: 4 significant digits, a percentage for zeros, ``–`` when not measured, NaN/Inf red."""
    if value is None or (math.isnan(value) and key != "nonfinite"):
        return Text("–", style="dim", justify="right")
    if not math.isfinite(value):
        return Text("NaN/Inf", style="bold #ff00ff", justify="right")
    if key in ("grad_zero", "dead", "sat"):
        return Text(f"{value * 100:.0f}%", justify="right")
    return Text(f"{value:.3g}", justify="right")


def format_shape(shape: tuple[int, ...]) -> str:
    """``8×1×3×3``; ``scalar`` for a 0-d tensor."""
    return "×".join(str(d) for d in shape) if shape else "scalar"


class LayerTable(DataTable[Text]):
    """One row per parameter tensor (keyed by its name) at the latest sample.

    Rows come in through :meth:`update`; :attr:`sort` (``o`` on the layers screen cycles it) and :attr:`filter`
    (a case-insensitive substring of the name) choose and order them.

    Args:
        name: The widget's name.
        id: The widget's id.
        classes: The widget's CSS classes.
    """

    DEFAULT_CSS = """
    LayerTable {
        height: 1fr;
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self._layers: LayerState | None = None
        self._acts: ActState | None = None
        self.sort = "model"
        """The sort order: a key of :data:`SORTS`."""
        self.filter = ""
        """Only names containing this (case-insensitive) are listed."""
        self._key: tuple[object, ...] | None = None
        self.names: list[str] = []
        """The names listed, top to bottom."""

    def update(self, layers: LayerState, acts: ActState | None = None) -> None:
        """Show the latest sample of ``layers``; cheap when neither it nor the sort or filter changed.

        Args:
            layers: The per-layer state.
            acts: The activation statistics for the ``dead`` and ``sat`` columns (default: the last ones given).
        """
        self._layers = layers
        if acts is not None:
            self._acts = acts
        a = self._acts
        key = (
            id(layers),
            layers.version,
            id(a),
            a.version if a is not None else -1,
            self.sort,
            self.filter,
            self.size.width,
        )
        if key != self._key:
            self._key = key
            self._rebuild()

    def on_resize(self) -> None:
        if self._layers is not None:
            self.update(self._layers)

    def _fit_columns(self, longest: int) -> tuple[int, tuple[tuple[str, str, int], ...]]:
        """The name column's width and the columns after it that fit the table's width (all when not laid out)."""
        width = self.size.width - 1  # the vertical scrollbar's column
        pad = 2 * self.cell_padding
        columns = COLUMNS
        if width <= 0:
            return min(NAME_MAX, max(4, longest)), columns
        while len(columns) > 5 and NAME_MIN + pad + sum(w + pad for _, _, w in columns) > width:
            columns = columns[:-1]
        room = width - pad - sum(w + pad for _, _, w in columns)
        return max(4, min(NAME_MAX, longest, room)), columns

    def cycle_sort(self) -> str:
        """Sort by the next order of :data:`SORTS`; returns its label."""
        keys = [k for k, _ in SORTS]
        self.sort = keys[(keys.index(self.sort) + 1) % len(keys)]
        if self._layers is not None:
            self.update(self._layers)
        return dict(SORTS)[self.sort]

    def set_filter(self, text: str) -> None:
        """List only the names that contain ``text`` (case-insensitive)."""
        self.filter = text
        if self._layers is not None:
            self.update(self._layers)

    def _order(self, layers: LayerState) -> list[int]:
        needle = self.filter.lower()
        idx = [i for i, n in enumerate(layers.names) if needle in n.lower()]
        if self.sort == "name":
            return sorted(idx, key=lambda i: layers.names[i])
        if self.sort != "model":
            stat = self.sort

            def key(i: int) -> tuple[int, float]:
                v = layers.latest_value(stat, i)
                if v is None or math.isnan(v):
                    return (2, 0.0)  # not measured: last
                return (0, 0.0) if not math.isfinite(v) else (1, -v)  # NaN/Inf first, then largest

            if stat in ("grad_norm", "grad_zero", "update_ratio") and "grad_nonfinite" in layers.latest:
                bad = layers.latest["grad_nonfinite"]
                return sorted(idx, key=lambda i: (0, 0.0) if bad[i] and stat != "grad_zero" else key(i))
            return sorted(idx, key=key)
        return idx

    def _rebuild(self) -> None:
        layers = self._layers
        if layers is None:
            return
        selected = self.names[self.cursor_row] if 0 <= self.cursor_row < len(self.names) else None
        order = self._order(layers)
        self.names = [layers.names[i] for i in order]
        name_w, columns = self._fit_columns(max([4, *(len(n) for n in self.names)]))
        self.clear(columns=True)
        sort_label = {k: "▼" for k, _ in SORTS[1:5]}
        self.add_column(Text("name" + (" ▲" if self.sort == "name" else "")), width=name_w, key="name")
        for key, header, width in columns:
            mark = sort_label.get(key, "") if key == self.sort else ""
            self.add_column(Text(header + mark, justify="right"), width=width, key=key)
        bad = layers.latest.get("grad_nonfinite")
        acts = self._acts
        speaks = acts.for_param_modules([p.module for p in layers.params]) if acts is not None else {}
        for i in order:
            p = layers.params[i]
            label = Text(p.name, no_wrap=True, end="")
            if len(p.name) > name_w:
                label = Text("…" + p.name[len(p.name) - name_w + 1 :], no_wrap=True, end="")
            cells = [label, Text(format_shape(p.shape), justify="right", no_wrap=True)]
            for key, _, _ in COLUMNS[1:5]:
                v = layers.latest_value(key, i)
                if (
                    v is not None
                    and bad is not None
                    and bad[i]
                    and key != "weight_norm"
                    and key != "grad_zero"
                ):
                    v = math.inf
                cells.append(format_cell(key, v))
            j = speaks.get(p.module)
            for stat in ("dead", "saturated")[: len(columns) - 5]:
                v = acts.latest_value(stat, j) if acts is not None and j is not None else None
                cells.append(format_cell("dead", v))
            self.add_row(*cells, key=p.name)
        if selected in self.names:
            self.move_cursor(row=self.names.index(selected), animate=False)


ACT_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("type", "type", 11),
    ("mean", "mean", 9),
    ("std", "std", 9),
    ("dead", "dead", 5),
    ("saturated", "sat", 5),
)
"""The activation table's columns after the module name: ``(key, header, width)``."""


class ActTable(DataTable[Text]):
    """One row per measured module (keyed by its name) at the latest ``act_stats`` sample: type, output mean and
    std, dead and saturated fractions (``NaN/Inf`` in the mean column when the output held one).

    Args:
        name: The widget's name.
        id: The widget's id.
        classes: The widget's CSS classes.
    """

    DEFAULT_CSS = """
    ActTable {
        height: 1fr;
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self._key: tuple[object, ...] | None = None
        self._acts: ActState | None = None
        self.filter = ""
        """Only module names containing this (case-insensitive) are listed."""
        self.names: list[str] = []
        """The module names listed, top to bottom."""

    def on_resize(self) -> None:
        if self._acts is not None:
            self.update(self._acts)

    def set_filter(self, text: str) -> None:
        """List only the modules whose names contain ``text`` (case-insensitive)."""
        self.filter = text
        if self._acts is not None:
            self.update(self._acts)

    def update(self, acts: ActState) -> None:
        """Show the latest sample of ``acts``; cheap when neither it nor the filter changed."""
        self._acts = acts
        key = (id(acts), acts.version, self.filter, self.size.width)
        if key == self._key:
            return
        self._key = key
        selected = self.names[self.cursor_row] if 0 <= self.cursor_row < len(self.names) else None
        needle = self.filter.lower()
        self.names = [n for n in acts.names if needle in n.lower()]
        name_w = min(NAME_MAX, max([6, *(len(n) for n in self.names)]))
        if self.size.width > 0:  # fit the width (less the scrollbar's column): the names give way
            pad = 2 * self.cell_padding
            room = self.size.width - 1 - pad - sum(w + pad for _, _, w in ACT_COLUMNS)
            name_w = max(6, min(name_w, room))
        self.clear(columns=True)
        self.add_column(Text("module"), width=name_w, key="name")
        for key_, header, width in ACT_COLUMNS:
            self.add_column(Text(header, justify="right"), width=width, key=key_)
        bad = acts.latest.get("nonfinite")
        for i, m in enumerate(acts.modules):
            if needle not in m.name.lower():
                continue
            label = m.name if len(m.name) <= name_w else "…" + m.name[len(m.name) - name_w + 1 :]
            cells = [Text(label, no_wrap=True, end=""), Text(m.type, justify="right", no_wrap=True)]
            flagged = bad is not None and bool(bad[i])
            for stat in ("mean", "std"):
                v = acts.latest_value(stat, i)
                cells.append(format_cell(stat, math.inf if flagged else v))
            for stat in ("dead", "saturated"):
                cells.append(format_cell("dead", acts.latest_value(stat, i)))
            self.add_row(*cells, key=m.name)
        if selected in self.names:
            self.move_cursor(row=self.names.index(selected), animate=False)


def input_line(acts: ActState) -> str:
    """The input statistics in one line: ``input 64×1×8×8 · mean -0.1…0.2 · std … · min … · max …`` (each a
    range over channels, or one value for one channel); empty without ``input_stats``."""
    d = acts.inputs
    if d is None:
        return ""
    parts = [f"input {format_shape(tuple(d['shape']))}"]
    channels = len(d["mean"])
    if channels > 1:
        parts.append(f"{channels} ch")
    for stat in ("mean", "std", "min", "max"):
        a = d[stat]
        if not len(a):
            continue
        if not np.isfinite(a).all():
            parts.append(f"{stat} NaN/Inf")
        elif len(a) == 1 or a.min() == a.max():
            parts.append(f"{stat} {a[0]:.3g}")
        else:
            parts.append(f"{stat} {a.min():.3g}…{a.max():.3g}")
    return " · ".join(parts)
