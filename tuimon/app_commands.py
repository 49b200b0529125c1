"""The app's live-command behaviour: keys → typed dialogs → a signed command → pending → ack, as a mixin.

:class:`LiveCommandsMixin` is mixed into :class:`~tuimon.app.TuimonApp`. It owns one
:class:`~tuimon.control.CommandClient` for the live run (made on the first command, remade when the trainer
restarts), runs its receive loop as a worker on the app's event loop, and turns its state changes into
:class:`~tuimon.messages.CommandChanged` messages. A replay, an ended run, or a run whose connection file this user
cannot read takes no commands: the keys say why instead. (Handlers here are ``on_*`` methods: Textual collects
``@on`` decorators only from classes built by its own metaclass, which a plain mixin is not.)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from textual import events

from tuimon_agent import commands

from .control import CommandClient, CommandRequest, ReadOnly, TrackedCommand, describe
from .messages import AlertActionRequested, CommandChanged
from .screens.command_dialog import CommandDialog, InterruptDialog, dialog_for, seen_by_dialog
from .screens.command_history import CommandHistoryScreen

if TYPE_CHECKING:
    from .state import RunState

NOTICE_SECONDS = 30.0
"""How long the notice line keeps saying what became of the latest command."""


class LiveCommandsMixin:
    """Live commands for the app: actions for the keys, dialogs, the client, the notice line."""

    state: RunState
    source: Any
    status: str
    _dirty: bool
    _commander: CommandClient | None = None

    # -- keys typed before a dialog had focus --------------------------------------------------------------------------

    def on_key(self, event: events.Key) -> None:
        """A key that bubbled up from the screen under a command dialog (typed right after the key that opened it,
        so Textual gave it to the old screen's focus): hand it to the dialog, in order, instead of checking it
        against the dialog's bindings (an early Enter would send the prefill, not what was typed)."""
        screen = self.screen  # type: ignore[attr-defined]
        if isinstance(screen, CommandDialog) and screen.takes_early_keys and not seen_by_dialog(event):
            event.stop()
            event.prevent_default()
            screen.feed(event)

    # -- what can be sent ---------------------------------------------------------------------------------------------

    def command_block_reason(self) -> str | None:
        """Why this run takes no commands now, or ``None`` when it does."""
        from .source import LiveSource

        if not isinstance(self.source, LiveSource):
            if self.source is None:
                return "no run yet: commands go to a live run"
            return "read-only: this is a replay of a run file; commands go to live runs only"
        if getattr(self, "display_status", self.status) == "ended":
            return "read-only: the run has ended; commands go to live runs only"
        hello = self.state.hello
        if hello:  # its hello says whether it takes commands (commands_unavailable, or no "commands" at all)
            why = hello.get("commands_unavailable")
            if isinstance(why, str) and why:
                return f"this run takes no commands: {why}"
            if "commands" not in hello:
                return "this run takes no commands: it was watched without an optimizer"
        try:
            self._client()
        except ReadOnly as exc:
            return str(exc)
        return None

    def custom_commands(self) -> dict[str, commands.CommandSpec]:
        """The run's ``@mon.command`` functions (from its hello and later ``commands`` records)."""
        specs = commands.specs_from_data(self.state.hello.get("commands"))
        specs.update(self.state.commands.custom)
        return {n: s for n, s in specs.items() if n not in commands.COMMANDS}

    def current_values(self) -> dict[str, float | None]:
        """The values the dialogs start from: ``lr``, ``clip`` (``None`` when off) and ``weight_decay``."""
        state = self.state
        wd = state.train.get("opt/weight_decay")
        clip: float | None = None
        clip_series = state.train.get("opt/clip")
        lr_series = state.train.get("opt/lr")
        if clip_series is not None and clip_series.last_step is not None:
            # opt/clip is left out of the metrics while clipping is off: a stale series means off
            latest = lr_series.last_step if lr_series is not None else clip_series.last_step
            clip = clip_series.last_value if latest is None or clip_series.last_step >= latest else None
        for cmd in reversed(state.commands.applied):
            if cmd.name == "set_clip":
                clip = cmd.new if isinstance(cmd.new, (int, float)) else None
                break
        return {"lr": state.lr(), "clip": clip, "weight_decay": wd.last_value if wd is not None else None}

    def run_paused(self) -> bool:
        """Whether the latest applied pause/resume was a pause."""
        return self.state.commands.paused_at() is not None

    # -- the client ---------------------------------------------------------------------------------------------------

    def _client(self) -> CommandClient:
        """The client for the live run now followed (made, or remade after a restart).

        Raises:
            ReadOnly: The run's key cannot be read.
        """
        info = self.source.info
        client = self._commander
        if client is not None and client.run_id == info.run_id:
            return client
        self.drop_command_client()
        client = CommandClient(info, log=self.state.commands, on_change=self._command_changed)
        self._commander = client
        self.run_worker(  # type: ignore[attr-defined]
            client.run(), name="commands", group="commands", exclusive=True, exit_on_error=False
        )
        return client

    def drop_command_client(self) -> None:
        """Close the client (the run changed: a new key, a new log)."""
        if self._commander is not None:
            self._commander.close()
            self._commander = None

    def _command_changed(self, cmd: TrackedCommand) -> None:
        self.post_message(CommandChanged(cmd.id))  # type: ignore[attr-defined]

    def on_command_changed(self, message: CommandChanged) -> None:
        """Repaint: a command this viewer sent changed state. A ``stop`` of ours that the loop ignores opens the
        confirmation for ``interrupt`` (once)."""
        self._dirty = True
        cmd = self.state.commands.get(message.command_id)
        if cmd is not None and cmd.mine and cmd.name == "stop" and cmd.status == "ignored":
            offered = self.__dict__.setdefault("_interrupt_offered", set())
            if cmd.id not in offered:
                offered.add(cmd.id)
                self.offer_interrupt(cmd)

    def ignored_stop(self) -> TrackedCommand | None:
        """The latest ``stop`` the loop ignored (still stepping after it), if no ``interrupt`` came after it."""
        for cmd in reversed(self.state.commands.entries()):
            if cmd.name == "interrupt":
                return None
            if cmd.name == "stop" and cmd.status == "ignored":
                return cmd
        return None

    def offer_interrupt(self, stop: TrackedCommand | None = None) -> None:
        """Ask for confirmation, then send ``interrupt`` (KeyboardInterrupt at the next step)."""
        reason = self.command_block_reason()
        if reason is not None:
            self._refuse(reason)
            return
        why = (stop.reason if stop is not None else None) or "the loop does not read mon.should_stop"
        self.push_screen(InterruptDialog(note=why), self.send_command)  # type: ignore[attr-defined]

    def command_notice(self) -> str | None:
        """The notice line's word on the latest command (pending, then its outcome for a while), if any."""
        cmd = self.state.commands.latest()
        if cmd is None:
            return None
        if cmd.done and time.time() - cmd.ts > NOTICE_SECONDS:
            return None
        return describe(cmd)

    # -- sending ------------------------------------------------------------------------------------------------------

    def send_command(self, req: CommandRequest | None) -> TrackedCommand | None:
        """Sign and send a request (``None``: the dialog was cancelled); never waits for the agent."""
        if req is None:
            return None
        reason = self.command_block_reason()
        if reason is not None:
            self._refuse(reason)
            return None
        cmd = self._client().submit(req)
        self._dirty = True
        return cmd

    def _refuse(self, reason: str) -> None:
        self.notify(reason, title="no command sent", severity="warning")  # type: ignore[attr-defined]

    def open_command(self, name: str, *, args: dict[str, Any] | None = None, note: str | None = None) -> None:
        """Open the dialog for a command (prefilled with ``args`` when given), or send it when it needs none.

        Args:
            name: The command's wire name.
            args: Suggested arguments (an alert's exact action).
            note: A line the dialog shows first.
        """
        reason = self.command_block_reason()
        if reason is not None:
            self._refuse(reason)
            return
        try:
            dialog = dialog_for(
                name, current=self.current_values(), args=args, note=note, specs=self.custom_commands()
            )
        except (KeyError, ValueError) as exc:
            self._refuse(f"cannot send {name}: {exc}")
            return
        if dialog is None:
            self.send_command(CommandRequest(name, {}))
        else:
            self.push_screen(dialog, self.send_command)  # type: ignore[attr-defined]

    def on_alert_action_requested(self, message: AlertActionRequested) -> None:
        """Open the dialog of an alert's suggested action, prefilled with its exact value (one Enter sends it)."""
        message.stop()
        action = message.action
        name = action.get("command")
        args = action.get("args")
        if not isinstance(name, str):
            self._refuse(f"alert {message.alert_id}: its action names no command ({action!r})")
            return
        label = action.get("label") or name
        self.open_command(name, args=args if isinstance(args, dict) else {}, note=f"suggested: {label}")

    # -- key actions --------------------------------------------------------------------------------------------------

    def action_set_lr(self) -> None:
        """Open the learning-rate dialog."""
        self.open_command("set_lr")

    def action_set_clip(self) -> None:
        """Open the gradient-clipping dialog."""
        self.open_command("set_clip")

    def action_set_weight_decay(self) -> None:
        """Open the weight-decay dialog."""
        self.open_command("set_weight_decay")

    def action_pause_resume(self) -> None:
        """Pause the run, or resume it when the latest applied pause/resume was a pause."""
        self.open_command("resume" if self.run_paused() else "pause")

    def action_checkpoint(self) -> None:
        """Ask the run to save a checkpoint now."""
        self.open_command("checkpoint")

    def action_stop(self) -> None:
        """Ask for confirmation, then stop the run gracefully; after a stop the loop ignored, offer ``interrupt``."""
        stop = self.ignored_stop()
        if stop is not None:
            self.offer_interrupt(stop)
        else:
            self.open_command("stop")

    def action_command_history(self) -> None:
        """Show the run's command history (or close it)."""
        screen = self.screen  # type: ignore[attr-defined]
        if isinstance(screen, CommandHistoryScreen):
            screen.dismiss(None)
        else:
            self.push_screen(CommandHistoryScreen(self.state))  # type: ignore[attr-defined]
