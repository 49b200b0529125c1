"""Live commands on the wire: what each command takes, how a command is signed, checked and validated.

Pure and torch-free: the viewer imports it to build and sign commands, the agent to check them. The agent side
that applies them lives in ``control.py``.

A command is a map of fields (sent as ``protocol.encode_request("command", **fields)`` on the DEALER → ROUTER
socket pair)::

    {"id": uuid4 hex, "name": str, "args": {...}, "sender": str, "seq": int, "ts": unix time, "sig": hex}

``sig`` is the hex HMAC-SHA256, under the run's key, of a length-framed encoding of every other field: the fields
sorted by name, each written as ``len(name) name len(value) value`` where ``name`` is UTF-8, ``value`` is
``msgpack.packb(field value)`` (maps inside a value are packed with their keys sorted, so the signature does not
depend on insertion order) and each length is an 8-byte big-endian unsigned integer. Length framing means no two
different field sets encode to the same bytes (moving a byte across a field boundary changes the lengths). The key
is the ``key`` of the run's 0600 connection file, a hex string (:func:`decode_key`).

The agent rejects a command whose signature is missing or wrong, whose ``(sender, seq)`` is not strictly greater
than the last one seen from that sender (a replay), whose ``ts`` is more than :data:`MAX_CLOCK_SKEW` seconds from
its clock (stale), whose body exceeds :data:`MAX_COMMAND_BYTES`, and whose name, arguments or values do not pass
:func:`validate`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

MAX_COMMAND_BYTES = 16 * 1024
"""Largest ``command`` request body the agent accepts (16 KiB)."""
MAX_CLOCK_SKEW = 300.0
"""A command whose ``ts`` is further than this from the agent's clock (seconds) is rejected as stale."""
MAX_STR = 1000
"""Longest string argument (characters)."""
MAX_NAME = 64
"""Longest command or sender name (characters)."""

FIELDS = ("id", "name", "args", "sender", "seq", "ts", "sig")
"""Every field of a command on the wire."""

ARG_TYPES = ("float", "int", "bool", "str")
"""Argument types a command may declare."""


class CommandRejected(ValueError):
    """A command the agent will not apply.

    Attributes:
        kind: Why, in one word: ``"malformed"``, ``"oversized"``, ``"signature"``, ``"replay"``, ``"stale"``,
            ``"unknown"`` (command or group), ``"invalid"`` (an argument) or ``"unavailable"`` (the run cannot
            apply commands, e.g. not every torch.distributed rank called ``watch()``).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ArgSpec:
    """One typed argument of a command.

    Attributes:
        name: The argument's name.
        type: One of :data:`ARG_TYPES`.
        required: Whether it must be given (optional ones take ``default``).
        default: The value of an optional argument that was left out (not put into the normalized args when
            ``None``).
        nullable: Whether ``None`` is a valid value (``set_clip``'s ``max_norm``: off).
        min: Smallest valid value of a number (``None``: unbounded).
        min_exclusive: Whether ``min`` itself is invalid (``> min`` rather than ``>= min``).
        max: Largest valid value of a number (``None``: unbounded).
        help: One line for the viewer's dialogs.
    """

    name: str
    type: str
    required: bool = True
    default: Any = None
    nullable: bool = False
    min: float | None = None
    min_exclusive: bool = False
    max: float | None = None
    help: str = ""

    def to_data(self) -> dict[str, Any]:
        """This spec as a plain map (for the ``hello`` and ``commands`` records)."""
        return {
            "name": self.name,
            "type": self.type,
            "required": self.required,
            "default": self.default,
            "nullable": self.nullable,
            "min": self.min,
            "min_exclusive": self.min_exclusive,
            "max": self.max,
            "help": self.help,
        }

    @classmethod
    def from_data(cls, d: Mapping[str, Any]) -> ArgSpec:
        """The inverse of :meth:`to_data`.

        Raises:
            ValueError: ``d`` is not an argument spec.
        """
        if not isinstance(d, Mapping) or not isinstance(d.get("name"), str) or d.get("type") not in ARG_TYPES:
            raise ValueError(f"not an argument spec: {d!r}")
        return cls(
            name=d["name"],
            type=d["type"],
            required=bool(d.get("required", True)),
            default=d.get("default"),
            nullable=bool(d.get("nullable", False)),
            min=_num_or_none(d.get("min")),
            min_exclusive=bool(d.get("min_exclusive", False)),
            max=_num_or_none(d.get("max")),
            help=str(d.get("help", "")),
        )

    def describe_range(self) -> str:
        """The valid range in words, e.g. ``"a finite number > 0 and <= 10"``."""
        if self.type == "bool":
            return "true or false"
        if self.type == "str":
            return f"a string of at most {MAX_STR} characters"
        words = "a finite number" if self.type == "float" else "an integer"
        parts = []
        if self.min is not None:
            parts.append(f"{'>' if self.min_exclusive else '>='} {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        text = words + (" " + " and ".join(parts) if parts else "")
        return text + (" or null" if self.nullable else "")


@dataclass(frozen=True)
class CommandSpec:
    """A command's name and typed arguments.

    Attributes:
        name: The command's name on the wire.
        args: Its arguments.
        help: One line for the viewer.
        one_of: Names of which exactly one must be given (``set_lr``: ``("value", "scale")``); empty for none.
        builtin: A built-in command (``False`` for ``@mon.command`` functions).
    """

    name: str
    args: tuple[ArgSpec, ...] = ()
    help: str = ""
    one_of: tuple[str, ...] = ()
    builtin: bool = True
    _by_name: dict[str, ArgSpec] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update({a.name: a for a in self.args})

    def arg(self, name: str) -> ArgSpec | None:
        """The spec of argument ``name``, or ``None``."""
        return self._by_name.get(name)

    def to_data(self) -> dict[str, Any]:
        """This spec as a plain map (for the ``hello`` and ``commands`` records)."""
        return {
            "name": self.name,
            "help": self.help,
            "args": [a.to_data() for a in self.args],
            "one_of": list(self.one_of),
            "builtin": self.builtin,
        }

    @classmethod
    def from_data(cls, d: Mapping[str, Any]) -> CommandSpec:
        """The inverse of :meth:`to_data`.

        Raises:
            ValueError: ``d`` is not a command spec.
        """
        if not isinstance(d, Mapping) or not isinstance(d.get("name"), str):
            raise ValueError(f"not a command spec: {d!r}")
        args = d.get("args") or []
        if not isinstance(args, list):
            raise ValueError(f"not a command spec (args={args!r})")
        one_of = d.get("one_of") or []
        return cls(
            name=d["name"],
            args=tuple(ArgSpec.from_data(a) for a in args),
            help=str(d.get("help", "")),
            one_of=tuple(str(x) for x in one_of) if isinstance(one_of, list) else (),
            builtin=bool(d.get("builtin", False)),
        )


def _num_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


LR_MAX = 10.0
"""Largest learning rate ``set_lr`` accepts."""
SCALE_MAX = 1000.0
"""Largest (and ``1 / SCALE_MAX`` the smallest sensible) ``set_lr`` scale factor."""
WEIGHT_DECAY_MAX = 10.0
"""Largest weight decay ``set_weight_decay`` accepts."""
MAX_NORM_MAX = 1e9
"""Largest clipping norm ``set_clip`` accepts."""

_GROUP = ArgSpec("group", "int", required=False, min=0, help="param group index (default: every group)")

COMMANDS: dict[str, CommandSpec] = {
    "set_lr": CommandSpec(
        "set_lr",
        (
            ArgSpec(
                "value",
                "float",
                required=False,
                min=0,
                min_exclusive=True,
                max=LR_MAX,
                help="new learning rate",
            ),
            ArgSpec(
                "scale",
                "float",
                required=False,
                min=0,
                min_exclusive=True,
                max=SCALE_MAX,
                help="multiply lr by",
            ),
            _GROUP,
        ),
        help="set the learning rate (absolute value or scale factor; schedulers continue from the new level)",
        one_of=("value", "scale"),
    ),
    "set_clip": CommandSpec(
        "set_clip",
        (
            ArgSpec(
                "max_norm",
                "float",
                nullable=True,
                min=0,
                min_exclusive=True,
                max=MAX_NORM_MAX,
                help="clip gradients to this global L2 norm (null: off)",
            ),
        ),
        help="set gradient clipping by global norm, or turn it off",
    ),
    "set_weight_decay": CommandSpec(
        "set_weight_decay",
        (ArgSpec("value", "float", min=0, max=WEIGHT_DECAY_MAX, help="new weight decay"), _GROUP),
        help="set the weight decay",
    ),
    "pause": CommandSpec("pause", help="wait at the next optimizer step until resumed"),
    "resume": CommandSpec("resume", help="continue a paused run"),
    "checkpoint": CommandSpec("checkpoint", help="save a checkpoint now"),
    "stop": CommandSpec(
        "stop",
        (ArgSpec("reason", "str", required=False, help="why (recorded in the run file)"),),
        help="stop gracefully: sets mon.should_stop (the loop must read it; reported if it keeps stepping)",
    ),
    "interrupt": CommandSpec(
        "interrupt",
        (
            ArgSpec("reason", "str", required=False, help="why (recorded in the run file)"),
            ArgSpec(
                "checkpoint",
                "bool",
                required=False,
                default=False,
                help="save a checkpoint first (the checkpoint command's handler)",
            ),
        ),
        help="stop a loop that ignores stop: KeyboardInterrupt in the training thread at the next step",
    ),
}
"""The built-in commands. Custom ``@mon.command`` ones are listed per run (``hello`` / ``commands`` records)."""


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def signing_bytes(fields: Mapping[str, Any]) -> bytes:
    """The length-framed encoding :func:`sign` authenticates (every field but ``sig``, sorted by name).

    Raises:
        TypeError: A field name is not a string or a value cannot be packed.
    """
    out = bytearray()
    for name in sorted(fields):
        if name == "sig":
            continue
        if not isinstance(name, str):
            raise TypeError(f"field names must be strings, got {name!r}")
        nb = name.encode("utf-8")
        vb = msgpack.packb(_canonical(fields[name]), use_bin_type=True)
        out += len(nb).to_bytes(8, "big") + nb + len(vb).to_bytes(8, "big") + vb
    return bytes(out)


def sign(key: bytes, fields: Mapping[str, Any]) -> str:
    """The hex HMAC-SHA256 of every field but ``sig`` under ``key``.

    Args:
        key: The run's key (:func:`decode_key`).
        fields: The command's fields.

    Returns:
        64 hex digits.
    """
    return hmac.new(key, signing_bytes(fields), hashlib.sha256).hexdigest()


def verify(key: bytes, fields: Mapping[str, Any]) -> bool:
    """Whether ``fields["sig"]`` is the signature of the other fields under ``key`` (constant-time compare).

    A missing or non-string signature, an empty key, or fields that cannot be encoded verify as ``False``.
    """
    sig = fields.get("sig")
    if not isinstance(sig, str) or not key:
        return False
    try:
        expected = sign(key, fields)
    except (TypeError, ValueError, OverflowError):
        return False
    return hmac.compare_digest(expected.encode("ascii"), sig.encode("utf-8", "replace"))


REQUEST_KIND_FIELD = "_kind"
"""The request kind, added to the fields a request's signature covers (so a signature is never valid for another
kind of request); never sent."""


def sign_request(key: bytes, kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A request other than a command (``snapshot_req``), signed with the run's key for an agent on TCP.

    Args:
        key: The run's key (:func:`decode_key`).
        kind: The request kind (``protocol.SNAPSHOT_REQ``).
        fields: Its payload.

    Returns:
        The payload with ``ts`` (now) and ``sig`` (:func:`sign` of the payload, ``ts`` and the kind) added, ready
        for ``protocol.encode_request(kind, **signed)``.
    """
    out: dict[str, Any] = {**fields, "ts": time.time()}
    out["sig"] = sign(key, {**out, REQUEST_KIND_FIELD: kind})
    return out


def check_request(
    key: bytes, kind: str, fields: Mapping[str, Any], *, now: float | None = None
) -> str | None:
    """Why a signed request (:func:`sign_request`) is refused, or ``None`` when its signature is the key's and its
    ``ts`` is within :data:`MAX_CLOCK_SKEW` of ``now``.

    Args:
        key: The run's key.
        kind: The request's kind, as received.
        fields: Its payload, as received.
        now: The agent's clock (default ``time.time()``).
    """
    if "sig" not in fields:
        return "unauthenticated: the request is not signed with the run's key (it is in the run's connection file)"
    if REQUEST_KIND_FIELD in fields or not verify(key, {**fields, REQUEST_KIND_FIELD: kind}):
        return "unauthenticated: bad signature"
    ts = fields.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return f"unauthenticated: bad ts={ts!r}"
    now = time.time() if now is None else now
    if abs(now - ts) > MAX_CLOCK_SKEW:
        return f"unauthenticated: stale request (ts {ts:.0f} is {now - ts:+.0f} s from the agent's clock)"
    return None


def decode_key(key: str) -> bytes:
    """The signing key bytes from a connection file's ``key`` field (hex, as ``discovery.new_key`` writes it).

    Raises:
        ValueError: The key is empty or not hex (the run cannot take commands).
    """
    if not key:
        raise ValueError("the run has no signing key (it does not accept commands)")
    try:
        return bytes.fromhex(key)
    except ValueError:
        raise ValueError(f"the run's signing key is not hex ({len(key)} characters)") from None


def make_command(key: bytes, name: str, args: Mapping[str, Any], *, sender: str, seq: int) -> dict[str, Any]:
    """A signed command, ready for ``protocol.encode_request("command", **cmd)``.

    Args:
        key: The run's key (:func:`decode_key`).
        name: The command's name.
        args: Its arguments (sent as given; call :func:`validate` first to catch mistakes locally).
        sender: Who sends it (a stable id per viewer or CLI process).
        seq: Strictly increasing per sender.

    Returns:
        ``{"id", "name", "args", "sender", "seq", "ts", "sig"}``.
    """
    cmd: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "name": name,
        "args": dict(args),
        "sender": sender,
        "seq": int(seq),
        "ts": time.time(),
    }
    cmd["sig"] = sign(key, cmd)
    return cmd


def _check_value(cmd: str, spec: ArgSpec, value: Any) -> Any:
    where = f"{cmd}: {spec.name}={value!r}"
    if value is None:
        if spec.nullable:
            return None
        raise CommandRejected("invalid", f"invalid {where}: must be {spec.describe_range()}")
    if spec.type == "bool":
        if not isinstance(value, bool):
            raise CommandRejected("invalid", f"invalid {where}: must be true or false")
        return value
    if spec.type == "str":
        if not isinstance(value, str) or len(value) > MAX_STR:
            raise CommandRejected("invalid", f"invalid {where}: must be {spec.describe_range()}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CommandRejected("invalid", f"invalid {where}: must be {spec.describe_range()}")
    if spec.type == "int":
        if not isinstance(value, int):
            raise CommandRejected("invalid", f"invalid {where}: must be {spec.describe_range()}")
        number: float = value
    else:
        number = float(value)
        if not math.isfinite(number):
            raise CommandRejected("invalid", f"invalid {where}: must be {spec.describe_range()}")
    low_bad = spec.min is not None and (number <= spec.min if spec.min_exclusive else number < spec.min)
    high_bad = spec.max is not None and number > spec.max
    if low_bad or high_bad:
        raise CommandRejected("invalid", f"invalid {where}: must be {spec.describe_range()}")
    return value if spec.type == "int" else number


def validate(
    name: str,
    args: Any,
    *,
    specs: Mapping[str, CommandSpec] | None = None,
    groups: int | None = None,
) -> dict[str, Any]:
    """Check a command's name and arguments and return them normalized.

    Args:
        name: The command's name.
        args: Its arguments.
        specs: The commands to accept (default :data:`COMMANDS`; a run passes the built-ins plus its custom ones).
        groups: The optimizer's number of param groups, to reject an unknown ``group`` (``None``: not checked).

    Returns:
        The arguments with numbers of float type as floats and optional ones that have a default filled in.

    Raises:
        CommandRejected: (a ``ValueError``) an unknown command or group, a missing, extra, ill-typed,
            non-finite or out-of-range argument; the message shows the bad value.
    """
    table = COMMANDS if specs is None else specs
    spec = table.get(name) if isinstance(name, str) else None
    if spec is None:
        known = ", ".join(sorted(table))
        raise CommandRejected("unknown", f"unknown command {name!r} (known: {known})")
    if not isinstance(args, Mapping):
        raise CommandRejected("invalid", f"{name}: args must be a map, got {args!r}")
    extra = [k for k in args if spec.arg(k) is None]
    if extra:
        allowed = ", ".join(a.name for a in spec.args) or "none"
        raise CommandRejected("invalid", f"{name}: unknown argument {extra[0]!r} (allowed: {allowed})")
    out: dict[str, Any] = {}
    for a in spec.args:
        if a.name in args:
            out[a.name] = _check_value(name, a, args[a.name])
        elif a.required and a.name not in spec.one_of:
            raise CommandRejected("invalid", f"{name}: missing argument {a.name!r} ({a.describe_range()})")
        elif a.default is not None:
            out[a.name] = a.default
    if spec.one_of:
        given = [k for k in spec.one_of if k in args]
        if len(given) != 1:
            raise CommandRejected(
                "invalid",
                f"{name}: give exactly one of {', '.join(spec.one_of)} (got {', '.join(given) or 'none'})",
            )
    group = out.get("group")
    if group is not None and groups is not None and group >= groups:
        raise CommandRejected(
            "unknown", f"{name}: unknown group={group!r} (the optimizer has {groups} groups)"
        )
    return out


def check_fields(fields: Any) -> None:
    """Check that a decoded command request has every field, each of the right type.

    Raises:
        CommandRejected: ``"malformed"`` (or ``"signature"`` when only ``sig`` is missing), showing the bad field.
    """
    if not isinstance(fields, Mapping):
        raise CommandRejected("malformed", f"a command must be a map, got {type(fields).__name__}")
    if not isinstance(fields.get("sig"), str):
        raise CommandRejected("signature", f"missing or non-string signature (sig={fields.get('sig')!r:.80})")
    checks = (
        ("id", lambda v: isinstance(v, str) and 0 < len(v) <= MAX_NAME),
        ("name", lambda v: isinstance(v, str) and 0 < len(v) <= MAX_NAME),
        ("args", lambda v: isinstance(v, Mapping)),
        ("sender", lambda v: isinstance(v, str) and 0 < len(v) <= MAX_NAME),
        ("seq", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
        ("ts", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)),
    )
    for key, ok in checks:
        if key not in fields:
            raise CommandRejected("malformed", f"command field {key!r} is missing")
        if not ok(fields[key]):
            raise CommandRejected("malformed", f"bad command field {key}={fields[key]!r:.80}")


def command_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The command fields of a decoded request's payload (``Record.data``), unknown keys left out."""
    return {k: data[k] for k in FIELDS if k in data}


def specs_from_data(items: Any) -> dict[str, CommandSpec]:
    """Command specs from a ``hello`` record's ``commands`` field or a ``commands`` record's list.

    Malformed entries are skipped (a reader never fails on a peer's addition).
    """
    out: dict[str, CommandSpec] = {}
    if isinstance(items, list):
        for d in items:
            try:
                spec = CommandSpec.from_data(d)
            except ValueError:
                continue
            out[spec.name] = spec
    return out


def parse_arg(spec: ArgSpec, text: str) -> Any:
    """Convert what a user typed (CLI or dialog) into a value of the argument's type.

    ``"off"``, ``"none"`` and ``"null"`` give ``None`` for a nullable argument. The result still goes through
    :func:`validate`.

    Raises:
        ValueError: ``text`` is not of the argument's type, e.g. ``"set_lr: value='abc' is not a number"``.
    """
    t = text.strip()
    if spec.nullable and t.lower() in ("off", "none", "null"):
        return None
    try:
        if spec.type == "float":
            return float(t)
        if spec.type == "int":
            return int(t)
    except ValueError:
        kind = "a number" if spec.type == "float" else "an integer"
        raise ValueError(f"{spec.name}={text!r} is not {kind}") from None
    if spec.type == "bool":
        if t.lower() in ("1", "true", "yes", "on"):
            return True
        if t.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{spec.name}={text!r} is not true or false")
    return text
