"""The wire protocol that the agent and the viewer share: one module, imported by both halves.

Records
-------
Everything the agent says about a run is a *record*: a msgpack map with short keys::

    {"v": PROTOCOL_VERSION, "k": kind, "q": seq, "s": step, "t": unix_time, "d": {...payload...}}

``seq`` is a per-run sequence number, 1, 2, 3, ... with no holes: a receiver that sees ``seq`` jump counts a gap,
and one that sees a ``seq`` it already has drops the duplicate. ``step`` is the training step the record belongs to
(``None`` for records outside the step axis, such as ``hello``). Readers ignore unknown kinds and unknown keys, so an
addition never breaks an older peer; a different ``v`` is rejected (:class:`ProtocolError`) and counted.

Numeric arrays travel as raw bytes: msgpack extension type ``1`` whose payload is the msgpack array
``[dtype_str, shape, raw_bytes]`` (little-endian numpy dtype string such as ``"<f4"``); they decode to read-only
``numpy.ndarray``. Plain floats stay floats and ints stay ints.

Frames
------
PUB (agent → viewers), a topic frame and one or more bodies of that kind (the agent batches what it has)::

    [topic: kind as ASCII bytes] [body: encode(record)] [body] ...

Subscribers may filter on the topic prefix and decode every frame after the first. Besides records, the PUB socket carries ``heartbeat`` messages once a
second; they are not part of the sequence (``q`` is the last record ``seq`` sent, so a receiver can see a trailing
gap) and are never written to the run file.

ROUTER (agent) ⇐⇒ DEALER (viewer), one body frame per message (DEALER adds and ROUTER strips the identity frame)::

    DEALER → [body: encode_request({"k": "snapshot_req", "after": seq, "limit": n[, "ts": t, "sig": hex]})]
    ROUTER → [identity] [body: encode({"k": "snapshot", "d": {"records": [bytes, ...], "last_seq": n, "more": bool}})]

A snapshot carries already-encoded record bodies with ``seq > after`` in order, at most ``limit`` of them; ``more``
says whether the requester should ask again from the last ``seq`` it got.

Live commands use the same socket pair (``tuimon_agent.commands`` signs and checks them)::

    DEALER → [body: encode_request("command", id=, name=, args=, sender=, seq=, ts=, sig=)]
    ROUTER → [identity] [body: encode({"k": "ack", "d": {"id", "status": "queued"}})]          (or "rejected", "reason")
    ROUTER → [identity] [body: encode({"k": "ack", "d": {"id", "status": "applied", "step", "old", "new"}})]

A duplicate of an id already seen is answered with that command's latest ack and never applied again.

Limits: a body larger than :data:`MAX_MESSAGE_BYTES` is rejected before it is unpacked (msgpack then bounds every
string, array and map by the body's own length), and an array extension must hold exactly the bytes its dtype and
shape need, so a hostile peer cannot make a reader allocate without bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
"""Bumped only on an incompatible change; additions (new kinds, new keys) do not bump it."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest body any reader accepts (64 MiB)."""

# Record kinds (persisted, sequenced).
HELLO = "hello"
"""Run metadata: run id and name, model layers, optimizer and its hyperparameters, torch, device, pid, host, argv."""
METRICS = "metrics"
"""Training scalars for one step: ``d = {"values": {name: float}}`` (``opt/lr`` and friends included)."""
EVAL = "eval"
"""Evaluation scalars for one step: ``d = {"values": {name: float}}``."""
EVENT = "event"
"""Something that happened: ``d = {"what": str, "message": str, ...}`` (agent errors, persistence off, ...).

``what = "nonfinite"``, once per run (NaN provenance, ``tuimon_agent.provenance``): the first step and layer where
anything went non-finite. ``d`` adds ``"first_step": int`` (also in ``"step"`` and the record's step), ``"of"``
(``"loss"``: only the loss; ``"input"``: the model's input; ``"activation"``: a module's output with finite
weights, an overflow there; ``"weight"``: a module's own parameter, every later forward non-finite from it on;
``"gradient"``: with a finite loss), ``"layer"`` (the module, first in *call* order for the forward kinds, first in
backward order for gradients; or nil), ``"param"`` (a parameter name or nil), ``"how"`` (``"replay"``: the first
non-finite training forward, checked every step on the CPU, run again with every module measured; ``"loss"``: the
first non-finite logged ``*loss*`` value; ``"forced"``: after that loss, the agent had the next step measured in
full; ``"sampled"``: a ``param_stats`` sample; ``"norms"``: a ``grad_norms`` record), ``"exact"`` (``first_step`` is proven first; false for a sample,
which may lag the cause by up to ``stats_every - 1`` steps), ``"seen_at"`` (the step whose measurement decided) and
``"weights"`` (modules with a non-finite parameter, at most 32). ``what = "activations_unavailable"``: activation
statistics are off because the model runs under ``torch.compile``."""
CHECK = "check"
"""A sanity check's result: ``d`` = ``CheckResult.to_data()`` (name, verdict, summary, explanation, numbers, table,
seconds); see ``tuimon_agent.checks``."""
LAYERS = "layers"
"""The model's parameter tensors, in model order (names as the user wrote them: ``DataParallel``,
``DistributedDataParallel`` and ``torch.compile`` wrappers removed); sent once at start (``step`` nil) and again
(with the step) whenever the parameter set changes. ``d = {"params": [{"name": str, "shape": [int], "numel": int,
"module": str, "module_type": str}, ...]}``; the index in this list is the column index of ``param_stats`` arrays."""
PARAM_STATS = "param_stats"
"""Per-parameter statistics of one sampled optimizer step (every ``stats_every`` steps), arrays of length P in the
order of the latest ``layers`` record: ``d = {"grad_norm": float32[P]`` (L2), ``"grad_max": float32[P]`` (max
abs), ``"grad_zero": float32[P]`` (fraction of exact zeros), ``"grad_nonfinite": uint8[P]`` (a NaN or Inf entry),
``"has_grad": uint8[P]`` (0: ``grad`` was ``None``; its gradient stats and update ratio are NaN),
``"weight_norm": float32[P]`` (L2 after the step), ``"update_ratio": float32[P]`` (‖w_after − w_before‖ /
‖w_before‖ of this step), ``"global_grad_norm": float`` (L2 over every gradient), ``"weight_nonfinite": uint8[P]}``
(a NaN or Inf in the weights the step started from; absent in older runs). With ``watch(..., norms_every=N)``
the steps in between that are not samples get a ``grad_norms`` record instead (below), never a partial
``param_stats``: consumers that count ``param_stats`` samples see the same records either way."""
GRAD_NORMS = "grad_norms"
"""The cheap per-step pass (``watch(..., norms_every=N)``): every N-th optimizer step that is not a
``param_stats`` sample, same columns as ``param_stats``: ``d = {"grad_norm": float32[P]`` (L2, one fused
``torch._foreach_norm``), ``"grad_nonfinite": uint8[P]`` (the L2 norm is not finite: a NaN or Inf entry, or, the one
false alarm, finite entries so huge that the sum of squares overflows float32), ``"has_grad": uint8[P]``,
``"global_grad_norm": float}``. Nothing else is measured on those steps (no max, zeros, weights or update ratio:
absent means not measured)."""
MODULES = "modules"
"""The modules whose outputs are measured (Linear, Conv1d/2d/3d, RNN/LSTM/GRU, MultiheadAttention, norm layers and
activation modules), in model order (``named_modules()``, the root excluded, names as in ``layers``); sent once
at start (``step`` nil). ``d = {"modules": [{"name": str, "type": str}, ...]}``; the index in this list is the
column index of ``act_stats`` arrays."""
ACT_STATS = "act_stats"
"""Output statistics of each module of the latest ``modules`` record, measured during the training-mode forward of
a sampled step (every ``stats_every`` optimizer steps, the forward that precedes that step's ``optimizer.step()``):
``d = {"mean": float32[M], "std": float32[M]`` (population std over every element of the output, or its first
tensor for RNNs and ``MultiheadAttention``), ``"dead": float32[M]`` (ReLU, ReLU6, LeakyReLU: fraction of units,
the channels/features at dim 1, that are exactly 0 for every sample and position; NaN for other types),
``"saturated": float32[M]`` (Tanh: fraction with ``|y| > 0.99``; Sigmoid: ``y < 0.01`` or ``y > 0.99``; NaN for
other types), ``"nonfinite": uint8[M]}`` (a NaN or Inf in the output). A module not called in that forward has
NaN everywhere; one called several times is measured at its first call."""
INPUT_STATS = "input_stats"
"""Statistics of the first tensor argument of the model's forward in the same pass as ``act_stats``:
``d = {"shape": [int], "mean": float32[C], "std": float32[C], "min": float32[C], "max": float32[C]}`` per channel
(dim 1 for inputs of 2 or more dimensions, at most the first 256; one channel for 0-D and 1-D inputs)."""
HISTOGRAMS = "histograms"
"""Weight and gradient histograms of every parameter tensor of the latest ``layers`` record (P of them, same order),
after the ``optimizer.step()`` of a sampled step (every ``hist_every`` optimizer steps), binned on the device:
``d = {"bins": B, "weight": H, "grad": H}`` with ``H = {"lo": float32[P], "hi": float32[P]`` (min and max of the
finite values), ``"counts": int32[P, B]`` (``B`` equal bins over ``[lo, hi]``, exactly as ``numpy.histogram(finite,
bins=B, range=(lo, hi))``: float32 edges, bin ``i`` holds ``edge[i] <= v < edge[i+1]``, the last bin also ``hi``;
when ``lo == hi`` every value is in bin ``B // 2``), ``"nan": int32[P], "inf": int32[P]}`` (NaN and ±Inf entries,
counted here and left out of ``counts``). A tensor with no gradient (or no finite value) has NaN ``lo``/``hi``
and zero ``counts``."""
FEATURE_MAPS = "feature_maps"
"""Feature maps of the fixed probe input (``watch(..., probe=x)``), after the ``optimizer.step()`` of the first
step and then every ``probe_every`` optimizer steps: the model's eval-mode, ``no_grad`` output at each chosen layer
for the probe's first sample, average-pooled on the device so that no side exceeds 32 pixels (keeping the aspect).
Layers differ in size, so each has its own arrays rather than one ``[L, C, H, W]`` block:
``d = {"every": int, "layers": [{"name": str, "type": str`` (module class), ``"shape": [int]`` (the sample's
output ``[C, H, W]`` before pooling; ``[C, 1, L]`` for sequence outputs), ``"channels": [int]`` (the channel
indices shown, ascending), ``"maps": uint8[K, h, w]`` (K = len(channels)), ``"min": float32[K], "max":
float32[K]`` (finite range of each pooled channel: pixel ``v`` stands for ``min + v / 255 · (max − min)``; a
constant channel is all 0; NaN when the channel has no finite pixel), ``"nonfinite": uint8[K]}, ...]`` (a NaN or
Inf before pooling; NaN pixels are 0, +Inf 255), ``"input": {"shape": [int], "rgb": bool, "maps": uint8[c, h, w],
"min": float32[c], "max": float32[c], "nonfinite": uint8[c]} | None}`` (the probe itself, pooled the same way:
its three channels normalised together when ``rgb``, else its first channel; ``None`` for a non-image probe). A
chosen layer that was not called, or whose output is not map-shaped, is left out. When the probe fails it is
turned off and an ``event`` with ``what = "probe_off"`` says why."""
END = "end"
"""The run ended: ``d = {"reason": "closed" | "exception" | "signal", "dropped": int, "steps": int}``, plus
``"bad_values": int`` when values were dropped as not numbers (each name's first one also has a ``bad_value`` event;
a step that is not an integer, a ``bad_step`` event)."""
ALERT = "alert"
"""A diagnosis alert (``tuimon_agent.alerts``), one record each time an alert starts, changes severity, is
materially updated (at most every ~50 steps while active, or when its evidence moves by a decade) or resolves;
``step`` is the step of the update. ``d = {"id": str`` (stable: ``rule:scope``, e.g. ``"dead_units:features.1"``),
``"rule": str`` (``nonfinite``, ``exploding_gradients``, ``vanishing_gradients``, ``loss_divergence``,
``loss_plateau``, ``overfitting``, ``underfitting``, ``dead_units``, ``saturation``, ``unnormalized_input``,
``update_ratio``, ``loss_spike``), ``"state": "active" | "resolved"``, ``"severity": "info" | "warning" |
"critical"``, ``"first_step": int`` (onset), ``"last_step": int`` (latest step with evidence), ``"layers": [str]``
(parameter or module names, model order, at most 8), ``"metric": str | None`` (the scalar involved, e.g.
``"loss"``), ``"confidence": float`` (0..1), ``"evidence": {str: float | int | str}`` (the numbers that triggered
it), ``"message": str`` (one sentence: what, where, since when), ``"remedies": [str]``, ``"actions": [{"command":
"set_lr" | "set_clip" | ..., "args": {...}, "label": str}]}``. Readers keep the latest record per ``id``."""
COMMAND = "command"
"""A live command the agent received (``tuimon_agent.commands``), one record per request: ``d`` = its fields
without ``sig`` (``id``, ``name``, ``args``, ``sender``, ``seq``, ``ts``) plus ``"status": "queued" | "rejected"``
and, when rejected, ``"reason": str``. Also the request kind (viewer → agent) that carries a signed command."""
ACK = "ack"
"""The outcome of a live command: ``d = {"id": str, "name": str, "status": "applied" | "rejected", "step": int,
"old": ..., "new": ..., "reason": str}`` (``reason`` only when rejected); the record's ``step`` is the step at which
it took effect. ``set_lr``/``set_weight_decay`` acks also carry ``"groups": [int], "old_all": [float]`` (and
``"new_all"``, ``"schedulers": [str]`` for ``set_lr``), ``checkpoint`` ``"path"``, ``stop`` ``"reason"``. Also the
ephemeral reply kind (agent → the sender): ``{"id", "status": "queued"}``, ``{"id", "status": "rejected",
"reason"}``, then ``{"id", "status": "applied", "step", "old", "new", ...}``. An applied ack with
``"follow_up": true`` (``set_lr`` set on the groups, ``stop``) is followed by one more ack for the same id:
``"held"`` (the change lasted to the next step; the loop left after ``stop``), ``"overwritten"`` (the loop assigned
its own lr; ``"reason"``, ``"expected"``, ``"found"``) or ``"ignored"`` (still stepping after ``stop``;
``"reason"``). ``set_lr`` acks say ``"how"``: ``"param_groups"``, ``"scheduler"`` or ``"lr_scale"``."""
COMMANDS = "commands"
"""The run's custom commands (``@mon.command``), sent again whenever one is registered:
``d = {"commands": [CommandSpec.to_data(), ...]}`` (the ``hello`` record's ``commands`` field holds those known at
start)."""
RECORD_KINDS = frozenset(
    {
        HELLO,
        METRICS,
        EVAL,
        EVENT,
        CHECK,
        LAYERS,
        PARAM_STATS,
        GRAD_NORMS,
        MODULES,
        ACT_STATS,
        INPUT_STATS,
        HISTOGRAMS,
        FEATURE_MAPS,
        END,
        ALERT,
        COMMAND,
        ACK,
        COMMANDS,
    }
)

# Ephemeral messages (not sequenced, not persisted).
HEARTBEAT = "heartbeat"
"""Once a second on PUB: ``q`` = last seq sent, ``d = {"dropped": int, "queued": int, "step": int}``."""
SNAPSHOT_REQ = "snapshot_req"
"""Viewer → agent: the records with ``seq > after`` (at most ``limit``). An agent on TCP answers only a request
signed with the run's key (``ts`` and ``sig``: ``tuimon_agent.commands.sign_request``)."""
SNAPSHOT = "snapshot"
"""Agent → viewer: ``d = {"records": [bytes], "last_seq": int, "more": bool}``."""
ERROR = "error"
"""Agent → viewer: a request could not be served: ``d = {"message": str}``."""

_EXT_NDARRAY = 1


class ProtocolError(ValueError):
    """A message that cannot be decoded: malformed, truncated, oversized, or from another protocol version."""


@dataclass(slots=True)
class Record:
    """One decoded message.

    Attributes:
        kind: The message kind (one of the constants above, or one this reader does not know).
        seq: Per-run sequence number (0 for ephemeral messages).
        step: Training step, or ``None``.
        ts: Unix time at which the agent created it.
        data: The payload.
    """

    kind: str
    seq: int = 0
    step: int | None = None
    ts: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        payload = msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()], use_bin_type=True)
        return msgpack.ExtType(_EXT_NDARRAY, payload)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _ext_hook(code: int, payload: bytes) -> Any:
    if code != _EXT_NDARRAY:
        return msgpack.ExtType(code, payload)  # unknown extension: keep it opaque, never fail
    dtype, shape, raw = msgpack.unpackb(payload, raw=False)
    dt = np.dtype(dtype)
    if dt.hasobject or dt.kind not in "biufc" or dt.itemsize == 0:
        raise ProtocolError(f"arrays of {dtype!r} are not allowed (numbers only)")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape) or len(shape) > 32:
        raise ProtocolError(f"malformed array shape {shape!r}")
    if not isinstance(raw, bytes):
        raise ProtocolError("malformed array data")
    count = math.prod(shape) if shape else 1
    if math.prod(max(n, 1) for n in shape) > max(count, 1) * 65536:
        # An empty array with a huge outer shape, e.g. (2**40, 0): no bytes, but 2**40 rows to anyone who lists it.
        raise ProtocolError(f"malformed array shape {shape!r}")
    if count * dt.itemsize != len(raw):
        raise ProtocolError(
            f"array of {dtype}{tuple(shape)} needs {count * dt.itemsize} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dt).reshape(shape)


def encode(rec: Record) -> bytes:
    """Encode a record or message as one msgpack body.

    Args:
        rec: The record to encode.

    Returns:
        The body bytes.
    """
    return msgpack.packb(
        {"v": PROTOCOL_VERSION, "k": rec.kind, "q": rec.seq, "s": rec.step, "t": rec.ts, "d": rec.data},
        default=_default,
        use_bin_type=True,
    )


def decode(body: bytes) -> Record:
    """Decode one body into a :class:`Record`.

    Args:
        body: Bytes from the wire or the run file.

    Returns:
        The record. Unknown kinds decode normally; it is the reader's job to ignore them.

    Raises:
        ProtocolError: The body is oversized, not msgpack, truncated, not a record, or of another version.
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"body must be bytes, not {type(body).__name__}")
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    try:
        obj = msgpack.unpackb(body, raw=False, ext_hook=_ext_hook, strict_map_key=True)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several types for truncated or garbage input
        raise ProtocolError(f"not a msgpack message: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"a message must be a map, got {type(obj).__name__}")
    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not supported (this reader speaks {PROTOCOL_VERSION})"
        )
    kind, seq, step, ts, data = (
        obj.get("k"),
        obj.get("q", 0),
        obj.get("s"),
        obj.get("t", 0.0),
        obj.get("d", {}),
    )
    if not isinstance(kind, str) or not kind:
        raise ProtocolError(f"message kind must be a non-empty string, got {kind!r}")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ProtocolError(f"seq must be an int >= 0, got {seq!r}")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        raise ProtocolError(f"step must be an int or nil, got {step!r}")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise ProtocolError(f"ts must be a number, got {ts!r}")
    if not isinstance(data, dict):
        raise ProtocolError(f"data must be a map, got {type(data).__name__}")
    return Record(kind, seq, step, float(ts), data)


def values_of(rec: Record) -> dict[str, float]:
    """The numeric ``values`` map of a ``metrics`` or ``eval`` record, with anything non-numeric left out.

    Args:
        rec: A decoded record.

    Returns:
        ``{name: float}``; empty when the record has none.
    """
    values = rec.data.get("values")
    if not isinstance(values, dict):
        return {}
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def encode_request(kind: str, **fields: Any) -> bytes:
    """Encode a viewer → agent request (an ephemeral message).

    Args:
        kind: The request kind, e.g. :data:`SNAPSHOT_REQ`.
        **fields: Its payload.

    Returns:
        The body bytes.
    """
    return encode(Record(kind, 0, None, time.time(), fields))


def topic(kind: str) -> bytes:
    """The PUB topic frame for a kind."""
    return kind.encode("ascii")
