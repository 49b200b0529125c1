"""Typed dialogs for live commands, and the command palette's provider of them.

Each dialog is a :class:`~textual.screen.ModalScreen` whose result is a
:class:`~tuimon.control.CommandRequest` (or ``None`` when cancelled). Input is checked in the dialog: a value that
is not a number, not finite or out of range shows the error under the field and sends nothing; a learning-rate or
weight-decay jump of more than :data:`JUMP_CONFIRM` times (either way) asks for a second Enter first, except for a
value an alert suggested (shown first, sent with one Enter).

Keys typed quickly after the key that opens a dialog reach the app before the dialog's field has focus: Textual hands
them to the screen underneath (or to the dialog screen itself), and an Enter among them was then checked against the
dialog's bindings when it bubbled up, so the prefilled value was sent instead of the one typed. Such early keys are
handed to the dialog (:meth:`CommandDialog.feed`, from the app and from the dialog screen) and applied to the field in
the order typed; the field holds its own keys while early ones are still waiting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from tuimon_agent import commands

from ..control import CommandRequest, label_of, parse_clip_text, parse_lr_text, parse_wd_text

JUMP_CONFIRM = 10.0
"""A new value more than this many times the current one (or less than its 1/this) needs a second Enter."""


_SEEN = "_tuimon_dialog_saw"
"""Attribute set on a key event once a dialog's field or screen has taken it (so the app does not feed it again)."""


def seen_by_dialog(event: events.Key) -> bool:
    """Whether a dialog's field or screen has already taken this key event."""
    return bool(getattr(event, _SEEN, False))


def _mark(event: events.Key) -> None:
    setattr(event, _SEEN, True)


class DialogInput(Input):
    """A dialog's field: holds its keys back while keys typed before it had focus are still waiting (order kept)."""

    async def _on_key(self, event: events.Key) -> None:
        _mark(event)
        screen = self.screen
        if isinstance(screen, CommandDialog) and screen.has_early_keys:
            event.stop()
            event.prevent_default()
            screen.feed(event)
            return
        await super()._on_key(event)


def _num(v: float | None) -> str:
    return "unknown" if v is None else f"{v:.6g}"


class CommandDialog(ModalScreen[CommandRequest | None]):
    """Base of the command dialogs: a title, what is current, a field, an error line, a hint.

    Args:
        title: The box's title.
        about: One line under the title (what is current, what the command does).
        prefill: The field's initial text (the current value, or a suggested one).
        note: A line shown first (e.g. the alert that suggested this value).
        placeholder: The field's placeholder.
    """

    DEFAULT_CSS = """
    CommandDialog {
        align: center middle;
        background: $background 60%;
    }
    CommandDialog > #dialog {
        width: 64;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: round $accent;
        border-title-style: bold;
        border-subtitle-color: $text-muted;
        background: $surface;
        padding: 0 1;
    }
    CommandDialog #note { color: $text-accent; text-style: bold; }
    CommandDialog #about { color: $text-muted; }
    CommandDialog #error { color: $text-error; height: auto; }
    CommandDialog #warn { color: $text-warning; height: auto; }
    CommandDialog Input { margin: 0; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self,
        title: str,
        about: str,
        *,
        prefill: str = "",
        note: str | None = None,
        placeholder: str = "",
    ) -> None:
        super().__init__()
        self._title = title
        self._about = about
        self._prefill = prefill
        self._note = note
        self._placeholder = placeholder
        self._confirming: str | None = None
        self._early: list[events.Key] = []
        self._typed_early = False
        self._ready = False

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog") as box:
            box.border_title = self._title
            box.border_subtitle = "enter send · escape cancel"
            if self._note:
                yield Static(self._note, id="note", markup=False)
            yield Static(self._about, id="about", markup=False)
            yield from self.fields()
            yield Static("", id="error", markup=False)
            yield Static("", id="warn", markup=False)

    def fields(self) -> ComposeResult:
        """The dialog's input fields (one by default)."""
        yield DialogInput(self._prefill, placeholder=self._placeholder, id="value", select_on_focus=True)

    # -- keys typed before the field had focus ------------------------------------------------------------------------

    @property
    def has_early_keys(self) -> bool:
        """Whether keys typed before the field had focus are still waiting to be applied."""
        return bool(self._early)

    def feed(self, event: events.Key) -> None:
        """Take a key typed before the field had focus: applied in order once the dialog is mounted (now if it is).

        Printable keys type into the first field (the first one replaces the prefill, as typing over the selected
        prefill would), backspace deletes, enter sends (the text typed before it is applied first), escape cancels.
        """
        _mark(event)
        self._early.append(event)
        if self._ready:
            self._drain()

    def on_mount(self) -> None:
        self._ready = True
        self._drain()

    takes_early_keys: ClassVar[bool] = True
    """Whether keys typed before the field had focus are fed to it (a dialog with a field; known before it is
    composed, when the earliest keys arrive)."""

    def on_key(self, event: events.Key) -> None:
        """A key that reached the dialog screen itself (no field focused yet): feed it to the field."""
        if seen_by_dialog(event) or not self.takes_early_keys:
            return
        event.stop()
        event.prevent_default()
        self.feed(event)

    def _drain(self) -> None:
        fields = list(self.query(Input))
        field = fields[0] if fields else None
        while self._early:
            event = self._early.pop(0)
            if event.key == "escape":
                self._early.clear()
                self.action_cancel()
                return
            if event.key == "enter":
                self.action_send()
                if not self.is_attached or self.app.screen is not self:
                    self._early.clear()
                    return
                continue
            if field is None:
                continue
            if event.is_printable and event.character is not None:
                if not self._typed_early:
                    field.value = ""  # typing over the selected prefill replaces it
                field.insert_text_at_cursor(event.character)
            elif event.key == "backspace":
                field.action_delete_left()
            else:
                continue
            if not self._typed_early:
                self._typed_early = True
                field.select_on_focus = False  # focus must not select (and so later replace) what was typed
                field.cursor_position = len(field.value)

    @property
    def error(self) -> str:
        """The error shown under the field (empty when none)."""
        return str(self.query_one("#error", Static).render())

    @property
    def warning(self) -> str:
        """The confirmation warning shown (empty when none)."""
        return str(self.query_one("#warn", Static).render())

    def _show(self, error: str = "", warn: str = "") -> None:
        self.query_one("#error", Static).update(error)
        self.query_one("#warn", Static).update(warn)

    def build(self) -> tuple[CommandRequest, str | None]:
        """The request from the fields, and a warning that needs a second Enter (or ``None``).

        Raises:
            ValueError: The input is invalid (the message is shown).
        """
        raise NotImplementedError

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_send()

    def action_send(self) -> None:
        """Check the input; send it, ask for confirmation, or show what is wrong."""
        try:
            req, warn = self.build()
        except ValueError as exc:
            self._confirming = None
            self._show(error=str(exc))
            return
        if warn and self._confirming != req.label:
            self._confirming = req.label
            self._show(warn=f"{warn}: press enter again to send it, escape to cancel")
            return
        self.dismiss(req)

    def action_cancel(self) -> None:
        """Close without sending."""
        self.dismiss(None)


def _jump(new: float, current: float | None) -> str | None:
    if current is None or not math.isfinite(current) or current <= 0 or new <= 0:
        return None
    ratio = new / current
    if ratio > JUMP_CONFIRM or ratio < 1 / JUMP_CONFIRM:
        return f"that is ×{ratio:.3g} the current {current:.6g}"
    return None


class SetLRDialog(CommandDialog):
    """Set the learning rate: ``3e-4`` (absolute), ``x0.5`` or ``/10`` (scale of the current one).

    Args:
        current: The run's current learning rate (``opt/lr``), if known.
        prefill: The field's initial text (default: the current value).
        note: A line shown first.
    """

    def __init__(
        self,
        current: float | None,
        *,
        prefill: str | None = None,
        note: str | None = None,
        check_jump: bool = True,
    ) -> None:
        self.current = current
        self.check_jump = check_jump
        super().__init__(
            "set learning rate",
            f"current lr {_num(current)} · all param groups · 3e-4, x0.5 or /10",
            prefill=prefill if prefill is not None else (f"{current:.6g}" if current is not None else ""),
            note=note,
            placeholder="3e-4, x0.5, /10",
        )

    def build(self) -> tuple[CommandRequest, str | None]:
        args = commands.validate("set_lr", parse_lr_text(self.query_one("#value", Input).value))
        new = args["value"] if "value" in args else (self.current or 0.0) * args["scale"]
        warn = _jump(new, self.current) if self.check_jump else None
        if "scale" in args and self.current is not None:
            return CommandRequest("set_lr", args, f"set_lr ×{args['scale']:.6g} (→ {new:.6g})"), warn
        return CommandRequest("set_lr", args), warn


class SetClipDialog(CommandDialog):
    """Set gradient clipping by global norm: a max norm > 0, or ``off``.

    Args:
        current: The current max norm (``opt/clip``), ``None`` when off or unknown.
        prefill: The field's initial text (default: the current value, or ``1.0``).
        note: A line shown first.
    """

    def __init__(self, current: float | None, *, prefill: str | None = None, note: str | None = None) -> None:
        self.current = current
        now = f"{current:.6g}" if current is not None else "off"
        super().__init__(
            "set gradient clipping",
            f"current max norm {now} · clips the global L2 norm · a number, or off",
            prefill=prefill if prefill is not None else (now if current is not None else "1.0"),
            note=note,
            placeholder="1.0 or off",
        )

    def build(self) -> tuple[CommandRequest, str | None]:
        args = commands.validate("set_clip", parse_clip_text(self.query_one("#value", Input).value))
        return CommandRequest("set_clip", args), None


class SetWeightDecayDialog(CommandDialog):
    """Set the weight decay of every param group: a number >= 0.

    Args:
        current: The current weight decay (``opt/weight_decay``), if known.
        prefill: The field's initial text (default: the current value).
        note: A line shown first.
    """

    def __init__(
        self,
        current: float | None,
        *,
        prefill: str | None = None,
        note: str | None = None,
        check_jump: bool = True,
    ) -> None:
        self.current = current
        self.check_jump = check_jump
        super().__init__(
            "set weight decay",
            f"current weight decay {_num(current)} · all param groups",
            prefill=prefill if prefill is not None else (f"{current:.6g}" if current is not None else ""),
            note=note,
            placeholder="0.01",
        )

    def build(self) -> tuple[CommandRequest, str | None]:
        args = commands.validate("set_weight_decay", parse_wd_text(self.query_one("#value", Input).value))
        warn = _jump(args["value"], self.current) if self.check_jump else None
        return CommandRequest("set_weight_decay", args), warn


class StopDialog(CommandDialog):
    """Confirm a graceful stop, with an optional reason (recorded in the run file)."""

    def __init__(self, *, note: str | None = None, reason: str = "") -> None:
        super().__init__(
            "stop the run?",
            "the training loop sees mon.should_stop and ends gracefully · reason (optional):",
            prefill=reason,
            note=note,
            placeholder="why (optional)",
        )

    def on_mount(self) -> None:
        self.query_one("#dialog").border_subtitle = "enter stop · escape keep training"

    def build(self) -> tuple[CommandRequest, str | None]:
        reason = self.query_one("#value", Input).value.strip()
        args = commands.validate("stop", {"reason": reason} if reason else {})
        return CommandRequest("stop", args), None


class InterruptDialog(CommandDialog):
    """Confirm ``interrupt`` for a loop that ignores ``stop``: ``KeyboardInterrupt`` in the training thread at the
    next step boundary, as Ctrl-C would (the run file is completed by the monitor's exit handling). Typing
    ``checkpoint`` (or ``c``) saves one first."""

    def __init__(self, *, note: str | None = None) -> None:
        super().__init__(
            "interrupt the training loop?",
            "raises KeyboardInterrupt in the training thread at the next optimizer step, as Ctrl-C would · "
            "type 'checkpoint' to save one first (optional):",
            note=note,
            placeholder="checkpoint (optional)",
        )

    def on_mount(self) -> None:
        self.query_one("#dialog").border_subtitle = "enter interrupt · escape keep training"

    def build(self) -> tuple[CommandRequest, str | None]:
        text = self.query_one("#value", Input).value.strip().lower()
        if text not in ("", "c", "checkpoint", "ckpt", "yes", "no"):
            raise ValueError(f"type 'checkpoint' or leave it empty, not {text!r}")
        args = {"checkpoint": True} if text in ("c", "checkpoint", "ckpt", "yes") else {}
        return CommandRequest("interrupt", commands.validate("interrupt", args)), None


class ConfirmCommandDialog(CommandDialog):
    """Confirm one exact command (an alert's suggestion that takes no value, or a palette pick).

    Args:
        req: The command.
        note: A line shown first.
    """

    def __init__(self, req: CommandRequest, *, note: str | None = None) -> None:
        self.req = req
        help_ = commands.COMMANDS[req.name].help if req.name in commands.COMMANDS else ""
        super().__init__(f"send {req.label}?", help_ or req.label, note=note)

    takes_early_keys: ClassVar[bool] = False  # no field: an early enter meets the screen's own binding

    def fields(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        self.query_one("#dialog").focus()

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("enter", "send", "Send"),
    ]

    def build(self) -> tuple[CommandRequest, str | None]:
        return self.req, None


class CustomCommandDialog(CommandDialog):
    """A ``@mon.command`` function's typed arguments, one field each, prefilled with their defaults.

    Args:
        spec: The command's spec (from the run's hello).
        values: Initial values by argument name (e.g. an alert's suggestion).
        note: A line shown first.
    """

    def __init__(
        self, spec: commands.CommandSpec, *, values: dict[str, Any] | None = None, note: str | None = None
    ) -> None:
        self.spec = spec
        self._values = values or {}
        super().__init__(f"run {spec.name}", spec.help or spec.name, note=note)

    def fields(self) -> ComposeResult:
        for arg in self.spec.args:
            value = self._values.get(arg.name, arg.default)
            yield Static(f"{arg.name} ({arg.type}) {arg.help}".rstrip(), classes="arg-label", markup=False)
            yield DialogInput(
                "" if value is None else str(value).lower() if isinstance(value, bool) else str(value),
                placeholder=arg.describe_range(),
                id=f"arg-{arg.name}",
            )

    def build(self) -> tuple[CommandRequest, str | None]:
        args: dict[str, Any] = {}
        for arg in self.spec.args:
            text = self.query_one(f"#arg-{arg.name}", Input).value
            if text.strip() == "" and not arg.required:
                continue
            args[arg.name] = commands.parse_arg(arg, text)
        args = commands.validate(self.spec.name, args, specs={self.spec.name: self.spec})
        return CommandRequest(self.spec.name, args, label_of(self.spec.name, args)), None


class LiveCommands(Provider):
    """The command palette's live commands: the built-ins and the run's ``@mon.command`` functions.

    Choosing one calls the app's ``open_command(name)`` (which says why when the run takes no commands).
    """

    def _items(self) -> list[tuple[str, str, Callable[[], None]]]:
        app: Any = self.app
        specs = dict(commands.COMMANDS)
        specs.update(getattr(app, "custom_commands", dict)())
        out = []
        for name, spec in specs.items():
            label = f"{'' if spec.builtin else 'run '}{name.replace('_', ' ')}"

            def call(n: str = name) -> None:
                app.open_command(n)

            out.append((label, spec.help or name, call))
        return out

    async def discover(self) -> Hits:
        for label, help_, call in self._items():
            yield DiscoveryHit(label, call, help=help_)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for label, help_, call in self._items():
            score = matcher.match(label)
            if score > 0:
                yield Hit(score, matcher.highlight(label), call, help=help_)


def dialog_for(
    name: str,
    *,
    current: dict[str, float | None],
    args: dict[str, Any] | None = None,
    note: str | None = None,
    specs: dict[str, commands.CommandSpec] | None = None,
) -> CommandDialog | None:
    """The dialog for a command, prefilled with ``args`` when given (an alert's exact suggestion), else the current
    value; ``None`` for a built-in that takes no value and needs no confirmation (``pause``, ``resume``,
    ``checkpoint`` without ``args`` or ``note``).

    Args:
        name: The command's wire name.
        current: ``{"lr", "clip", "weight_decay"}`` current values (``None`` when unknown or off).
        args: Suggested arguments.
        note: A line shown first.
        specs: The run's custom commands.

    Raises:
        KeyError: ``name`` is neither a built-in nor one of ``specs``.
    """
    a = args or {}
    if name == "set_lr":
        prefill = None
        if "value" in a:
            prefill = f"{a['value']:.6g}" if isinstance(a["value"], float) else str(a["value"])
        elif "scale" in a:
            prefill = f"x{a['scale']:g}"
        return SetLRDialog(current.get("lr"), prefill=prefill, note=note, check_jump=prefill is None)
    if name == "set_clip":
        prefill = None
        if "max_norm" in a:
            prefill = "off" if a["max_norm"] is None else f"{a['max_norm']:g}"
        return SetClipDialog(current.get("clip"), prefill=prefill, note=note)
    if name == "set_weight_decay":
        prefill = f"{a['value']:g}" if "value" in a else None
        return SetWeightDecayDialog(
            current.get("weight_decay"), prefill=prefill, note=note, check_jump=prefill is None
        )
    if name == "stop":
        return StopDialog(note=note, reason=str(a.get("reason", "")))
    if name == "interrupt":
        return InterruptDialog(note=note)
    if name in commands.COMMANDS:
        if not a and note is None:
            return None
        return ConfirmCommandDialog(CommandRequest(name, commands.validate(name, a)), note=note)
    spec = (specs or {})[name]
    return CustomCommandDialog(spec, values=a, note=note)
