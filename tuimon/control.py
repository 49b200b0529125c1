"""Live commands from the viewer side: parse what the user typed, sign and send it, follow it to its ack.

Three parts, all without Textual (the ``tuimon send`` CLI and the app share them):

- Parsing and describing: :func:`parse_command` turns ``set-lr 3e-4``, ``set-lr x0.5``, ``set-clip off`` or
  ``my_cmd k=v`` into a :class:`CommandRequest`; :func:`describe` says where a command stands in one line
  (``set_lr 0.0003 … pending``, ``applied at step 1234: lr 0.001 → 0.0003``, ``rejected: ...``).
- :class:`CommandLog`: every command of the run and its latest state, learnt from the agent's replies on this
  client's DEALER *and* from the ``command`` / ``ack`` records on the stream or in the run file, so a second viewer
  and ``tuimon replay`` show the same history.
- :class:`CommandClient`: a DEALER on the run's ROUTER (the socket pair the history requests use), on the app's
  asyncio loop. It signs each command with the run's key from its 0600 connection file
  (:func:`tuimon_agent.commands.make_command`, a random sender id per client, a strictly increasing ``seq``),
  and reports ``no answer`` when the agent says nothing within the timeout (the run may be dead).

The key is read by :func:`load_key`; a run whose connection file this user cannot read is read-only (:class:`ReadOnly`).
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from tuimon_agent import commands, discovery, protocol

NO_ANSWER_AFTER = 5.0
"""Seconds without any reply (not even ``queued``) before a command is reported as unanswered."""
HISTORY_KEPT = 500
"""Commands a :class:`CommandLog` remembers (the oldest are forgotten first)."""
COMMANDS_KIND = "commands"
"""Persisted record kind listing the run's custom commands registered after its hello."""
COMMAND_KIND = "command"
"""Request kind (viewer → agent) and persisted record kind of a command."""
ACK_KIND = "ack"
"""Reply kind (agent → viewer) and persisted record kind of an ack."""

ALIASES = {
    "set-lr": "set_lr",
    "lr": "set_lr",
    "set-clip": "set_clip",
    "clip": "set_clip",
    "set-wd": "set_weight_decay",
    "set-weight-decay": "set_weight_decay",
    "wd": "set_weight_decay",
}
"""CLI spellings of the built-in commands (the wire names work too)."""

VALUE_ARG = {"set_lr": "value", "set_clip": "max_norm", "set_weight_decay": "value"}
"""The argument each value-taking built-in reads from its one positional value."""
WHAT = {"set_lr": "lr", "set_clip": "clip", "set_weight_decay": "weight decay"}
"""What a value-taking built-in changes, as the ack line names it."""
FOLLOW_UPS = ("held", "overwritten", "ignored")
"""Acks that follow an ``applied`` one with ``"follow_up": true``: the change lasted (``held``), the loop assigned
its own lr over it (``overwritten``), or the loop went on stepping after ``stop`` (``ignored``)."""


class ReadOnly(PermissionError):
    """Commands cannot be sent to this run (a replay, an ended run, or a key this user cannot read)."""


@dataclass
class CommandRequest:
    """A command the user asked for, not yet signed or sent.

    Attributes:
        name: The wire name (``set_lr``, ``pause``, a custom command's name).
        args: Its arguments, as the agent validates them.
        label: How to show it: ``set_lr 0.0003``, ``set_clip off``.
    """

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            self.label = label_of(self.name, self.args)


@dataclass
class TrackedCommand:
    """One command and where it stands.

    Attributes:
        id: The command id (uuid hex).
        name: Its wire name.
        args: Its arguments.
        label: How to show it.
        status: ``pending`` (sent, no reply yet), ``queued``, ``applied``, ``rejected``, ``no answer``, or after
            ``applied``: ``overwritten`` (the loop put its own lr back) or ``ignored`` (the loop kept stepping after
            ``stop``).
        step: The step it took effect at (``applied``).
        old: The value before (``applied``).
        new: The value after (``applied``).
        reason: Why it was rejected, or why there was no answer.
        sent: ``time.monotonic()`` when this client sent it (``None`` when learnt from records).
        ts: Unix time of the latest change.
        mine: Sent by this client.
    """

    id: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    status: str = "pending"
    step: int | None = None
    old: Any = None
    new: Any = None
    reason: str | None = None
    sent: float | None = None
    ts: float = 0.0
    mine: bool = False
    follow_up: str | None = None
    """``"pending"`` when the agent said it will check the change at the next step (or the loop's exit), then the
    follow-up's status (``held``, ``overwritten``, ``ignored``)."""
    note: str | None = None
    """How the agent applied it (``set_lr`` through ``mon.lr_scale``, ``stop``'s caveat), when it said."""
    counted: bool = False
    """Whether its ``applied`` ack has been seen (it was counted once for the chart marker)."""

    @property
    def done(self) -> bool:
        """Whether nothing more will happen to it (applied, rejected, unanswered, overwritten or ignored)."""
        return self.status in ("applied", "rejected", "no answer", "overwritten", "ignored")


# -- parsing and describing ------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "off"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def label_of(name: str, args: dict[str, Any]) -> str:
    """A command in a few words: ``set_lr 0.0003``, ``set_lr ×0.5 (group 1)``, ``set_clip off``, ``stop``."""
    if name in VALUE_ARG:
        if "scale" in args:
            text = f"{name} ×{_fmt(args['scale'])}"
        elif VALUE_ARG[name] not in args:  # known only from an ack: no value to show
            text = name
        else:
            text = f"{name} {_fmt(args.get(VALUE_ARG[name]))}"
        if args.get("group") is not None:
            text += f" (group {args['group']})"
        return text
    rest = " ".join(f"{k}={_fmt(v)}" for k, v in args.items())
    return f"{name} {rest}".strip()


def parse_float(text: str, *, what: str) -> float:
    """A finite float from user input.

    Raises:
        ValueError: Not a number, or not finite, with the text in the message.
    """
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"invalid {what} {text.strip()!r}: not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"invalid {what} {text.strip()!r}: must be finite")
    return value


def parse_lr_text(text: str) -> dict[str, Any]:
    """A learning rate as typed: ``3e-4`` (absolute), ``x0.5`` / ``×0.5`` / ``*0.5`` (scale), ``/10`` (scale 0.1).

    Raises:
        ValueError: Not a number, not finite, or not > 0.
    """
    t = text.strip().replace(" ", "")
    if not t:
        raise ValueError("type a learning rate (3e-4), a factor (x0.5) or a divisor (/10)")
    if t[0] in "x×*/":
        factor = parse_float(t[1:], what="factor")
        if factor <= 0:
            raise ValueError(f"invalid factor {t[1:]!r}: must be > 0")
        return {"scale": 1.0 / factor if t[0] == "/" else factor}
    value = parse_float(t, what="learning rate")
    if value <= 0:
        raise ValueError(f"invalid learning rate {value!r}: must be > 0")
    return {"value": value}


def parse_clip_text(text: str) -> dict[str, Any]:
    """A clipping max norm as typed: a number > 0, or ``off`` / ``none`` / ``0`` to turn clipping off.

    Raises:
        ValueError: Not a number, not finite, or negative.
    """
    t = text.strip().lower()
    if t in ("off", "none", "no", "0", ""):
        return {"max_norm": None}
    value = parse_float(t, what="max norm")
    if value <= 0:
        raise ValueError(f"invalid max norm {value!r}: must be > 0 (or off)")
    return {"max_norm": value}


def parse_wd_text(text: str) -> dict[str, Any]:
    """A weight decay as typed: a number >= 0.

    Raises:
        ValueError: Not a number, not finite, or negative.
    """
    value = parse_float(text, what="weight decay")
    if value < 0:
        raise ValueError(f"invalid weight decay {value!r}: must be >= 0")
    return {"value": value}


_PARSERS: dict[str, Callable[[str], dict[str, Any]]] = {
    "set_lr": parse_lr_text,
    "set_clip": parse_clip_text,
    "set_weight_decay": parse_wd_text,
}


def _typed(text: str) -> Any:
    """``key=value`` values for custom commands: ints, floats, true/false, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        with contextlib.suppress(ValueError):
            return conv(text)
    return text


def parse_command(
    name: str,
    values: list[str],
    *,
    group: int | None = None,
    reason: str | None = None,
    specs: dict[str, commands.CommandSpec] | None = None,
) -> CommandRequest:
    """A command from CLI words: ``("set-lr", ["3e-4"])``, ``("set-clip", ["off"])``, ``("mine", ["k=2"])``.

    Args:
        name: The command (a wire name or a CLI alias such as ``set-lr``).
        values: The words after it: one value for ``set-lr``/``set-clip``/``set-wd``, ``key=value`` pairs otherwise.
        group: A param group for ``set-lr`` / ``set-wd``.
        reason: ``stop``'s reason.
        specs: The run's custom commands (from its hello), to type their arguments; without them a custom
            argument is an int, a float, true/false or else a string, as it reads.

    Returns:
        The request, checked by :func:`tuimon_agent.commands.validate` when its spec is known.

    Raises:
        ValueError: What is wrong, with the bad value in the message.
    """
    table = {**commands.COMMANDS, **(specs or {})}
    wire = ALIASES.get(name, name)
    if wire not in table and wire.replace("-", "_") in table:
        wire = wire.replace("-", "_")
    spec = table.get(wire)
    if wire in _PARSERS:
        if len(values) != 1:
            raise ValueError(f"{name} takes one value, got {len(values)}: {' '.join(values)!r}")
        args = _PARSERS[wire](values[0])
        if group is not None:
            if wire == "set_clip":
                raise ValueError("set-clip clips the global norm of every group: --group does not apply")
            args["group"] = group
    else:
        args = {}
        for word in values:
            key, sep, val = word.partition("=")
            if not sep or not key:
                raise ValueError(f"invalid argument {word!r} for {wire}: expected key=value")
            arg = spec.arg(key) if spec is not None else None
            args[key] = commands.parse_arg(arg, val) if arg is not None else _typed(val)
        if reason is not None:
            args["reason"] = reason
    if spec is not None:
        args = commands.validate(wire, args, specs=table)
    return CommandRequest(wire, args)


def describe(cmd: TrackedCommand) -> str:
    """Where a command stands, in one line.

    ``set_lr 0.0003 … pending``; ``set_lr 0.0003 queued``; ``set_lr applied at step 1234: lr 0.001 → 0.0003``;
    ``set_lr 0.0003 rejected: invalid value nan``; ``set_lr 0.0003: no answer …``; ``paused at step 120``,
    ``resumed at step 120``, ``checkpoint saved at step 130: ckpt/step130.pt``.
    """
    if cmd.status in ("overwritten", "ignored"):
        return f"{cmd.label} {cmd.reason or cmd.status}"
    if cmd.status == "applied":
        step = f"step {cmd.step:,}" if isinstance(cmd.step, int) else "the next step"
        if cmd.name in ("pause", "resume"):
            word = "paused" if cmd.name == "pause" else "resumed"
            again = cmd.old is not None and cmd.old == cmd.new  # a pause while paused, a resume while running
            return f"already {word} (at {step})" if again else f"{word} at {step}"
        if cmd.name == "checkpoint":
            if cmd.new is None:
                return f"checkpoint at {step}: no file written (only rank 0 saves)"
            return f"checkpoint saved at {step}: {_fmt(cmd.new)}"
        text = f"{cmd.name} applied at {step}"
        if cmd.name in ("stop", "interrupt"):
            pass
        elif cmd.old is not None or cmd.new is not None:
            text += f": {WHAT.get(cmd.name, cmd.name)} {_fmt(cmd.old)} → {_fmt(cmd.new)}"
        if cmd.note:
            text += f" ({cmd.note})"
        if cmd.follow_up == "held":
            text += " · the loop left" if cmd.name == "stop" else " · held at the next step"
        elif cmd.follow_up == "pending":
            text += (
                " · checking the next step …"
                if cmd.name == "set_lr"
                else " · waiting for the loop to leave …"
            )
        return text
    if cmd.status == "rejected":
        return f"{cmd.label} rejected: {cmd.reason or 'no reason given'}"
    if cmd.status == "no answer":
        return f"{cmd.label}: {cmd.reason or 'no answer'}"
    if cmd.status == "queued":
        return f"{cmd.label} queued … waiting for the next step"
    return f"{cmd.label} … pending"


# -- the run's command history ----------------------------------------------------------------------------------------


class CommandLog:
    """Every command of one run and its latest state, from replies and records, in bounded memory.

    Replies (this client's DEALER) and records (``command`` and ``ack`` on the stream or in the run file) may arrive
    in any order and more than once; an ``applied`` or ``rejected`` state is never overwritten by ``queued``.

    Args:
        keep: How many commands to remember.
        on_applied: Called once per command when it is first known as applied (the run state adds a chart marker).
    """

    def __init__(
        self, *, keep: int = HISTORY_KEPT, on_applied: Callable[[TrackedCommand], None] | None = None
    ) -> None:
        self._keep = keep
        self._on_applied = on_applied
        self._cmds: OrderedDict[str, TrackedCommand] = OrderedDict()
        self.version = 0
        """Bumped on every change."""
        self.applied: list[TrackedCommand] = []
        """Applied commands in the order their acks arrived (for chart markers)."""
        self.custom: dict[str, commands.CommandSpec] = {}
        """Custom commands announced by ``commands`` records (those at start are in the hello)."""

    def __len__(self) -> int:
        return len(self._cmds)

    def __iter__(self) -> Iterable[TrackedCommand]:
        return iter(list(self._cmds.values()))

    def get(self, cid: str) -> TrackedCommand | None:
        """The command with this id, if known."""
        return self._cmds.get(cid)

    def entries(self) -> list[TrackedCommand]:
        """Every remembered command, oldest first."""
        return list(self._cmds.values())

    def paused_at(self) -> int | None:
        """The step the run is paused at (the latest applied pause/resume was a pause), else ``None``; ``-1`` when
        paused at a step the ack did not name."""
        for cmd in reversed(self.applied):
            if cmd.name in ("pause", "resume"):
                if cmd.name == "resume":
                    return None
                return cmd.step if isinstance(cmd.step, int) else -1
        return None

    def latest(self) -> TrackedCommand | None:
        """The command whose state changed last."""
        if not self._cmds:
            return None
        return max(self._cmds.values(), key=lambda c: c.ts)

    def add(self, cmd: TrackedCommand) -> TrackedCommand:
        """Remember a command this client just sent (``pending``)."""
        self._cmds[cmd.id] = cmd
        self._trim()
        self.version += 1
        return cmd

    def _entry(self, cid: str, name: Any = None, args: Any = None) -> TrackedCommand:
        cmd = self._cmds.get(cid)
        if cmd is None:
            nm = str(name) if name is not None else "?"
            a = dict(args) if isinstance(args, dict) else {}
            cmd = self._cmds[cid] = TrackedCommand(cid, nm, a, label_of(nm, a))
            self._trim()
        else:  # an ack may come before the command record: fill in what it lacked
            if name is not None and cmd.name == "?":
                cmd.name = str(name)
            if isinstance(args, dict) and args and not cmd.args:
                cmd.args = dict(args)
            if not cmd.mine:
                cmd.label = label_of(cmd.name, cmd.args)
        return cmd

    def _trim(self) -> None:
        while len(self._cmds) > self._keep:
            self._cmds.popitem(last=False)

    def apply_reply(self, data: dict[str, Any], *, ts: float | None = None) -> TrackedCommand | None:
        """An ack from the agent (a reply on the DEALER, or an ``ack`` record's payload).

        Args:
            data: ``{"id", "status", "step", "old", "new", "reason", "name"}`` (missing keys are fine).
            ts: When it happened (default now).

        Returns:
            The command it is about, or ``None`` when it has no usable id or status.
        """
        cid, status = data.get("id"), data.get("status")
        if not isinstance(cid, str) or status not in ("queued", "applied", "rejected", *FOLLOW_UPS):
            return None
        cmd = self._entry(cid, data.get("name"))
        if status in FOLLOW_UPS:
            if cmd.follow_up in FOLLOW_UPS:
                return cmd  # a repeated follow-up changes nothing
            cmd.follow_up = status
            if status != "held":
                cmd.status = status
                reason = data.get("reason")
                cmd.reason = str(reason) if reason is not None else status
            cmd.ts = ts if ts is not None else time.time()
            self.version += 1
            return cmd
        if status == "queued" and (cmd.status in ("applied", "rejected") or cmd.counted):
            return cmd  # a late or repeated queued never undoes the outcome
        if cmd.counted and status == "applied":
            return cmd  # exactly once: a duplicate ack changes nothing
        if status == "applied" and cmd.follow_up in ("overwritten", "ignored"):
            pass  # the applied ack came after its follow-up: keep the follow-up's status, count it below
        else:
            cmd.status = status
        if status == "applied":
            cmd.counted = True
            step = data.get("step")
            cmd.step = step if isinstance(step, int) and not isinstance(step, bool) else None
            cmd.old, cmd.new = data.get("old"), data.get("new")
            if cmd.follow_up is None and data.get("follow_up"):
                cmd.follow_up = "pending"
            if isinstance(data.get("note"), str):
                cmd.note = data["note"]
            elif data.get("how") == "lr_scale" and isinstance(data.get("lr_scale"), (int, float)):
                cmd.note = f"through mon.lr_scale, now ×{data['lr_scale']:.4g}"
            self.applied.append(cmd)
            del self.applied[: max(0, len(self.applied) - self._keep)]
            if self._on_applied is not None:
                self._on_applied(cmd)
        if status == "rejected":
            reason = data.get("reason")
            cmd.reason = str(reason) if reason is not None else None
        cmd.ts = ts if ts is not None else time.time()
        self.version += 1
        return cmd

    def apply_record(self, rec: protocol.Record) -> TrackedCommand | None:
        """A persisted ``command`` or ``ack`` record (other kinds are ignored).

        Returns:
            The command it is about, if any.
        """
        d = rec.data
        if rec.kind == COMMANDS_KIND:
            self.custom.update(commands.specs_from_data(d.get("commands")))
            self.version += 1
            return None
        if rec.kind == COMMAND_KIND:
            cid = d.get("id")
            if not isinstance(cid, str):
                return None
            cmd = self._entry(cid, d.get("name"), d.get("args"))
            if cmd.ts == 0.0:
                cmd.ts = rec.ts
            if d.get("status") == "rejected":
                return self.apply_reply({**d, "id": cid}, ts=rec.ts)
            if cmd.status == "pending" and d.get("status") == "queued":
                cmd.status = "queued"
            self.version += 1
            return cmd
        if rec.kind == ACK_KIND:
            data = dict(d)
            if data.get("step") is None and rec.step is not None:
                data["step"] = rec.step
            return self.apply_reply(data, ts=rec.ts)
        return None

    def expire(self, now: float, timeout: float, *, why: str) -> list[TrackedCommand]:
        """Mark this client's commands still ``pending`` after ``timeout`` seconds as ``no answer``.

        Args:
            now: ``time.monotonic()``.
            timeout: Seconds.
            why: The reason to show.

        Returns:
            The commands that changed.
        """
        out = []
        for cmd in self._cmds.values():
            if cmd.mine and cmd.status == "pending" and cmd.sent is not None and now - cmd.sent > timeout:
                cmd.status, cmd.reason, cmd.ts = "no answer", why, time.time()
                out.append(cmd)
        if out:
            self.version += 1
        return out


# -- keys and the client ----------------------------------------------------------------------------------------------


def load_key(info: discovery.ConnectionInfo) -> bytes:
    """The run's signing key, read again from its connection file (so only a user who can read it may command).

    Args:
        info: The live run.

    Returns:
        The key bytes, as :mod:`tuimon_agent.commands` signs with them.

    Raises:
        ReadOnly: The connection file is unknown, unreadable by this user, or has no key.
    """
    unreadable = "read-only: this run's connection file is not readable by you"
    if not info.path:
        raise ReadOnly(f"{unreadable} (the run was named by its endpoint; name it by id or connection file)")
    try:
        key = discovery.ConnectionInfo.load(info.path).key
    except (OSError, ValueError) as exc:
        raise ReadOnly(f"{unreadable} ({exc})") from None
    try:
        return commands.decode_key(key)
    except ValueError as exc:
        raise ReadOnly(f"read-only: {exc} ({info.path})") from None


def new_sender() -> str:
    """A random sender id for one client (its ``seq`` counts from 1)."""
    return "viewer-" + secrets.token_hex(6)


def decode_reply(body: bytes) -> dict[str, Any] | None:
    """An ack reply's payload, or ``None`` when the body is not an ack."""
    try:
        rec = protocol.decode(body)
    except protocol.ProtocolError:
        return None
    if rec.kind != ACK_KIND:
        if rec.kind == protocol.ERROR:
            return {"status": "error", "reason": str(rec.data.get("message", "error"))}
        return None
    return rec.data


class CommandClient:
    """Signs and sends commands to one live run on the current asyncio loop, and follows their acks.

    Call :meth:`submit` to send (it never waits) and run :meth:`run` as a task or Textual worker to receive replies
    and expire unanswered commands; ``on_change`` is called (on the loop) for every command whose state changed.

    Args:
        info: The live run.
        log: Where commands are tracked (the app passes its run state's log, so records and replies meet).
        on_change: Called with each command whose state changed.
        timeout: Seconds without any reply before a command is ``no answer``.
        ctx: The ZeroMQ context (default: a new asyncio context, destroyed by :meth:`close`).

    Raises:
        ReadOnly: The run's key cannot be read.
    """

    def __init__(
        self,
        info: discovery.ConnectionInfo,
        *,
        log: CommandLog | None = None,
        on_change: Callable[[TrackedCommand], None] | None = None,
        timeout: float = NO_ANSWER_AFTER,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.info = info
        self.key = load_key(info)
        self.log = log if log is not None else CommandLog()
        self.on_change = on_change
        self.timeout = timeout
        self.sender = new_sender()
        self._seq = 0
        self._own_ctx = ctx is None
        self._ctx = ctx or zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        self._sock.connect(info.router)
        self._closed = False

    @property
    def run_id(self) -> str:
        """The run this client commands."""
        return self.info.run_id

    def submit(self, req: CommandRequest) -> TrackedCommand:
        """Sign and send a command; returns it as ``pending`` (it never waits for the agent).

        Args:
            req: What to send.

        Returns:
            The tracked command (also in :attr:`log`).
        """
        self._seq += 1
        fields = commands.make_command(self.key, req.name, req.args, sender=self.sender, seq=self._seq)
        cmd = TrackedCommand(
            fields["id"],
            req.name,
            dict(req.args),
            req.label,
            sent=time.monotonic(),
            ts=time.time(),
            mine=True,
        )
        self.log.add(cmd)
        try:
            self._sock.send(protocol.encode_request(COMMAND_KIND, **fields), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            cmd.status, cmd.reason = "no answer", f"could not send: {exc}"
        self._changed(cmd)
        return cmd

    def _changed(self, cmd: TrackedCommand) -> None:
        if self.on_change is not None:
            self.on_change(cmd)

    def handle(self, body: bytes) -> TrackedCommand | None:
        """Apply one reply body (an ack); returns the command it changed."""
        data = decode_reply(body)
        if data is None:
            return None
        cmd = self.log.apply_reply(data)
        if cmd is not None:
            self._changed(cmd)
        return cmd

    def expire(self) -> None:
        """Report commands unanswered for longer than the timeout."""
        alive = self.info.alive()
        why = (
            f"no answer in {self.timeout:g} s: the run's process (pid {self.info.pid}) is gone"
            if not alive
            else f"no answer in {self.timeout:g} s: the run may be stuck, or not reading commands"
        )
        for cmd in self.log.expire(time.monotonic(), self.timeout, why=why):
            self._changed(cmd)

    async def run(self) -> None:
        """Receive replies and expire unanswered commands until cancelled or closed; closes the client at the end
        (so an app that exits, cancelling this worker, leaves no open socket behind)."""
        try:
            while not self._closed:
                if await self._sock.poll(200):
                    frames = await self._sock.recv_multipart()
                    self.handle(frames[-1])
                self.expire()
        except zmq.ZMQError:
            if not self._closed:
                raise
        finally:
            self.close()

    async def wait(
        self, cmd: TrackedCommand, *, until: Iterable[str], timeout: float, past_no_answer: bool = False
    ) -> TrackedCommand:
        """Receive replies until ``cmd`` reaches one of ``until`` (or is applied or rejected), or ``timeout`` seconds
        pass; a ``no answer`` ends the wait too, unless ``past_no_answer`` (a late ack still counts then).

        Use it instead of :meth:`run` (scripts, benchmarks), not beside it.
        """
        wanted = set(until)
        final = {"applied", "rejected", "overwritten", "ignored"} | (
            set() if past_no_answer else {"no answer"}
        )
        deadline = time.monotonic() + timeout
        while cmd.status not in wanted and cmd.status not in final:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await self._receive(left)
        return cmd

    async def wait_follow_up(self, cmd: TrackedCommand, *, timeout: float) -> TrackedCommand:
        """After an ``applied`` ack that promised a follow-up: receive replies until it comes (``held``,
        ``overwritten``, ``ignored``) or ``timeout`` seconds pass (``cmd.follow_up`` then stays ``"pending"``)."""
        deadline = time.monotonic() + timeout
        while cmd.follow_up == "pending":
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await self._receive(left)
        return cmd

    async def _receive(self, left: float) -> None:
        if await self._sock.poll(max(1, int(min(left, 0.2) * 1000))):
            self.handle((await self._sock.recv_multipart())[-1])
        self.expire()

    def close(self) -> None:
        """Close the socket (and the context, when this client made it); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._sock.close(linger=0)
        if self._own_ctx:
            self._ctx.destroy(linger=0)
