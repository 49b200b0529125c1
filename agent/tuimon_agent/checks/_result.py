"""The result every sanity check returns, and how it travels (a ``check`` record) and prints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

PASS = "pass"
"""Nothing wrong found."""
WARN = "warn"
"""Something looks off but may be intended (e.g. a slightly high initial loss)."""
FAIL = "fail"
"""A bug, almost certainly."""
ERROR = "error"
"""The check itself could not run (the message says why)."""
VERDICTS = (PASS, WARN, FAIL, ERROR)


@dataclass
class CheckResult:
    """What one check found.

    Attributes:
        name: Stable identifier of the check (``gradient_check``, ``overfit_one_batch``, ``loss_decreases``,
            ``initial_loss``, ``shape_trace``, ``data_check``): part of the protocol.
        verdict: One of :data:`VERDICTS`.
        summary: One line: what was found, with the decisive number.
        explanation: What it means and what to do, in a few sentences.
        numbers: The figures behind the verdict (JSON-friendly scalars).
        table: Per-row details (per parameter, per module, per channel, ...), each a flat dict.
        seconds: How long the check took.
    """

    name: str
    verdict: str
    summary: str
    explanation: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"invalid verdict={self.verdict!r}: must be one of {', '.join(VERDICTS)}")

    @property
    def ok(self) -> bool:
        """True unless the verdict is ``fail`` or ``error``."""
        return self.verdict in (PASS, WARN)

    def to_data(self) -> dict[str, Any]:
        """The payload of a ``check`` record: plain msgpack-able values only."""
        return _plain(asdict(self))

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> CheckResult:
        """Rebuild a result from a ``check`` record's payload (unknown keys ignored, missing ones defaulted)."""
        verdict = data.get("verdict")
        return cls(
            name=str(data.get("name", "?")),
            verdict=verdict if verdict in VERDICTS else ERROR,
            summary=str(data.get("summary", "")),
            explanation=str(data.get("explanation", "")),
            numbers=dict(data.get("numbers") or {}),
            table=[dict(r) for r in data.get("table") or [] if isinstance(r, dict)],
            seconds=float(data.get("seconds") or 0.0),
        )

    def report(self, *, table_rows: int = 12) -> str:
        """A readable multi-line report: verdict and summary, explanation, numbers, the first rows of the table."""
        lines = [f"[{self.verdict.upper():5}] {self.name}: {self.summary}"]
        if self.explanation:
            lines.append(f"        {self.explanation}")
        if self.numbers:
            lines.append("        " + ", ".join(f"{k}={_fmt(v)}" for k, v in self.numbers.items()))
        if self.table:
            # Rows of different shapes (the data check's per-channel rows, then its per-class rows) make one
            # table each, with its own header, rather than one grid of blanks.
            groups: list[tuple[list[str], list[dict[str, Any]]]] = []
            for row in self.table[:table_rows]:
                cols = list(row)
                if groups and groups[-1][0] == cols:
                    groups[-1][1].append(row)
                else:
                    groups.append((cols, [row]))
            for i, (cols, group) in enumerate(groups):
                rows = [[_fmt(row.get(c, "")) for c in cols] for row in group]
                widths = [max(len(c), *(len(r[j]) for r in rows)) for j, c in enumerate(cols)]
                if i:
                    lines.append("")
                lines.append("        " + "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
                lines += [
                    "        " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows
                ]
            if len(self.table) > table_rows:
                lines.append(f"        ... {len(self.table) - table_rows} more rows")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _plain(v: Any) -> Any:
    """Make a value msgpack-able: tensors and numpy scalars to numbers, tuples to lists, other objects to str."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "tolist"):
        return _plain(v.tolist())
    return str(v)
