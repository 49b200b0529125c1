"""The Monitor's live-command API: ``mon.should_stop``, ``mon.paused``, ``@mon.command``, checkpoint handlers.

:class:`ControlMixin` is a base of :class:`~tuimon_agent.monitor.Monitor`; it installs the
:class:`~tuimon_agent.control.Controller` as the optimizer's step pre-hook.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class ControlMixin:
    """Live commands on a :class:`~tuimon_agent.monitor.Monitor` (needs ``watch(model, optimizer)``)."""

    _control: Any = None
    _hooks: list[Any]
    run_dir: Any
    _no_commands: str | None = None
    """Why the optimizer took no controller (set by :meth:`_install_control`)."""
    _warned_no_commands = False

    def _install_control(
        self, model: Any, optimizer: Any, scheduler: Any, *, hello: dict[str, Any] | None
    ) -> bool:
        """Create the controller and register its step pre-hook; returns whether it was installed."""
        if optimizer is None or not hasattr(optimizer, "register_step_pre_hook"):
            if optimizer is not None:
                self._no_commands = f"{type(optimizer).__name__} has no register_step_pre_hook"
            return False
        from . import control_ddp
        from .control import Controller

        distributed = control_ddp.active() or os.environ.get("WORLD_SIZE") not in (None, "", "1")
        self._control = Controller(
            optimizer,
            model=model,
            run_dir=self.run_dir,
            step_of=self._next_step,  # type: ignore[attr-defined]
            sync=control_ddp.DistSync() if distributed else None,
            rank=control_ddp.world_rank(),
        )
        if scheduler is not None:
            self.watch_scheduler(scheduler)
        self._hooks.append(optimizer.register_step_pre_hook(self._control.pre_step))
        if hello is not None:
            hello["commands"] = []
        return True

    def _abandon_commands(self) -> None:
        """At close: commands still queued (or announced to the other ranks) will never be applied; reject them."""
        if self._control is not None:
            self._control.abandon("the run ended before the next optimizer step")

    def _end_payload(self, reason: str) -> dict[str, Any]:
        """The ``end`` record's payload: a ``stop`` command turns ``"closed"`` into ``"stopped"`` with its reason."""
        c = self._control
        if c is None or not c.should_stop:
            return {"reason": reason}
        out = {"reason": "stopped" if reason == "closed" else reason, "stop_reason": c.stop_reason}
        if c.interrupted:
            out["interrupt"] = True  # the loop ignored stop; KeyboardInterrupt was raised at a step boundary
        return out

    def commands_unavailable(self) -> str | None:
        """Why this monitor takes no live commands, or ``None`` when it does."""
        if self._control is not None:
            return None
        if os.environ.get("TUIMON_DISABLE"):
            return "TUIMON_DISABLE is set: the monitor is off"
        if self._no_commands:
            return self._no_commands
        if getattr(self, "_failed", False):
            return "the monitor turned itself off"
        return "watch() was given no optimizer: commands apply at its step"

    def _unavailable(self, what: str) -> None:
        """Warn once that ``what`` does nothing on this monitor, and why (never raises)."""
        if self._warned_no_commands:
            return
        self._warned_no_commands = True
        try:
            print(
                f"tuimon: {what}: live commands are unavailable ({self.commands_unavailable()}); "
                "the script runs on without them",
                file=sys.stderr,
                flush=True,
            )
        except Exception:
            pass

    @property
    def lr_scale(self) -> float:
        """A live factor for the loop's own learning-rate schedule (1.0 until a ``set_lr`` changes it).

        A loop that assigns ``param_group["lr"] = get_lr(it)`` every iteration overwrites a live ``set_lr`` at the
        next step; multiply by this instead (``lr = get_lr(it) * mon.lr_scale``) and ``set_lr`` persists: once the
        loop has read it, ``set_lr`` sets the group's lr for the step being taken *and* multiplies this scale by
        new/old, so the schedule goes on from the new level. :meth:`schedule` wraps a schedule function likewise.
        """
        c = self._control
        if c is None:
            return 1.0
        c.lr_scale_used = True
        return float(c.lr_scale)

    def schedule(self, fn: Callable[..., float]) -> Callable[..., float]:
        """Wrap a learning-rate schedule function so that a live ``set_lr`` persists: the wrapper returns
        ``fn(...) * mon.lr_scale`` (see :attr:`lr_scale`). Example: ``get_lr = mon.schedule(get_lr)``."""

        @functools.wraps(fn)
        def scheduled(*args: Any, **kwargs: Any) -> float:
            return fn(*args, **kwargs) * self.lr_scale

        return scheduled

    @property
    def should_stop(self) -> bool:
        """Whether a ``stop`` command arrived: check it in the training loop and leave the loop when true."""
        return self._control is not None and self._control.should_stop

    @property
    def paused(self) -> bool:
        """Whether the run is paused (the training thread then waits inside ``optimizer.step()``)."""
        return self._control is not None and self._control.paused

    def command(self, name: str | None = None, *, help: str | None = None) -> Callable[[F], F]:
        """Register a function as a custom live command, applied at an optimizer-step boundary.

        Its parameters must be annotated ``float``, ``int``, ``bool`` or ``str`` (those with defaults are
        optional); the viewer lists the command with typed arguments and the agent validates them (floats must
        be finite). Its return value is the ack's ``new``. An exception becomes a rejected ack; training goes on.

        Example::

            @mon.command("set_dropout")
            def set_dropout(p: float) -> float:
                model.drop.p = p
                return p

        Args:
            name: The command's name (default: the function's name).
            help: One line for the viewer (default: the docstring's first line).

        Without commands (no optimizer watched, ``TUIMON_DISABLE``, the monitor off) the function is returned
        unchanged, still callable by the script, with one warning saying why.

        Raises:
            ValueError: The name is invalid or a built-in's.
            TypeError: A parameter lacks a supported annotation.
        """

        def register(fn: F) -> F:
            if self._control is None:
                self._unavailable(f"@mon.command({(name or getattr(fn, '__name__', '?'))!r})")
                return fn
            self._control.register(name or fn.__name__, fn, help)
            return fn

        return register

    def on_checkpoint(self, fn: Callable[[int], Any]) -> Callable[[int], Any]:
        """Use ``fn(step)`` for the ``checkpoint`` command instead of the default ``torch.save`` of the model and
        optimizer state into the run directory; its return value (a path, say) goes into the ack. Usable as a
        decorator (:meth:`checkpoint_handler` is the same)."""
        if self._control is not None:
            self._control.checkpoint_fn = fn
        else:
            self._unavailable("mon.on_checkpoint")
        return fn

    checkpoint_handler = on_checkpoint

    def watch_scheduler(self, *schedulers: Any) -> None:
        """Tell the monitor about LR schedulers, so a ``set_lr`` persists under them (those that refer to the
        optimizer are also found on their own)."""
        if self._control is not None:
            self._control.schedulers.extend(s for s in schedulers if s is not None)
        else:
            self._unavailable("mon.watch_scheduler")
