"""The layers screen: a heatmap of one per-parameter statistic over the run, every tensor at the latest sample, and
the activation statistics of every measured module plus the model's input (``a`` switches the side table when the
screen is narrow; both are shown when it is wide)."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Vertical
from textual.content import Content
from textual.events import Key
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from ..layers import LayerState
from ..state import RunState
from ..widgets import GradHeatmap, HistView, LayerTable
from ..widgets.grad_heatmap import ACT_STATS, STATS
from ..widgets.layer_table import SORTS, ActTable, input_line

EMPTY_NOTE = "no per-layer statistics in this run — watch(model, optimizer) records them every N steps"
"""What the screen says when the run has sent no ``layers`` record."""
STAT_KEYS: tuple[str, ...] = ("grad_norm", "update_ratio", "weight_norm", "grad_zero", "dead", "saturated")
"""The statistics keys ``1``–``6`` pick, in that order (``5`` and ``6``: module outputs, from ``act_stats``)."""
HIST_EMPTY_NOTE = (
    "no histograms in this run yet (watch(..., hist_every=N) records them every N steps, default 500)"
)
"""What the histogram pane says before the run's first ``histograms`` record."""


class LayersScreen(Screen[None]):
    """Per-layer statistics: the heatmap on top (arrows move its cursor), the table below (or beside it when wide).

    The app calls :meth:`update` from its repaint timer; it does nothing unless per-layer data changed. Without
    per-layer statistics the screen shows :data:`EMPTY_NOTE` (the ``-empty`` class). Layout in ``app.tcss``.

    Args:
        state: The run state to show at once (the timer keeps it current after that).
        name: The screen's name.
        id: The screen's id.
        classes: The screen's CSS classes.
    """

    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]] | None] = [(0, "-narrow"), (150, "-wide")]

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("1", "stat('grad_norm')", "Grad norm", show=False),
        Binding("2", "stat('update_ratio')", "Update ratio", show=False),
        Binding("3", "stat('weight_norm')", "Weight norm", show=False),
        Binding("4", "stat('grad_zero')", "Zeros", show=False),
        Binding("5", "stat('dead')", "Dead units", show=False),
        Binding("6", "stat('saturated')", "Saturated", show=False),
        Binding("h", "hists", "Histograms"),
        Binding("a", "activations", "Activations"),
        Binding("f", "feature_maps", "Feature maps", show=False),
        Binding("o", "sort", "Sort"),
        Binding("slash", "filter", "Filter", key_display="/"),
    ]

    def __init__(
        self,
        state: RunState | None = None,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._state = state
        self.stat = "grad_norm"
        """The statistic the heatmap shows (one of :data:`STAT_KEYS`)."""
        self._title_key: tuple[object, ...] | None = None
        self._input_line = ""
        self.selected: str | None = None
        """The parameter tensor whose histograms the pane shows (``None``: the first)."""

    def compose(self) -> ComposeResult:
        yield Static("", id="layers-title")
        with Container(id="layers-body"):
            yield GradHeatmap(id="heatmap")
            yield HistView(id="hist-view")
            with Vertical(id="layers-side"):
                yield Input(
                    placeholder="filter by name (enter keeps it, escape clears it)", id="layers-filter"
                )
                yield LayerTable(id="layer-table")
                yield ActTable(id="act-table")
                yield Static("", id="input-stats")
        yield Static(Content(EMPTY_NOTE), id="layers-empty")
        yield Footer()

    def on_mount(self) -> None:
        heatmap = self.query_one(GradHeatmap)
        heatmap.border_subtitle = "←↑↓→ cursor · [ ] scroll · + - zoom"
        self.query_one(LayerTable).border_title = "latest sample"
        self.query_one(LayerTable).border_subtitle = "o sort · / filter · a activations"
        acts = self.query_one(ActTable)
        acts.border_title = "activations"
        acts.border_subtitle = "a parameters"
        hist = self.query_one(HistView)
        hist.border_title = "histograms"
        hist.border_subtitle = "newest on top · colour = count (log) · h heatmap"
        heatmap.focus()
        self.update(self._state if self._state is not None else RunState())

    @property
    def layer_state(self) -> LayerState:
        """The per-layer state shown."""
        return (self._state or RunState()).layers

    def update(self, state: RunState) -> None:
        """Show the run's latest per-layer statistics; cheap when none arrived since the last call.

        Args:
            state: The run state (its ``layers``).
        """
        self._state = state
        layers = state.layers
        self.set_class(not layers.params, "-empty")
        heatmap = self.query_one(GradHeatmap)
        heatmap.update(state.acts if self.stat in ACT_STATS else layers, self.stat)
        self.query_one(HistView).update(state.hists, self.selected, empty_note=HIST_EMPTY_NOTE)
        self.query_one(LayerTable).update(layers, state.acts)
        acts = state.acts
        self.set_class(bool(acts.modules), "-has-acts")
        self.query_one(ActTable).update(acts)
        line = input_line(acts)
        if line != self._input_line:
            self._input_line = line
            self.query_one("#input-stats", Static).update(Content(line))
        self.set_class(bool(line), "-has-input")
        self._title(layers)

    def _title(self, layers: LayerState) -> None:
        key = (id(layers), layers.version, self.stat, self.size.width)
        if key == self._title_key:
            return
        self._title_key = key
        step = f"step {layers.latest_step}" if layers.latest_step is not None else "no sample yet"
        head = f"layers · {step}   "
        full = sum(len(f"{i} {STATS[s][0]} ") for i, s in enumerate(STAT_KEYS, 1))
        short = len(head) + full > self.size.width - 2  # narrow: only the chosen statistic is named
        parts = []
        for i, stat in enumerate(STAT_KEYS, 1):
            label = f"{i} {STATS[stat][0]}" if stat == self.stat or not short else str(i)
            parts.append(f"[reverse b]{label}[/]" if stat == self.stat else f"[$text-muted]{label}[/]")
        self.query_one("#layers-title", Static).update(
            Content.from_markup(f"[b]layers[/b] · {step}   " + " ".join(parts))
        )

    def on_resize(self) -> None:
        self._title(self.layer_state)

    def action_stat(self, stat: str) -> None:
        """Show another statistic in the heatmap (in place of the histograms, if they are shown)."""
        state = self._state or RunState()
        if stat in ACT_STATS and not state.acts.modules:
            self.notify("no activation statistics in this run", timeout=2)
            return
        self.stat = stat
        self.remove_class("-hists")
        heatmap = self.query_one(GradHeatmap)
        heatmap.update(state.acts if stat in ACT_STATS else state.layers, stat)
        self._title(self.layer_state)

    def action_hists(self) -> None:
        """Show the selected tensor's histograms in place of the heatmap, or the heatmap again.

        The tensor is the one last chosen in the table (enter, or moving its cursor while the histograms show);
        before any choice, the heatmap's cursor row when it is one tensor, else the table's cursor row.
        """
        self.toggle_class("-hists")
        if not self.has_class("-hists"):
            self.query_one(GradHeatmap).focus()
            return
        if self.selected is None:
            heatmap, table = self.query_one(GradHeatmap), self.query_one(LayerTable)
            rows = heatmap.rows
            if self.stat not in ACT_STATS and not heatmap.grouped and 0 <= heatmap.cursor_row < len(rows):
                self.selected = rows[heatmap.cursor_row][0]
            elif 0 <= table.cursor_row < len(table.names):
                self.selected = table.names[table.cursor_row]
        self._show_selected()
        self.remove_class("-acts")
        self.query_one(LayerTable).focus()

    def _show_selected(self) -> None:
        state = self._state or RunState()
        self.query_one(HistView).update(state.hists, self.selected, empty_note=HIST_EMPTY_NOTE)
        if self.selected is not None and self.selected in self.query_one(LayerTable).names:
            table = self.query_one(LayerTable)
            row = table.names.index(self.selected)
            if table.cursor_row != row:
                table.move_cursor(row=row, animate=False)

    @on(LayerTable.RowSelected, "#layer-table")
    def _row_selected(self, event: LayerTable.RowSelected) -> None:
        self.selected = str(event.row_key.value)
        if not self.has_class("-hists"):
            self.add_class("-hists")
        self._show_selected()

    @on(LayerTable.RowHighlighted, "#layer-table")
    def _row_highlighted(self, event: LayerTable.RowHighlighted) -> None:
        if self.has_class("-hists") and event.row_key.value is not None:
            self.selected = str(event.row_key.value)
            self.query_one(HistView).update((self._state or RunState()).hists, self.selected)

    def action_activations(self) -> None:
        """Switch the side table between parameters and activations (both are shown when the screen is wide)."""
        if not self.has_class("-has-acts"):
            self.notify("no activation statistics in this run", timeout=2)
            return
        self.toggle_class("-acts")
        self._refocus()

    def _refocus(self) -> None:
        """Give the focus back to what the screen's keys drive: the heatmap (its arrows, ``+ -`` and ``[ ]``), or,
        while the histograms show, the tensor table that picks their tensor."""
        if self.has_class("-hists"):
            self.query_one(LayerTable).focus()
        else:
            self.query_one(GradHeatmap).focus()

    def action_sort(self) -> None:
        """Sort the table by the next column."""
        self.query_one(LayerTable).cycle_sort()
        self._table_titles()
        self._refocus()

    def _table_titles(self) -> None:
        """The tables' titles: the sort order (parameters), and the filter while one is set (both tables)."""
        table = self.query_one(LayerTable)
        needle = table.filter
        shown = f" · “{needle}”" if needle else ""
        sort = f" · {dict(SORTS)[table.sort]}" if table.sort != "model" else ""
        table.border_title = f"latest sample{sort}{shown}"
        self.query_one(ActTable).border_title = f"activations{shown}"

    def action_filter(self) -> None:
        """Open the filter box (it filters both tables: parameter tensors and modules, by name)."""
        box = self.query_one("#layers-filter", Input)
        self.add_class("-filtering")
        self.set_focus(box)  # at once: box.focus() would wait behind the keys already queued

    @on(Input.Changed, "#layers-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.query_one(LayerTable).set_filter(event.value)
        self.query_one(ActTable).set_filter(event.value)

    @on(Input.Submitted, "#layers-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        self.remove_class("-filtering")
        self.set_class(bool(event.value), "-filtered")
        self._table_titles()
        self._refocus()

    def on_key(self, event: Key) -> None:
        box = self.query_one("#layers-filter", Input)
        # "/head" typed in one burst: the keys after "/" were queued for the heatmap before the box took the focus,
        # and reach this screen before the app runs the "/" binding. Open the box here, at once, and put them in it
        # (the box stops the keys it takes itself), rather than run "h" (histograms) and "a" (activations).
        if event.key == "slash" and not self.has_class("-filtering"):
            event.stop()
            event.prevent_default()
            self.action_filter()
            return
        if self.has_class("-filtering") and event.is_printable and event.character:
            event.stop()
            event.prevent_default()
            box.insert_text_at_cursor(event.character)
            return
        if event.key == "escape" and box.has_focus:
            event.stop()
            event.prevent_default()
            box.value = ""
            self.query_one(LayerTable).set_filter("")
            self.query_one(ActTable).set_filter("")
            self.remove_class("-filtering")
            self.remove_class("-filtered")
            self._table_titles()
            self._refocus()

    def action_feature_maps(self) -> None:
        """Show the probe input's feature maps (``f`` or escape comes back)."""
        from .feature_maps import FeatureMapsScreen

        self.app.push_screen(FeatureMapsScreen(self._state or RunState()))

    def action_back(self) -> None:
        """Go back to the overview."""
        self.dismiss(None)

    def show_layer(self, name: str, step: int, stat: str | None = None) -> None:
        """Put the heatmap's cursor on a layer's row at a step (an alert's onset); callable right after a push.

        Args:
            name: A parameter tensor's name, or a module's: a module with activation statistics is shown with them
                when ``stat`` is one of those (dead units, saturation), else its first parameter tensor (or, for a
                module without parameters such as a ReLU, the nearest one before it in model order).
            step: The step the cursor goes to (the sample at or after it).
            stat: The statistic to show (a key of the heatmap's statistics); ``None`` keeps the one shown.
        """
        if not self.is_mounted:
            self.call_after_refresh(self.show_layer, name, step, stat)
            return
        state = self._state or RunState()
        if stat in ACT_STATS and name in state.acts.names:
            self.action_stat(stat)
            self.query_one(GradHeatmap).show_at(name, step)
            return
        row = _param_for(name, state)
        if row is None:
            self.notify(f"{name} is not among the model's parameters", timeout=3)
            return
        if stat is not None and stat not in ACT_STATS and stat != self.stat:
            self.action_stat(stat)
        elif self.stat in ACT_STATS:
            self.action_stat("grad_norm")
        self.query_one(GradHeatmap).show_at(row, step)


def _param_for(name: str, state: RunState) -> str | None:
    """The parameter tensor that stands for ``name``: itself, its module's first tensor, or (a module without
    parameters) the last tensor of the nearest module before it in model order; ``None`` when there is none."""
    params = state.layers.params
    names = state.layers.names
    if name in names:
        return name
    owned = [p.name for p in params if p.module == name or p.name.startswith(name + ".")]
    if owned:
        return owned[0]
    modules = state.acts.names
    if name in modules:
        by_module = {p.module: p.name for p in params}  # the last tensor of each module
        for m in reversed(modules[: modules.index(name)]):
            if m in by_module:
                return by_module[m]
    return None
