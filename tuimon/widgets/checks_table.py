"""The list of sanity checks, one row each: verdict badge, name, summary and time; its cursor picks the check.

Also the verdict vocabulary the viewer shows everywhere (symbols, colours, counts), so that the overview's badge,
this table and the details agree. Check payloads are the ``check`` records' data as :attr:`RunState.checks` keeps
them; they are read tolerantly (the viewer never imports the agent's torch-side check code).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.events import Click, Resize
from textual.widgets import DataTable

VERDICTS = ("pass", "warn", "fail", "error")
"""The verdicts a check can have, best first (as in ``tuimon_agent.checks.VERDICTS``)."""
SYMBOLS = {"pass": "✓", "warn": "!", "fail": "✗", "error": "?"}
"""One symbol per verdict: it carries the meaning where colour cannot (a monochrome terminal, colour blindness)."""
ERROR_COLOR = "#d75fd7"
"""xterm-256 colour 170 (magenta): a check that could not run. No theme colour is magenta."""
COLORS = {"pass": "$text-success", "warn": "$text-warning", "fail": "$text-error", "error": ERROR_COLOR}
"""The colour of each verdict, as Textual markup and CSS write it."""

VERDICT_WIDTH = 7
"""``? error``: the widest verdict cell."""
NAME_WIDTH = 20
"""The name column at most (the longest check name, ``overfit_one_batch``, has 17 characters)."""
TIME_WIDTH = 7
SUMMARY_MIN = 12


def verdict_of(check: Mapping[str, Any]) -> str:
    """A check payload's verdict; anything unknown reads as ``error`` (as ``CheckResult.from_data`` does)."""
    verdict = check.get("verdict")
    return verdict if verdict in SYMBOLS else "error"


def format_seconds(seconds: Any) -> str:
    """How long a check took: ``0.42 s``, ``12.3 s``, ``125 s`` (``-`` when unknown)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "-"
    if seconds < 10:
        return f"{seconds:.2f} s"
    return f"{seconds:.1f} s" if seconds < 100 else f"{seconds:,.0f} s"


def count_verdicts(checks: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many checks have each verdict.

    Args:
        checks: Check payloads.

    Returns:
        A count for every verdict in :data:`VERDICTS`, in that order (zeros included).
    """
    counts = dict.fromkeys(VERDICTS, 0)
    for check in checks:
        counts[verdict_of(check)] += 1
    return counts


def verdict_counts_markup(counts: Mapping[str, int]) -> str:
    """The counts as coloured symbols in Textual markup, zeros left out: ``[…]✓5[/] […]✗1[/]``."""
    return " ".join(f"[b {COLORS[v]}]{SYMBOLS[v]}{counts[v]}[/]" for v in VERDICTS if counts.get(v))


class ChecksTable(DataTable[Text]):
    """One row per check (keyed by its name): coloured verdict badge, name, summary and how long it took.

    Rows come in through :meth:`update`; the summary column takes the width that is left and is cut with an
    ellipsis (the details show it whole). ↑/↓ (or k/j) move the cursor; a :class:`DataTable.RowHighlighted`
    tells the screen which check to detail.

    Args:
        name: The widget's name.
        id: The widget's id.
        classes: The widget's CSS classes.
    """

    DEFAULT_CSS = """
    ChecksTable {
        height: auto;
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
    }
    ChecksTable > .checks-table--pass { color: $text-success; text-style: bold; }
    ChecksTable > .checks-table--warn { color: $text-warning; text-style: bold; }
    ChecksTable > .checks-table--fail { color: $text-error; text-style: bold; }
    ChecksTable > .checks-table--error { color: #d75fd7; text-style: bold; }
    ChecksTable > .checks-table--time { color: $text-muted; }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "checks-table--pass",
        "checks-table--warn",
        "checks-table--fail",
        "checks-table--error",
        "checks-table--time",
    }
    """
    | Class | Description |
    | :- | :- |
    | `checks-table--<verdict>` | The verdict badge, one class per verdict in `VERDICTS`. |
    | `checks-table--time` | How long the check took. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("k", "cursor_up", "Prev check", show=False),
        Binding("j", "cursor_down", "Next check", show=False),
    ]

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(
            name=name,
            id=id,
            classes=classes,
            cursor_type="row",
            zebra_stripes=False,
            cursor_foreground_priority="renderable",  # the badge keeps its colour on the cursor row
        )
        self._checks: list[Mapping[str, Any]] = []
        self._summary_width = 0
        self._cursor_chosen = False
        """Whether the user moved the cursor; until then it sits on the most important check (the first
        failure, else the first error, else the first warning)."""
        self._styles: tuple[Style, ...] = ()

    @property
    def names(self) -> list[str]:
        """The checks listed, top to bottom."""
        return [str(c.get("name", "?")) for c in self._checks]

    @property
    def selected(self) -> str | None:
        """The name of the check under the cursor, ``None`` when there is none."""
        names = self.names
        return names[self.cursor_row] if 0 <= self.cursor_row < len(names) else None

    def update(self, checks: Iterable[Mapping[str, Any]]) -> None:
        """List these checks (in this order); the cursor stays on the check it was on.

        Args:
            checks: Check payloads, each with ``name``, ``verdict``, ``summary`` and ``seconds``.
        """
        checks = list(checks)
        if len(checks) == len(self._checks) and all(
            a is b for a, b in zip(checks, self._checks, strict=True)
        ):
            return  # the same payloads: nothing to redraw
        self._checks = checks
        self._rebuild()

    def _fit_summary(self) -> int:
        # Every column is its width plus a cell of padding each side; one column stays free for a scrollbar.
        names = max((len(n) for n in self.names), default=4)
        fixed = VERDICT_WIDTH + min(NAME_WIDTH, max(4, names)) + TIME_WIDTH + 2 * 4
        return max(SUMMARY_MIN, self.size.width - 1 - fixed)

    def _rebuild(self) -> None:
        """Rebuild columns and rows (a handful: cheaper than tracking what changed), keeping the cursor's check."""
        selected = self.selected
        self._summary_width = self._fit_summary()
        self._styles = self._cell_styles()
        styles = dict(zip((*VERDICTS, "time"), self._styles, strict=True))
        names = self.names
        name_width = min(NAME_WIDTH, max(4, *(len(n) for n in names))) if names else 4
        self.clear(columns=True)
        self.add_column(Text("verdict"), width=VERDICT_WIDTH, key="verdict")
        self.add_column(Text("check"), width=name_width, key="name")
        self.add_column(Text("summary"), width=self._summary_width, key="summary")
        self.add_column(Text("time", justify="right"), width=TIME_WIDTH, key="time")
        for check, name in zip(self._checks, names, strict=True):
            verdict = verdict_of(check)
            summary = Text(str(check.get("summary", "")).replace("\n", " "), no_wrap=True, end="")
            summary.truncate(self._summary_width, overflow="ellipsis")
            label = Text(name, no_wrap=True, end="")
            label.truncate(name_width, overflow="ellipsis")
            self.add_row(
                Text(f"{SYMBOLS[verdict]} {verdict}", style=styles[verdict], no_wrap=True, end=""),
                label,
                summary,
                Text(format_seconds(check.get("seconds")), style=styles["time"], justify="right", end=""),
                key=name,
            )
        if not self._cursor_chosen:
            row = self._first_worst()
            if row is not None:
                self.move_cursor(row=row, animate=False)
        elif selected in names:
            self.move_cursor(row=names.index(selected), animate=False)

    def _first_worst(self) -> int | None:
        """The row of the first failed check, else the first that could not run, else the first warning."""
        verdicts = [verdict_of(c) for c in self._checks]
        for wanted in ("fail", "error", "warn", "pass"):
            if wanted in verdicts:
                return verdicts.index(wanted)
        return None

    def _chosen(self) -> None:
        self._cursor_chosen = True

    def action_cursor_up(self) -> None:
        self._chosen()
        super().action_cursor_up()

    def action_cursor_down(self) -> None:
        self._chosen()
        super().action_cursor_down()

    def action_scroll_top(self) -> None:
        self._chosen()
        super().action_scroll_top()

    def action_scroll_bottom(self) -> None:
        self._chosen()
        super().action_scroll_bottom()

    def action_page_up(self) -> None:
        self._chosen()
        super().action_page_up()

    def action_page_down(self) -> None:
        self._chosen()
        super().action_page_down()

    async def _on_click(self, event: Click) -> None:
        self._chosen()
        await super()._on_click(event)

    def _cell_styles(self) -> tuple[Style, ...]:
        """The verdicts' and the time's styles, foreground only: the cursor and the stripes keep their background."""
        styles = (self.get_component_rich_style(f"checks-table--{v}") for v in (*VERDICTS, "time"))
        return tuple(Style(color=s.color, bold=s.bold, italic=s.italic, dim=s.dim) for s in styles)

    def on_resize(self, event: Resize) -> None:
        if self._checks and self._fit_summary() != self._summary_width:
            self._rebuild()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        # Cells hold their styles; a theme change must recolour them (a focus change alone leaves them alike).
        if self._checks and self.is_mounted and self._cell_styles() != self._styles:
            self._rebuild()
