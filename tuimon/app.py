"""The viewer app and the one factory that builds it, for the CLI and the tests alike.

Data flow: a :class:`~tuimon.source.Source` runs in a worker on the app's event loop (so zmq.asyncio sockets live on
that loop) and calls ``emit`` with batches; ``emit`` posts :class:`~tuimon.messages.SourceUpdated`; its handler
applies the batch to the :class:`~tuimon.state.RunState` and only marks the view dirty. A 10 Hz timer repaints the
screen when something changed, so 10,000 records a second never mean 10,000 repaints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.worker import Worker, WorkerState, get_current_worker

from tuimon_agent.discovery import ConnectionInfo

from .app_commands import LiveCommandsMixin
from .messages import SourceUpdated
from .screens import ChecksScreen, HelpScreen, LayersScreen, OverviewScreen, PickRun
from .screens.alert_detail import AlertDetail
from .screens.command_dialog import LiveCommands
from .screens.command_history import CommandHistoryScreen
from .source import Source, SourceUpdate
from .state import RunState

REPAINT_INTERVAL = 0.1
"""Seconds between repaints at most (10 Hz)."""

MakeSource = Callable[[ConnectionInfo], Source]

FindRun = Callable[[], "ConnectionInfo | str | None"]
"""Polled while the app waits for a run it started (``tuimon demo``): the run's connection info once it is live,
a reason (``str``) when it will never appear (the process exited), ``None`` while it is still starting."""

WAIT_POLL = 0.1
"""Seconds between two polls of a :data:`FindRun`."""


class TuimonApp(LiveCommandsMixin, App[None]):
    """The tuimon viewer: one run's live (or replayed) state. Build it with :func:`make_app`.

    Args:
        source: Where records come from; ``None`` to pick one of ``choices`` first (or to wait forever).
        choices: Live runs to pick from when there is no ``source``; a picker is shown when there are several.
        make_source: Builds the source for the picked run (default: :class:`~tuimon.source.LiveSource`).
        wait_for: With no ``source``: a run that is being started, as ``(what to show meanwhile, FindRun)``; the
            app shows the line at once and attaches when the run appears (or shows why it never will).
    """

    CSS_PATH = "app.tcss"
    TITLE = "tuimon"
    COMMANDS = App.COMMANDS | {LiveCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("C", "checks", "Checks"),
        Binding("g", "layers", "Layers"),
        # live commands (tuimon/app_commands.py)
        Binding("l", "set_lr", "LR"),
        Binding("c", "set_clip", "Clip", show=False),
        Binding("w", "set_weight_decay", "WD", show=False),
        Binding("p", "pause_resume", "Pause", show=False),
        Binding("s", "checkpoint", "Checkpoint", show=False),
        Binding("S", "stop", "Stop", show=False),
        Binding("h", "command_history", "Commands", show=False),
    ]

    def __init__(
        self,
        source: Source | None = None,
        *,
        choices: list[ConnectionInfo] | None = None,
        make_source: MakeSource | None = None,
        wait_for: tuple[str, FindRun] | None = None,
    ) -> None:
        super().__init__()
        self._wait_for = wait_for
        self.source = source
        self.choices = list(choices or [])
        self._make_source = make_source
        self.state = RunState()
        """Everything known about the run; changed only by :meth:`on_source_updated`."""
        self.status = "waiting"
        """The source's latest connection state."""
        self.notice: str | None = None
        """The source's latest note for the user."""
        self.repaints = 0
        """How many times the timer repainted the screen."""
        self._dirty = True
        self._reset = False
        self.overview = OverviewScreen()

    def get_default_screen(self) -> Screen:
        return self.overview

    def on_mount(self) -> None:
        self.set_interval(REPAINT_INTERVAL, self._repaint, name="repaint")
        if self.source is not None:
            self._start(self.source)
        elif len(self.choices) == 1:
            self._start(self._source_for(self.choices[0]))
        elif self.choices:
            self.push_screen(PickRun(self.choices), self._picked)
        elif self._wait_for is not None:
            self.notice = self._wait_for[0]
            self.run_worker(self._wait_for_run, name="wait for the run", thread=True, exit_on_error=False)

    def _wait_for_run(self) -> None:
        """Poll the :data:`FindRun` (in a thread: it reads the runtime directory) until the run appears."""
        assert self._wait_for is not None
        find = self._wait_for[1]
        worker = get_current_worker()
        while not worker.is_cancelled:
            found = find()
            if isinstance(found, ConnectionInfo):
                self.call_from_thread(self._start, self._source_for(found))
                return
            if isinstance(found, str):
                self.call_from_thread(self._never_started, found)
                return
            time.sleep(WAIT_POLL)

    def _never_started(self, why: str) -> None:
        self.notice = why
        self.status = "ended"
        self._dirty = True

    def _source_for(self, info: ConnectionInfo) -> Source:
        if self._make_source is not None:
            return self._make_source(info)
        from .source import LiveSource

        return LiveSource(info)

    def _picked(self, info: ConnectionInfo | None) -> None:
        if info is None:
            self.exit()
            return
        self._start(self._source_for(info))

    def _start(self, source: Source) -> None:
        """Run ``source`` in a worker on this event loop, replacing any source that runs now."""
        self.source = source
        self._dirty = True
        self.run_worker(
            source.run(self._emit),
            name=f"source {source.label}",
            group="source",
            exclusive=True,
            exit_on_error=False,
        )

    def _emit(self, update: SourceUpdate) -> None:
        """The callback a source calls (on this loop) with each batch."""
        self.post_message(SourceUpdated(update))

    def on_source_updated(self, message: SourceUpdated) -> None:
        """Apply a batch to the state and mark the view dirty; the timer repaints."""
        update = message.update
        state = self.state
        if update.reset:
            state.reset()
            self._reset = True
            self.drop_command_client()
        if update.records:
            state.apply_many(update.records)
        if update.malformed:
            state.note_malformed(update.malformed)
        if update.status is not None:
            self.status = update.status
        if update.message is not None:
            self.notice = update.message
        self._dirty = True

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "source" or event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        self.notice = f"source failed: {type(error).__name__}: {error}"
        self.status = "ended"
        self._dirty = True

    @property
    def display_status(self) -> str:
        """The state the header shows: the source's, except that an end record turns ``live`` into ``ended``."""
        if self.state.ended and self.status in ("live", "stale", "waiting"):
            return "ended"
        return self.status

    def _repaint(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self.repaints += 1
        if self._reset:
            self._reset = False
            self.overview.clear()
        label = self.source.label if self.source is not None else "a run"
        notice = self.command_notice() or self.notice
        try:
            self.overview.update(self.state, status=self.display_status, label=label, notice=notice)
        except NoMatches:  # the app is exiting: the timer fired while the screens were being torn down
            return
        for screen in self.screen_stack:  # the checks and layers screens, also while the help covers them
            # A screen pushed but not composed yet is skipped: its on_mount shows the state.
            if (
                isinstance(screen, (ChecksScreen, LayersScreen, AlertDetail, CommandHistoryScreen))
                and screen.is_mounted
            ):
                screen.update(self.state)

    def action_help(self) -> None:
        """Show the help screen (or close it)."""
        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss(None)
        else:
            self.push_screen(HelpScreen())

    def action_checks(self) -> None:
        """Show the sanity checks screen over the overview (or close it)."""
        if isinstance(self.screen, ChecksScreen):
            self.screen.dismiss(None)
        elif self.screen is self.overview:
            self.push_screen(ChecksScreen(self.state))

    def action_layers(self) -> None:
        """Show the per-layer statistics screen over the overview (or close it)."""
        if isinstance(self.screen, LayersScreen):
            self.screen.dismiss(None)
        elif self.screen is self.overview:
            self.push_screen(LayersScreen(self.state))


def make_app(
    source: Source | None = None,
    *,
    choices: list[ConnectionInfo] | None = None,
    make_source: MakeSource | None = None,
    wait_for: tuple[str, FindRun] | None = None,
) -> TuimonApp:
    """Build the viewer app: the one factory for the CLI and the tests.

    Args:
        source: Where records come from (a :class:`~tuimon.source.LiveSource` or a
            :class:`~tuimon.source.FileSource`).
        choices: Live runs to pick from, when ``source`` is ``None``; several show a picker first.
        make_source: Builds the source for the picked run (default: ``LiveSource``).
        wait_for: A run being started: ``(what to show meanwhile, FindRun)`` (see :class:`TuimonApp`).

    Returns:
        The app, not yet running.
    """
    return TuimonApp(source, choices=choices, make_source=make_source, wait_for=wait_for)
