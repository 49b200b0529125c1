"""The training-thread side of live commands: apply queued commands at the optimizer-step boundary.

The :class:`Controller` runs as an optimizer step **pre**-hook. The agent thread (``control_gate.py``) only checks
commands and appends them to :attr:`Controller.pending`; when that deque is empty the hook costs an attribute read
(plus, with clipping on, the clip itself; under torch.distributed with more than one rank, one small broadcast).
Each command is applied once, at the step being taken (``step_of()``), and its result (applied with the old and
new values, or rejected with the reason) goes to :attr:`Controller.done` for the agent thread to ack and record.
Nothing here raises into the training loop: a command that fails is acked as rejected.
"""

from __future__ import annotations

import collections
import inspect
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import schedulers as _schedulers
from .commands import ArgSpec, CommandSpec

PAUSE_POLL = 0.25
"""Seconds between two looks at the queue while paused (and between two broadcasts under torch.distributed, so no
rank waits long enough in a collective to trip its timeout)."""
STOP_IGNORED_AFTER = 3
"""Optimizer steps a loop may take after the step at which ``stop`` was applied before the stop is reported as
ignored (the loop does not read ``mon.should_stop``) and ``interrupt`` is offered."""
INTERRUPT_FLUSH = 1.0
"""Seconds at most ``interrupt`` waits for the agent thread to take its ack (recorded, sent) before raising."""
LR_RTOL = 1e-6
"""Relative difference between a group's lr and the value ``set_lr`` put there that counts as overwritten."""


def _warn(message: str) -> None:
    try:
        print(f"tuimon: {message}", file=sys.stderr, flush=True)
    except Exception:
        pass


def _plain(v: Any) -> Any:
    """A value as msgpack can carry it (numbers, strings, lists, maps), anything else as its repr."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    try:
        return float(v)
    except Exception:
        return repr(v)[:200]


_ANNOTATION_TYPES = {float: "float", int: "int", bool: "bool", str: "str"}


def spec_from_function(name: str, fn: Callable[..., Any], help: str | None = None) -> CommandSpec:
    """A custom command's spec from its function's annotated parameters (float, int, bool or str).

    Parameters with a default are optional. A float argument must be finite.

    Raises:
        TypeError: A parameter has no annotation, an unsupported one, or is ``*args``/``**kwargs``.
    """
    args = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"command {name!r}: *args and **kwargs are not supported ({p.name})")
        ann = p.annotation
        type_name = _ANNOTATION_TYPES.get(ann) if not isinstance(ann, str) else ann
        if type_name not in ("float", "int", "bool", "str"):
            raise TypeError(
                f"command {name!r}: parameter {p.name} needs a float, int, bool or str annotation, got {ann!r}"
            )
        required = p.default is inspect.Parameter.empty
        args.append(ArgSpec(p.name, type_name, required=required, default=None if required else p.default))
    doc = help if help is not None else (inspect.getdoc(fn) or "").split("\n")[0]
    return CommandSpec(name, tuple(args), help=doc, builtin=False)


class Controller:
    """Applies live commands to one optimizer at its step boundary (the training thread's half).

    Args:
        optimizer: The optimizer whose step pre-hook this is.
        model: The model (for the default checkpoint), or ``None``.
        run_dir: Where default checkpoints go.
        step_of: The step the ``optimizer.step()`` being taken belongs to.
        sync: A ``control_ddp.DistSync`` that makes every rank apply the same commands, or ``None``.
        rank: This process's torch.distributed rank (only rank 0 reports results).
    """

    def __init__(
        self,
        optimizer: Any,
        *,
        model: Any = None,
        run_dir: Path | None = None,
        step_of: Callable[[], int],
        sync: Any = None,
        rank: int = 0,
    ) -> None:
        self.optimizer = optimizer
        self.model = model
        self.run_dir = run_dir
        self.step_of = step_of
        self.sync = sync
        self.rank = rank
        self.pending: collections.deque[tuple[str, str, dict[str, Any], Any]] = collections.deque()
        """``(id, name, args, reply_to)`` appended by the agent thread, taken by the training thread."""
        self.done: collections.deque[dict[str, Any]] = collections.deque()
        """Results for the agent thread: ack fields plus ``"_to"`` (the reply address)."""
        self.clip_norms: collections.deque[tuple[int, float, Any]] = collections.deque(maxlen=10_000)
        """``(step, max_norm, pre-clip norm tensor)`` of clipped steps, read (``float()``) on the agent thread."""
        self.wake = threading.Event()
        self.paused = False
        self.should_stop = False
        self.stop_reason: str | None = None
        self.max_norm: float | None = None
        self.custom: dict[str, tuple[CommandSpec, Callable[..., Any]]] = {}
        self.specs_version = 0
        """Bumped when a custom command is registered (the agent thread then records the new list)."""
        self.checkpoint_fn: Callable[[int], Any] | None = None
        self.schedulers: list[Any] = []
        self._warned_amp = False
        self.lr_scale = 1.0
        """The live factor on the user's own schedule (``mon.lr_scale``); ``set_lr`` changes it once it is used."""
        self.lr_scale_used = False
        """Whether the loop read ``mon.lr_scale`` (directly or through ``mon.schedule``)."""
        self._lr_check: tuple[str, int, dict[int, float], Any] | None = None
        """``(id, step, {group: lr set}, reply_to)`` of the latest ``set_lr`` applied to the groups directly, checked
        at the next step's pre-hook (did the loop overwrite it?)."""
        self._stop_check: tuple[str, int, Any] | None = None
        """``(id, step, reply_to)`` of an applied ``stop`` whose loop has not left yet."""
        self._interrupt = False
        self.interrupted = False
        """Whether an ``interrupt`` command was applied (the end record says so)."""

    # -- registration (training thread, before or during the run) --------------------------------------------------

    def register(self, name: str, fn: Callable[..., Any], help: str | None = None) -> CommandSpec:
        """Register a custom command (see :meth:`Monitor.command`)."""
        from .commands import COMMANDS, MAX_NAME

        if not isinstance(name, str) or not name or len(name) > MAX_NAME or not name.isidentifier():
            raise ValueError(
                f"invalid command name={name!r}: must be an identifier of at most {MAX_NAME} chars"
            )
        if name in COMMANDS:
            raise ValueError(f"invalid command name={name!r}: it is a built-in command")
        spec = spec_from_function(name, fn, help)
        self.custom[name] = (spec, fn)
        self.specs_version += 1
        return spec

    def specs(self) -> dict[str, CommandSpec]:
        """Every command this run accepts: the built-ins and the custom ones."""
        from .commands import COMMANDS

        return {**COMMANDS, **{n: s for n, (s, _) in self.custom.items()}}

    def custom_specs(self) -> list[dict[str, Any]]:
        """The custom commands' specs as plain maps (for ``hello`` and ``commands`` records)."""
        return [s.to_data() for s, _ in list(self.custom.values())]

    # -- the step boundary (training thread) -------------------------------------------------------------------------

    def pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> Any:
        """The optimizer step pre-hook: check the latest ``set_lr`` and ``stop`` held, apply what is queued, wait
        while paused, clip (returns the step's new ``(args, kwargs)`` when its closure must clip); then raise
        ``KeyboardInterrupt`` when an ``interrupt`` was applied."""
        result = None
        try:
            if self._lr_check is not None:
                self._check_lr()
            if self._stop_check is not None:
                self._check_stop()
            if self.sync is not None:
                self._apply_all(self._exchange())
            elif self.pending:
                self._apply_all(self._take())
            while self.paused and not self.should_stop:
                if self.sync is None:
                    self.wake.wait(PAUSE_POLL)
                    self.wake.clear()
                    self._apply_all(self._take())
                else:
                    self._apply_all(self._exchange(wait=PAUSE_POLL))
            if self.max_norm is not None:
                result = self._clip_step(args, kwargs)
        except Exception as exc:  # never into the training loop
            _warn(f"live commands: {type(exc).__name__}: {exc}; training goes on")
        if self._interrupt:
            # An ``interrupt`` the user confirmed: leave the loop as Ctrl-C would, at this step boundary (its ack
            # and any checkpoint are already queued for the agent thread; close() at exit writes the end record).
            self._interrupt = False
            deadline = time.monotonic() + INTERRUPT_FLUSH
            while (
                self.done and time.monotonic() < deadline
            ):  # the ack reaches the run file and the sender first
                time.sleep(0.005)
            raise KeyboardInterrupt("tuimon: interrupt command (the loop did not read mon.should_stop)")
        return result

    def _follow_up(self, cmd_id: str, name: str, status: str, step: int, to: Any, **fields: Any) -> None:
        """Report what became of an applied command (rank 0): ``held``, ``overwritten`` or ``ignored``."""
        if self.rank == 0:
            self.done.append(
                {"id": cmd_id, "name": name, "status": status, "step": step, "_to": to, **fields}
            )

    def _check_lr(self) -> None:
        """At the step after a ``set_lr``: is each group's lr still the value set (or what a watched scheduler
        made of it)? A loop that assigns ``param_group["lr"]`` each iteration has overwritten it."""
        assert self._lr_check is not None
        cmd_id, _applied_at, expected, to = self._lr_check
        self._lr_check = None
        groups = self.optimizer.param_groups
        step = self.step_of()
        sched_lrs = self._scheduler_lrs()
        found: dict[int, float] = {}
        for g, want in expected.items():
            if g >= len(groups):
                continue
            now = float(groups[g]["lr"])
            if math.isclose(now, want, rel_tol=LR_RTOL):
                continue
            if any(g < len(lrs) and math.isclose(now, float(lrs[g]), rel_tol=LR_RTOL) for lrs in sched_lrs):
                continue  # a watched scheduler stepped: it carries the change on
            found[g] = now
        if not found:
            self._follow_up(cmd_id, "set_lr", "held", step, to)
            return
        g0 = next(iter(found))
        reason = (
            f"overwritten by the training loop at step {step}: group {g0} lr is {found[g0]:.6g}, not the "
            f"{expected[g0]:.6g} set (the loop assigns param_group['lr'] itself). To make set_lr persist, multiply "
            "your schedule by mon.lr_scale (lr = get_lr(it) * mon.lr_scale) or wrap it: get_lr = mon.schedule(get_lr)"
        )
        self._follow_up(
            cmd_id,
            "set_lr",
            "overwritten",
            step,
            to,
            reason=reason,
            expected={str(g): expected[g] for g in found},
            found={str(g): v for g, v in found.items()},
            fix="lr_scale",
        )

    def _scheduler_lrs(self) -> list[list[Any]]:
        out = []
        for s in self._all_schedulers():
            lrs = getattr(s, "_last_lr", None)
            if isinstance(lrs, (list, tuple)):
                out.append(list(lrs))
        return out

    def _check_stop(self) -> None:
        """Each step after a ``stop``: a loop still stepping :data:`STOP_IGNORED_AFTER` steps later ignores it."""
        assert self._stop_check is not None
        cmd_id, applied_at, to = self._stop_check
        step = self.step_of()
        if step - applied_at < STOP_IGNORED_AFTER:
            return
        self._stop_check = None
        reason = (
            f"ignored: the loop took {step - applied_at} more optimizer steps after stop (applied at step "
            f"{applied_at}); it does not read mon.should_stop. Escalate with interrupt (tuimon send RUN stop "
            "--force): KeyboardInterrupt raised in the training thread at the next step, as Ctrl-C would"
        )
        self._follow_up(cmd_id, "stop", "ignored", step, to, reason=reason, applied_step=applied_at)

    def _clip_step(self, args: Any, kwargs: Any) -> Any:
        """Clip now; or, when the step has a closure (LBFGS, Lightning's automatic optimization), whose
        ``backward()`` has not run yet, wrap it so that every call of it clips the gradients it made."""
        from .instruments import AfterClosure, closure_of, with_closure

        closure = closure_of(args, kwargs)
        if closure is None:
            self._clip(kwargs)
            return None

        def clip() -> None:
            try:
                self._clip(kwargs)
            except Exception as exc:  # never into the training loop
                _warn(f"live commands: {type(exc).__name__}: {exc}; training goes on")

        return with_closure(args, kwargs, AfterClosure(closure, clip, every=True))

    def _take(self) -> list[tuple[str, str, dict[str, Any], Any]]:
        out = []
        q = self.pending
        while q:
            out.append(q.popleft())
        return out

    def _exchange(self, wait: float = 0.0) -> list[tuple[str, str, dict[str, Any], Any]]:
        """Every rank gets rank 0's batch (collective)."""
        if self.rank == 0:
            if wait and not self.pending and not self.sync.announced:
                self.wake.wait(wait)
                self.wake.clear()
            batch = self._take()
            out = self.sync.exchange(batch) if not self.sync.refused else []
            if self.sync.refused:  # not every rank can apply them: none is applied anywhere
                self.paused = False
                for cmd_id, name, _args, to in batch:
                    reason = self.sync.refused
                    step = self.step_of()
                    self.done.append(
                        {
                            "id": cmd_id,
                            "name": name,
                            "status": "rejected",
                            "step": step,
                            "reason": reason,
                            "_to": to,
                        }
                    )
                return []
            return out
        return self.sync.exchange(None)

    def abandon(self, reason: str) -> None:
        """Reject every command taken but not applied (rank 0; called when the run closes); a ``stop`` the loop
        left on is reported ``held``."""
        if self._stop_check is not None:
            cmd_id, applied_at, to = self._stop_check
            self._stop_check = None
            self._follow_up(cmd_id, "stop", "held", self.step_of() - 1, to, applied_step=applied_at)
        items = self._take()
        if self.sync is not None:
            items = self.sync.take_announced() + items
        if self.rank != 0:
            return
        for cmd_id, name, _args, to in items:
            self.done.append(
                {
                    "id": cmd_id,
                    "name": name,
                    "status": "rejected",
                    "step": self.step_of() - 1,
                    "reason": reason,
                    "_to": to,
                }
            )

    def _apply_all(self, batch: list[tuple[str, str, dict[str, Any], Any]]) -> None:
        checkpoint = False
        for cmd_id, name, args, to in batch:
            step = self.step_of()
            try:
                old, new, extra = self._apply(name, args, step)
                self._watch(cmd_id, name, step, to, extra)
                result = {
                    "id": cmd_id,
                    "name": name,
                    "status": "applied",
                    "step": step,
                    "old": old,
                    "new": new,
                }
                result.update(extra)
            except Exception as exc:
                result = {
                    "id": cmd_id,
                    "name": name,
                    "status": "rejected",
                    "step": step,
                    "reason": f"{type(exc).__name__}: {exc}"[:500],
                }
            checkpoint = checkpoint or name == "checkpoint"
            if self.rank == 0:
                result["_to"] = to
                self.done.append(result)
        if checkpoint and self.sync is not None:
            self.sync.barrier()  # the other ranks wait until rank 0 has written the checkpoint

    def _watch(self, cmd_id: str, name: str, step: int, to: Any, extra: dict[str, Any]) -> None:
        """After applying: follow a direct ``set_lr`` to the next step, a ``stop`` until the loop leaves."""
        if name == "set_lr":
            direct = extra.get("how") != "lr_scale"
            self._lr_check = (
                (cmd_id, step, dict(zip(extra["groups"], extra["new_all"], strict=True)), to)
                if direct
                else None
            )
            extra["follow_up"] = direct
        elif name == "stop":
            self._stop_check = (cmd_id, step, to)
            extra["follow_up"] = True

    def _groups(self, args: dict[str, Any]) -> list[int]:
        n = len(self.optimizer.param_groups)
        g = args.get("group")
        if g is None:
            return list(range(n))
        if not 0 <= g < n:
            raise ValueError(f"unknown group={g!r} (the optimizer has {n} groups)")
        return [g]

    def _apply(self, name: str, args: dict[str, Any], step: int) -> tuple[Any, Any, dict[str, Any]]:
        opt = self.optimizer
        if name == "set_lr":
            groups = self._groups(args)
            old = [float(opt.param_groups[g]["lr"]) for g in groups]
            new = [args["value"] if "value" in args else o * args["scale"] for o in old]
            for v in new:
                if not (math.isfinite(v) and v > 0):
                    raise ValueError(f"the new lr={v!r} is not a finite number > 0")
            scheds = [] if self.lr_scale_used else self._all_schedulers()
            adjusted: list[str] = []
            for g, o, n in zip(groups, old, new, strict=True):
                group = opt.param_groups[g]
                lr = group["lr"]
                if hasattr(lr, "fill_"):
                    lr.fill_(n)
                else:
                    group["lr"] = n
                if o > 0 and scheds:
                    adjusted += _schedulers.rescale(opt, scheds, [g], n / o)
            extra: dict[str, Any] = {
                "groups": groups,
                "old_all": old,
                "new_all": new,
                "schedulers": sorted(set(adjusted)),
            }
            if self.lr_scale_used and old[0] > 0:
                # The loop multiplies its own schedule by mon.lr_scale: the change persists through the scale
                # (one factor for the run: the first changed group's ratio).
                old_scale = self.lr_scale
                self.lr_scale = old_scale * new[0] / old[0]
                extra.update(how="lr_scale", lr_scale_old=old_scale, lr_scale=self.lr_scale)
            elif adjusted:
                extra["how"] = "scheduler"
            else:
                extra["how"] = "param_groups"
            return old[0], new[0], extra
        if name == "set_weight_decay":
            groups = self._groups(args)
            for g in groups:
                if "weight_decay" not in opt.param_groups[g]:
                    raise ValueError(f"{type(opt).__name__} has no weight_decay in group {g}")
            old = [float(opt.param_groups[g]["weight_decay"]) for g in groups]
            for g in groups:
                opt.param_groups[g]["weight_decay"] = args["value"]
            return old[0], args["value"], {"groups": groups, "old_all": old}
        if name == "set_clip":
            old_norm, self.max_norm = self.max_norm, args["max_norm"]
            return old_norm, self.max_norm, {}
        if name == "pause":
            old_p, self.paused = self.paused, True
            return old_p, True, {}
        if name == "resume":
            old_p, self.paused = self.paused, False
            return old_p, False, {}
        if name == "stop":
            old_s = self.should_stop
            self.should_stop = True
            self.paused = False
            self.stop_reason = args.get("reason") or "stop command"
            note = "mon.should_stop is set: the loop leaves only if it reads it"
            return old_s, True, {"reason": self.stop_reason, "note": note}
        if name == "interrupt":
            self.should_stop = True
            self.paused = False
            self.stop_reason = args.get("reason") or self.stop_reason or "interrupt command"
            self.interrupted = True
            self._stop_check = None
            path = self._checkpoint(step) if args.get("checkpoint") and self.rank == 0 else None
            self._interrupt = True
            note = "KeyboardInterrupt raised in the training thread at this step boundary"
            return None, True, {"reason": self.stop_reason, "path": path, "note": note}
        if name == "checkpoint":
            path = self._checkpoint(step) if self.rank == 0 else None
            return None, path, {"path": path}
        entry = self.custom.get(name)
        if entry is None:
            raise ValueError(f"unknown command {name!r}")
        return None, _plain(entry[1](**args)), {}

    def _all_schedulers(self) -> list[Any]:
        found = _schedulers.discover(self.optimizer)
        ids = {id(s) for s in found}
        return found + [s for s in self.schedulers if id(s) not in ids]

    def _checkpoint(self, step: int) -> Any:
        if self.checkpoint_fn is not None:
            return _plain(self.checkpoint_fn(step))
        import torch

        from .instruments import unwrap

        if self.run_dir is None:
            raise ValueError("no run directory to write the checkpoint to")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / f"checkpoint-{step}.pt"
        tmp = self.run_dir / f".checkpoint-{step}.pt.tmp"
        state: dict[str, Any] = {"optimizer": self.optimizer.state_dict(), "step": step}
        if self.model is not None:
            state["model"] = unwrap(self.model).state_dict()
        torch.save(state, tmp)
        os.replace(tmp, path)
        return str(path.resolve())

    def _clip(self, kwargs: Any) -> None:
        if (kwargs and kwargs.get("grad_scale") is not None) or getattr(self.optimizer, "grad_scale", None) is not None:
            # A fused optimizer under GradScaler: its gradients are still scaled here, so clipping them by a
            # plain max_norm would be wrong. Say so once and leave them alone.
            if not self._warned_amp:
                self._warned_amp = True
                _warn("set_clip: gradients reach a fused optimizer still scaled by GradScaler; not clipped")
            return
        import torch

        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        max_norm = self.max_norm
        assert max_norm is not None
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        # The norm stays a tensor here: the agent thread reads it, so this never waits for the device.
        self.clip_norms.append((self.step_of(), max_norm, norm.detach()))
