"""The feature maps screen (``f`` on the layers screen): the probe input's feature maps at the latest sample."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static

from ..probe import ProbeState
from ..state import RunState
from ..widgets.feature_maps import FeatureMaps

EMPTY_NOTE = (
    "no feature maps in this run — watch(model, optimizer, probe=x) records a fixed input's feature maps "
    "every probe_every steps"
)
"""What the screen says when the run has sent no ``feature_maps`` record."""
POLL_INTERVAL = 0.1
"""Seconds between two looks at the run state (repaints happen only when the probe state changed)."""


class FeatureMapsScreen(Screen[None]):
    """The latest probe sample in a :class:`~tuimon.widgets.FeatureMaps`, with a title line and the footer.

    It follows the app's :class:`~tuimon.state.RunState` on its own 10 Hz timer and repaints only when the probe
    state's version moved. Without any sample it shows :data:`EMPTY_NOTE` (the ``-empty`` class), or why the agent
    turned the probe off. Layout in ``app.tcss``.

    Args:
        state: The run state whose ``probe`` is shown.
        name: The screen's name.
        id: The screen's id.
        classes: The screen's CSS classes.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,f", "back", "Back"),
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
        self._state = state if state is not None else RunState()
        self._seen: tuple[int, int] | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="fmaps-title")
        yield FeatureMaps(id="fmaps")
        yield Static("", id="fmaps-empty")
        yield Footer()

    def on_mount(self) -> None:
        maps = self.query_one(FeatureMaps)
        maps.border_subtitle = "↑↓ scroll · [ ] layer · m colours"
        maps.focus()
        self.refresh_from_state()
        self.set_interval(POLL_INTERVAL, self.refresh_from_state, name="feature-maps")

    @property
    def probe(self) -> ProbeState:
        """The probe state shown."""
        return self._state.probe

    def refresh_from_state(self) -> None:
        """Show the latest sample; cheap when none arrived since the last call (the timer calls it)."""
        probe = self._state.probe
        key = (id(probe), probe.version)
        if key == self._seen:
            return
        self._seen = key
        empty = not probe.layers and probe.image is None
        self.set_class(empty, "-empty")
        maps = self.query_one(FeatureMaps)
        maps.update(probe)
        if empty:
            note = f"feature-map probe off: {probe.off}" if probe.off else EMPTY_NOTE
            self.query_one("#fmaps-empty", Static).update(Content(note))
        maps.border_title = f"{len(probe.layers)} layers"
        self._title(probe)

    def _title(self, probe: ProbeState) -> None:
        parts = ["[b]feature maps[/b]"]
        parts.append(f"step {probe.step}" if probe.step is not None else "no sample yet")
        if probe.every:
            parts.append(f"probe every {probe.every} steps")
        if probe.off:
            parts.append("[$text-warning]probe off[/]")
        if probe.malformed:
            parts.append(f"[$text-warning]{probe.malformed} malformed[/]")
        self.query_one("#fmaps-title", Static).update(Content.from_markup(" · ".join(parts)))

    def action_back(self) -> None:
        """Go back to the layers screen."""
        self.dismiss(None)
