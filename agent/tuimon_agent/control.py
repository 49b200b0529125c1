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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import schedulers as _schedulers
from .commands import ArgSpec, CommandSpec

PAUSE_POLL = 0.25
"""Seconds between two looks at the queue while paused (and between two broadcasts under torch.distributed, so no
rank waits long enough in a collective to trip its timeout)."""


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
        """The optimizer step pre-hook: apply what is queued, wait while paused, clip (returns the step's new
        ``(args, kwargs)`` when its closure must clip)."""
        try:
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
                return self._clip_step(args, kwargs)
        except Exception as exc:  # never into the training loop
            _warn(f"live commands: {type(exc).__name__}: {exc}; training goes on")
        return None

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
        """Reject every command taken but not applied (rank 0; called when the run closes)."""
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
            scheds = self._all_schedulers()
            adjusted: list[str] = []
            for g, o, n in zip(groups, old, new, strict=True):
                group = opt.param_groups[g]
                lr = group["lr"]
                if hasattr(lr, "fill_"):
                    lr.fill_(n)
                else:
                    group["lr"] = n
                if o > 0:
                    adjusted = _schedulers.rescale(opt, scheds, [g], n / o)
            extra = {"groups": groups, "old_all": old, "new_all": new, "schedulers": sorted(set(adjusted))}
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
            return old_s, True, {"reason": self.stop_reason}
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
        if kwargs and kwargs.get("grad_scale") is not None:
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
