"""One line for the source's latest note and the agent's latest event."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget

from ._style_cache import CachedComponentStyles


def describe_event(event: dict[str, Any]) -> str:
    """An agent ``event`` record as one short phrase: ``persistence off: disk full (step 120)``."""
    what = str(event.get("what") or "event").replace("_", " ")
    message = str(event.get("message") or "")
    step = event.get("step")
    text = f"{what}: {message}" if message else what
    return f"{text} (step {step:,})" if isinstance(step, int) else text


def elide_path(path: str, width: int) -> str:
    """``path`` in at most ``width`` columns: whole when it fits, else its last components after ``…/`` (the run's
    directory and file name say which run it is; the home directory above them does not)."""
    if len(path) <= width:
        return path
    if width < 2:
        return "…"[:width]
    parts = path.split("/")
    tail = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + 1 + len(tail) + 2 > width:
            break
        tail = f"{part}/{tail}"
    if len(tail) + 2 <= width:
        return "…/" + tail
    return "…" + path[len(path) - width + 1 :]


class NoticeBar(CachedComponentStyles, Widget):
    """The source's latest note (``trainer restarted: ...``) and the latest agent event, side by side.

    Data comes in through :meth:`update` only.
    """

    DEFAULT_CSS = """
    NoticeBar {
        height: 1;
        width: 1fr;
        padding: 0 1;
        background: $boost;
    }
    NoticeBar > .notice-bar--message { color: $text-accent; }
    NoticeBar > .notice-bar--event { color: $text-warning; }
    NoticeBar > .notice-bar--empty { color: $text-muted; }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {"notice-bar--message", "notice-bar--event", "notice-bar--empty"}
    """
    | Class | Description |
    | :- | :- |
    | `notice-bar--message` | The source's note. |
    | `notice-bar--event` | The agent's latest event. |
    | `notice-bar--empty` | The placeholder when there is neither. |
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._message: str | None = None
        self._event: str | None = None
        self._run_file: str | None = None

    @property
    def text(self) -> str:
        """What the bar says, as plain text."""
        return self._compose_text().plain

    def update(
        self, message: str | None, event: dict[str, Any] | None, *, run_file: str | None = None
    ) -> None:
        """Show a note and an event.

        Args:
            message: The source's latest note, if any.
            event: The latest ``event`` payload (``what``, ``message``, ``step``), if any.
            run_file: Where the run is recorded; said while there is nothing else to say.
        """
        described = describe_event(event) if event is not None else None
        if (message, described, run_file) != (self._message, self._event, self._run_file):
            self._message, self._event, self._run_file = message, described, run_file
            self.refresh()

    def _compose_text(self) -> Text:
        parts: list[tuple[str, Any]] = []
        if self._message:
            parts.append((f"ℹ {self._message}", self.component_style("notice-bar--message")))
        if self._event:
            if parts:
                parts.append(("  │  ", self.component_style("notice-bar--empty")))
            parts.append((f"⚑ {self._event}", self.component_style("notice-bar--event")))
        if not parts:
            idle = "no events"
            if self._run_file:
                room = self.content_size.width - len("no events · run file ")
                idle = f"no events · run file {elide_path(self._run_file, max(room, 12))}"
            parts.append((idle, self.component_style("notice-bar--empty")))
        return Text.assemble(*parts, no_wrap=True, end="")

    def render(self) -> RenderResult:
        text = self._compose_text()
        text.truncate(self.content_size.width, overflow="ellipsis")
        return text
