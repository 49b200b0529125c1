"""Everything one sanity check reported: summary, explanation, the numbers behind the verdict, and its table."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import ScrollableContainer
from textual.widgets import DataTable, Static

from .checks_table import COLORS, SYMBOLS, format_seconds, verdict_of

TABLE_ROWS = 50
"""The most rows of a check's table that are shown (a per-parameter table of a large model has thousands)."""
KEY_WIDTH = 28
"""The numbers' key column at most."""


def format_cell(value: Any) -> str:
    """A number or value for the details: ints with thousands separators, floats with 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_cell(v) for v in value) + "]"
    return str(value).replace("\n", " ")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class CheckDetails(ScrollableContainer, can_focus=True):
    """One check in full, in a scrollable box: the summary, the explanation (wrapped), the numbers as ``key value``
    lines and the check's table (its first :data:`TABLE_ROWS` rows, with a note of how many more there are).

    Data comes in through :meth:`update`; the box's title names the check and its verdict, the subtitle when it ran
    and how long it took. The box scrolls up and down; a table wider than the box scrolls sideways on its own
    (←/→ while the box has focus), so the text above it stays put.

    Args:
        name: The widget's name.
        id: The widget's id.
        classes: The widget's CSS classes.
    """

    DEFAULT_CSS = """
    CheckDetails {
        height: 1fr;
        padding: 0 1;
        overflow-x: hidden;
        scrollbar-size: 1 1;
    }
    CheckDetails > Static { width: 1fr; height: auto; }
    CheckDetails > #check-summary { text-style: bold; }
    CheckDetails > #check-explanation { margin-top: 1; }
    CheckDetails > #check-numbers { margin-top: 1; }
    CheckDetails > DataTable {
        margin-top: 1;
        width: auto;
        max-width: 100%;
        height: auto;
        max-height: 999;
        overflow-x: auto;
        overflow-y: hidden;
        scrollbar-size-horizontal: 1;
    }
    CheckDetails > #check-more { color: $text-muted; text-style: italic; }
    CheckDetails > .check-details--key { color: $text-muted; }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {"check-details--key"}
    """
    | Class | Description |
    | :- | :- |
    | `check-details--key` | The names of the numbers. |
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._check: Mapping[str, Any] | None = None

    @property
    def check(self) -> Mapping[str, Any] | None:
        """The check payload shown, ``None`` when none is."""
        return self._check

    def compose(self) -> ComposeResult:
        yield Static("", id="check-summary", markup=False)
        yield Static("", id="check-explanation", markup=False)
        yield Static("", id="check-numbers")
        table: DataTable[Text] = DataTable(id="check-table", cursor_type="none", zebra_stripes=True)
        table.can_focus = False  # the box scrolls; the table only shows
        yield table
        yield Static("", id="check-more", markup=False)

    def update(self, check: Mapping[str, Any] | None) -> None:
        """Show a check (repaints only when it is another payload than the one shown).

        Args:
            check: A ``check`` record's payload (as :attr:`RunState.checks` keeps it), or ``None`` for nothing.
        """
        if check is self._check:
            return
        self._check = check
        summary = self.query_one("#check-summary", Static)
        explanation = self.query_one("#check-explanation", Static)
        numbers = self.query_one("#check-numbers", Static)
        more = self.query_one("#check-more", Static)
        table = self.query_one("#check-table", DataTable)
        if check is None:
            self.border_title = self.border_subtitle = ""
            for part in (summary, explanation, numbers, more):
                part.update("")
                part.display = False
            table.clear(columns=True)
            table.display = False
            return
        verdict = verdict_of(check)
        name = str(check.get("name", "?"))
        self.border_title = f"[{COLORS[verdict]}]{SYMBOLS[verdict]} {verdict} [/]{_escape(name)}"
        step = check.get("step")
        when = f"step {step:,} · " if isinstance(step, int) and not isinstance(step, bool) else ""
        self.border_subtitle = f"{when}{format_seconds(check.get('seconds'))}"
        summary.update(str(check.get("summary", "")))
        summary.display = bool(check.get("summary"))
        text = str(check.get("explanation", "")).strip()
        explanation.update(text)
        explanation.display = bool(text)
        figures = self._numbers(check.get("numbers"))
        numbers.update(figures)
        numbers.display = bool(figures.plain)
        shown, total = self._table(table, check.get("table"))
        more.update(f"… {total - shown:,} more rows (the first {shown} shown)" if total > shown else "")
        more.display = total > shown
        self.scroll_home(animate=False)

    def _numbers(self, numbers: Any) -> Text:
        if not isinstance(numbers, Mapping) or not numbers:
            return Text()
        key_style = self.get_component_rich_style("check-details--key")
        width = min(KEY_WIDTH, max(len(str(k)) for k in numbers))
        text = Text(end="")
        for i, (k, v) in enumerate(numbers.items()):
            key = Text(str(k), style=key_style, no_wrap=True, end="")
            key.truncate(width, overflow="ellipsis", pad=True)
            text.append_text(key)
            text.append("  ")
            text.append(format_cell(v) + ("\n" if i < len(numbers) - 1 else ""))
        return text

    def action_scroll_left(self) -> None:
        """Scroll the check's table left (the text never needs to)."""
        self.query_one("#check-table", DataTable).scroll_left()

    def action_scroll_right(self) -> None:
        """Scroll the check's table right."""
        self.query_one("#check-table", DataTable).scroll_right()

    def _table(self, table: DataTable[Text], rows: Any) -> tuple[int, int]:
        """Fill the table with the first rows of a check's table; returns ``(rows shown, rows in all)``."""
        table.clear(columns=True)
        rows = [r for r in rows if isinstance(r, Mapping)] if isinstance(rows, list) else []
        head = rows[:TABLE_ROWS]
        columns = list(dict.fromkeys(str(k) for row in head for k in row))
        table.display = bool(head and columns)
        if not table.display:
            return 0, len(rows)
        numeric = {c: all(_is_number(r.get(c)) for r in head if r.get(c) is not None) for c in columns}
        for c in columns:
            table.add_column(Text(c, justify="right" if numeric[c] else "left"), key=c)
        for row in head:
            table.add_row(
                *(
                    Text(format_cell(row.get(c, "")), justify="right" if numeric[c] else "left", end="")
                    for c in columns
                )
            )
        return len(head), len(rows)


def _escape(text: str) -> str:
    """Escape Textual markup in a name that goes into a border title."""
    return text.replace("[", r"\[")
