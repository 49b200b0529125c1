"""What the run said about itself in its hello (model, optimizer, device, process), plus record counters."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget

from ..state import RunState
from ._style_cache import CachedComponentStyles
from .run_header import format_value

_OPT_KEYS = ("lr", "momentum", "betas", "eps", "weight_decay", "dampening")


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else format_value(value)


def describe_hello(hello: dict[str, Any]) -> list[tuple[str, str]]:
    """``(key, value)`` lines describing a hello payload; missing parts are left out.

    Args:
        hello: The hello record's data.

    Returns:
        The lines, in display order.
    """
    lines: list[tuple[str, str]] = []
    if hello.get("run_id"):
        lines.append(("run id", str(hello["run_id"])))
    model = hello.get("model")
    if isinstance(model, dict):
        total, trainable = model.get("total_params"), model.get("trainable_params")
        text = f"{model.get('type', '?')} · {_number(total)} params"
        if trainable is not None and trainable != total:
            text += f" ({_number(trainable)} trainable)"
        layers = model.get("layers")
        if isinstance(layers, list):
            text += f" · {len(layers)} layers"
        lines.append(("model", text))
    opt = hello.get("optimizer")
    if isinstance(opt, dict):
        groups = opt.get("groups") or [{}]
        g = groups[0] if isinstance(groups[0], dict) else {}
        hyper = " ".join(f"{k}={_number(g[k])}" for k in _OPT_KEYS if g.get(k) not in (None, 0, False))
        extra = f" · {len(groups)} groups" if len(groups) > 1 else ""
        lines.append(("optimizer", f"{opt.get('type', '?')} {hyper}{extra}".strip()))
    env = [
        str(hello[k]) if k == "device" else f"{k} {hello[k]}"
        for k in ("device", "torch", "python")
        if hello.get(k)
    ]
    if env:
        lines.append(("device", " · ".join(env)))
    if hello.get("pid") is not None:
        lines.append(
            ("process", f"pid {hello['pid']}" + (f" on {hello['host']}" if hello.get("host") else ""))
        )
    argv = hello.get("argv")
    if isinstance(argv, list) and argv:
        lines.append(("command", " ".join(str(a) for a in argv)))
    return lines


class RunInfo(CachedComponentStyles, Widget):
    """Static facts about the run, from its hello (model, optimizer, device, process); data in through :meth:`update`.

    Args:
        full: The ``i`` screen's panel: long values wrap under themselves and the run file is listed too; else each
            line is cut at the panel's edge.
        name: The widget's name.
        id: The widget's id.
        classes: The widget's CSS classes.
    """

    DEFAULT_CSS = """
    RunInfo {
        height: auto;
        width: 1fr;
        padding: 0 1;
    }
    RunInfo > .run-info--key { color: $text-muted; }
    RunInfo > .run-info--value { color: $foreground; }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {"run-info--key", "run-info--value"}
    """
    | Class | Description |
    | :- | :- |
    | `run-info--key` | The left column (`model`, `optimizer`, ...). |
    | `run-info--value` | What it says. |
    """

    def __init__(
        self,
        *,
        full: bool = False,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._lines: list[tuple[str, str]] = []
        self._full = full

    @property
    def lines(self) -> list[tuple[str, str]]:
        """The ``(key, value)`` lines shown."""
        return list(self._lines)

    def update(self, state: RunState) -> None:
        """Show a run's hello (repaints only when it changes).

        Args:
            state: The run state.
        """
        lines = describe_hello(state.hello)  # no live counters: a tall panel repainted at 10 Hz costs CPU
        run_file = state.hello.get("run_file")
        if self._full and isinstance(run_file, str):
            lines.append(("run file", run_file))
        if lines != self._lines:
            grew = len(lines) != len(self._lines)
            self._lines = lines
            self.refresh(layout=grew)  # a new height only when the number of lines changes

    def render(self) -> RenderResult:
        key = self.component_style("run-info--key")
        value = self.component_style("run-info--value")
        if self._full:
            grid = Table.grid(padding=(0, 0))
            grid.add_column(width=10, no_wrap=True)
            grid.add_column(ratio=1, overflow="fold")
            for k, v in self._lines:
                grid.add_row(Text(k, style=key), Text(v, style=value))
            return grid
        text = Text(end="")
        for i, (k, v) in enumerate(self._lines):
            text.append(f"{k:<10}", key)
            text.append(v + ("\n" if i < len(self._lines) - 1 else ""), value)
        return text
