"""The Monitor's live-command API: ``mon.should_stop``, ``mon.paused``, ``@mon.command``, checkpoint handlers.

:class:`ControlMixin` is a base of :class:`~tuimon_agent.monitor.Monitor`; it installs the
:class:`~tuimon_agent.control.Controller` as the optimizer's step pre-hook.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class ControlMixin:
    """Live commands on a :class:`~tuimon_agent.monitor.Monitor` (needs ``watch(model, optimizer)``)."""

    _control: Any = None
    _hooks: list[Any]
    run_dir: Any

    def _install_control(
        self, model: Any, optimizer: Any, scheduler: Any, *, hello: dict[str, Any] | None
    ) -> bool:
        """Create the controller and register its step pre-hook; returns whether it was installed."""
        if optimizer is None or not hasattr(optimizer, "register_step_pre_hook"):
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
        return {"reason": "stopped" if reason == "closed" else reason, "stop_reason": c.stop_reason}

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

        Raises:
            ValueError: No optimizer was watched, or the name is invalid or a built-in's.
            TypeError: A parameter lacks a supported annotation.
        """

        def register(fn: F) -> F:
            if self._control is None:
                raise ValueError(
                    "@mon.command needs watch(model, optimizer, ...): commands apply at its step"
                )
            self._control.register(name or fn.__name__, fn, help)
            return fn

        return register

    def on_checkpoint(self, fn: Callable[[int], Any]) -> Callable[[int], Any]:
        """Use ``fn(step)`` for the ``checkpoint`` command instead of the default ``torch.save`` of the model and
        optimizer state into the run directory; its return value (a path, say) goes into the ack. Usable as a
        decorator (:meth:`checkpoint_handler` is the same)."""
        if self._control is not None:
            self._control.checkpoint_fn = fn
        return fn

    checkpoint_handler = on_checkpoint

    def watch_scheduler(self, *schedulers: Any) -> None:
        """Tell the monitor about LR schedulers, so a ``set_lr`` persists under them (those that refer to the
        optimizer are also found on their own)."""
        if self._control is not None:
            self._control.schedulers.extend(s for s in schedulers if s is not None)
