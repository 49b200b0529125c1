"""Every message the viewer's app, screens and widgets send one another.

Dataclass :class:`~textual.message.Message` subclasses with a one-line docstring each. A bursty message defines
``can_replace`` so that a newer one replaces an older one still queued; one that must never be lost says so.
"""

from __future__ import annotations

from dataclasses import dataclass

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
