"""The agent-thread side of live commands: check each ``command`` request, queue it for the training thread, ack.

Runs on the agent thread only (from ``transport.AgentThread``). A request goes through, in order: size, fields,
signature (HMAC-SHA256 under the run's key, ``hmac.compare_digest``), duplicate ``id`` (the latest ack is sent
again, the command is never applied twice), replay (``seq`` not strictly greater than the sender's last),
staleness (``|now - ts| > MAX_CLOCK_SKEW``) and validation (name, group, arguments, values). It is then appended
to the :class:`~tuimon_agent.control.Controller`'s queue and acked ``queued``, or acked ``rejected`` with the
reason. Every request becomes a ``command`` record; every result the training thread reports becomes an ``ack``
record and an ``applied`` (or ``rejected``) ack to the sender, and later, for ``set_lr`` and ``stop``, a
follow-up (``held``, ``overwritten``, ``ignored``) recorded and sent the same way.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable
from typing import Any

from . import commands, protocol
from .commands import CommandRejected

ACK = "ack"
"""The ephemeral reply kind (ROUTER → the sender's DEALER)."""
FOLLOW_UPS = ("held", "overwritten", "ignored")
"""Acks that follow an applied one (``control.Controller``'s checks of ``set_lr`` and ``stop``)."""
SEEN_IDS = 10_000
"""Command ids whose latest ack is remembered for duplicates."""


def _warn(message: str) -> None:
    try:
        print(f"tuimon: {message}", file=sys.stderr, flush=True)
    except Exception:
        pass


def _short(v: Any) -> Any:
    """A hostile field value made safe to record: short strings and plain numbers kept, the rest summarised."""
    if v is None or isinstance(v, (bool, int, float)):
        return v
    if isinstance(v, str):
        return v[: commands.MAX_NAME * 2]
    return f"<{type(v).__name__}>"


class CommandGate:
    """Checks command requests and reports their results (the agent thread's half).

    Args:
        control: The run's controller.
        key: The run's signing key (bytes).
        emit: ``emit(kind, step, ts, data)`` records a persisted, published record.
        reply: ``reply(to, kind, data)`` sends an ephemeral message to one requester.
        step_of: The run's current step (for ``command`` records).
    """

    def __init__(
        self,
        control: Any,
        key: bytes,
        *,
        emit: Callable[[str, int | None, float, dict[str, Any]], None],
        reply: Callable[[Any, str, dict[str, Any]], None],
        step_of: Callable[[], int],
    ) -> None:
        self.control = control
        self._key = key
        self._emit = emit
        self._reply = reply
        self._step_of = step_of
        self._acks: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._last_seq: dict[str, int] = {}
        self._warned: set[str] = set()
        self._specs_version = 0

    def receive(self, to: Any, size: int, data: dict[str, Any]) -> None:
        """Handle one decoded ``command`` request of ``size`` bytes from ``to``."""
        fields = commands.command_fields(data)
        cmd_id = fields.get("id") if isinstance(fields.get("id"), str) else None
        try:
            if size > commands.MAX_COMMAND_BYTES:
                fields = {k: _short(fields.get(k)) for k in ("id", "name", "sender")}
                raise CommandRejected(
                    "oversized", f"command of {size} bytes exceeds the limit of {commands.MAX_COMMAND_BYTES}"
                )
            commands.check_fields(fields)
            if not commands.verify(self._key, fields):
                raise CommandRejected("signature", "bad signature (wrong key, or the command was altered)")
            assert cmd_id is not None
            if cmd_id in self._acks:  # a duplicate delivery: never applied twice
                self._reply(to, ACK, self._acks[cmd_id])
                return
            sender, seq = fields["sender"], fields["seq"]
            last = self._last_seq.get(sender)
            if last is not None and seq <= last:
                raise CommandRejected(
                    "replay", f"replayed seq={seq} from sender {sender!r} (last was {last})"
                )
            self._last_seq[sender] = seq
            skew = time.time() - fields["ts"]
            if abs(skew) > commands.MAX_CLOCK_SKEW:
                raise CommandRejected(
                    "stale", f"stale command: ts is {skew:+.0f} s from the agent's clock (limit ±300 s)"
                )
            refused = getattr(self.control.sync, "refused", None)
            if refused:
                raise CommandRejected("unavailable", refused)
            opt = self.control.optimizer
            args = commands.validate(
                fields["name"], fields["args"], specs=self.control.specs(), groups=len(opt.param_groups)
            )
        except CommandRejected as exc:
            self._reject(to, cmd_id, fields, exc)
            return
        self._record_command(fields, "queued", None)
        self._remember(cmd_id, {"id": cmd_id, "status": "queued"})
        # Queued before the ack says so: a sender that steps as soon as it reads "queued" gets it at that step.
        self.control.pending.append((cmd_id, fields["name"], args, to))
        self.control.wake.set()
        self._reply(to, ACK, {"id": cmd_id, "status": "queued"})

    def _reject(self, to: Any, cmd_id: str | None, fields: dict[str, Any], exc: CommandRejected) -> None:
        reason = str(exc)
        if exc.kind not in self._warned:
            self._warned.add(exc.kind)
            _warn(f"rejected a command ({exc.kind}): {reason}")
        self._record_command(fields, "rejected", reason)
        ack = {"id": cmd_id, "status": "rejected", "reason": reason}
        self._emit(
            protocol.ACK,
            self._step_of(),
            time.time(),
            {"id": cmd_id, "name": _short(fields.get("name")), "status": "rejected", "reason": reason},
        )
        # Only an authenticated command's id is remembered: a forger must not fix the answer to a real id.
        if cmd_id is not None and exc.kind not in ("signature", "malformed", "oversized", "replay"):
            self._remember(cmd_id, ack)
        self._reply(to, ACK, ack)

    def _record_command(self, fields: dict[str, Any], status: str, reason: str | None) -> None:
        d = {k: v for k, v in fields.items() if k != "sig"}
        if status == "rejected":
            d = {
                k: (v if k == "args" and isinstance(v, dict) and len(repr(v)) < 2000 else _short(v))
                for k, v in d.items()
            }
        d["status"] = status
        if reason is not None:
            d["reason"] = reason
        self._emit(protocol.COMMAND, self._step_of(), time.time(), d)

    def _remember(self, cmd_id: str, ack: dict[str, Any]) -> None:
        self._acks[cmd_id] = ack
        self._acks.move_to_end(cmd_id)
        while len(self._acks) > SEEN_IDS:
            self._acks.popitem(last=False)

    def poll(self) -> None:
        """Report what the training thread applied (acks and ``ack`` records); record new custom commands."""
        done = self.control.done
        while done:
            result = done.popleft()
            to = result.pop("_to", None)
            self._emit(protocol.ACK, result.get("step"), time.time(), result)
            ack = result
            # A duplicate is answered with the outcome (applied), not with a follow-up about it.
            if result.get("id") is not None and result.get("status") not in FOLLOW_UPS:
                self._remember(result["id"], ack)
            if to is not None:
                self._reply(to, ACK, ack)
        if self.control.specs_version != self._specs_version:
            self._specs_version = self.control.specs_version
            self._emit(
                protocol.COMMANDS, self._step_of(), time.time(), {"commands": self.control.custom_specs()}
            )


def clip_values(control: Any, step: int | None) -> dict[str, float]:
    """``opt/clip`` and ``opt/grad_norm_preclip`` of the step ``step`` (agent thread; reads the norm tensor)."""
    q = control.clip_norms
    out: dict[str, float] = {}
    while q and step is not None and q[0][0] <= step:
        s, max_norm, norm = q.popleft()
        if s == step:
            try:
                out = {"opt/clip": float(max_norm), "opt/grad_norm_preclip": float(norm)}
            except (TypeError, ValueError, RuntimeError):
                out = {"opt/clip": float(max_norm)}
    return out
