"""Every message the viewer's app, screens and widgets send one another.

Dataclass :class:`~textual.message.Message` subclasses with a one-line docstring each. A bursty message defines
``can_replace`` so that a newer one replaces an older one still queued; one that must never be lost says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from .source import SourceUpdate


@dataclass
class SourceUpdated(Message):
    """A source emitted a batch of records and/or news about its connection (posted to the app)."""

    update: SourceUpdate
    """The batch. Records in it must be applied, so a queued one is never replaced: the source batches instead."""

    def can_replace(self, message: Message) -> bool:
        return False


@dataclass
class MetricSelected(Message):
    """The user selected the metric that the chart shows (bubbles from the metric list to the screen)."""

    name: str
    """The metric's name, as in :meth:`tuimon.state.RunState.metric_names`."""

    def can_replace(self, message: Message) -> bool:
        # Holding ↓ makes a burst of selections; only the newest one still queued matters.
        return isinstance(message, MetricSelected)


@dataclass
class AlertChosen(Message):
    """The user chose an alert in the alert panel (Enter): its detail screen should open."""

    alert_id: str | None
    """The alert's id; ``None`` to open the detail screen at the most severe active alert (or the history)."""


@dataclass
class AlertActionRequested(Message):
    """The user pressed ``a`` on an alert's suggested action (bubbles to the app; a handler calls ``stop()``)."""

    alert_id: str
    """The alert's id (``rule:scope``)."""
    action: dict[str, Any]
    """The action as the alert record has it: ``{"command": str, "args": dict, "label": str}``."""

    def can_replace(self, message: Message) -> bool:
        return False


@dataclass
class CommandChanged(Message):
    """A live command this viewer sent changed state: pending, queued, applied, rejected or no answer (to the app)."""

    command_id: str
    """The command's id; its state is in the run state's ``commands`` log."""
