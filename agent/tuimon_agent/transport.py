"""The agent thread: owns the ZeroMQ context and sockets, the SQLite run file and the connection file.

It wakes every :data:`TICK` seconds (or when a request arrives), drains the training thread's queue, turns queue
items into sequenced records (converting tensors in one batch per device), publishes them on PUB, queues them for
the run file, commits every ``commit_interval`` seconds, answers snapshot requests on ROUTER, and sends a heartbeat
once a second. Nothing here ever runs on the training thread.
"""

from __future__ import annotations

import collections
import operator
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from . import discovery, protocol
from .provenance import Provenance
from .runfile import PersistenceError, RunFileWriter

TICK = 0.02
"""Seconds between queue drains when nothing else wakes the thread."""
HEARTBEAT_INTERVAL = 1.0
SNAPSHOT_LIMIT = 5000
"""Records per snapshot reply at most."""
RING_SIZE = 20_000
"""Recent encoded records kept in memory to serve snapshots when the run file is off."""
LINGER_MS = 500
"""How long closing sockets may wait for unsent messages: a process never hangs at exit."""
MAX_REQUEST_BYTES = 1 << 20
REQUEST_RATE = 200.0
"""Requests read from ROUTER per second at most (a token bucket of :data:`REQUEST_BURST`): a flood waits in
ZeroMQ's bounded queue (:data:`REQUEST_HWM`) instead of taking the agent thread's time from training. A viewer's
late join takes one request per 5,000 records of history."""
REQUEST_BURST = 200
REQUEST_HWM = 1000
"""Requests ZeroMQ queues per peer before the sender has to wait (its own queue then fills)."""
PUB_BATCH = 1000
"""Records per PUB message at most."""

_STEP_LIMIT = 1 << 62
"""Steps are int64 on the wire and in SQLite; a step beyond this is a corrupt counter."""

# Queue tags, shared with monitor.py.
_LOG, _EVAL, _OPT, _END, _CHECK, _LAYERS, _STATS, _MODULES, _ACTS, _HIST = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
_PROBE = 20  # feature maps of the probe input (probe.py)
_PROV, _EVENT = 30, 31  # the replay of the first non-finite forward (provenance.py); an event as is
_NORMS = 32  # per-step gradient norms (instruments.py, norms_every)
_PLAIN = frozenset({float, int})


@dataclass
class RunConfig:
    """What the agent thread needs to know about its run."""

    run_id: str
    name: str
    run_file: Path | None
    endpoint: str
    publish: bool
    commit_interval: float
    hello: dict[str, Any]
    control: Any = None
    """The run's ``control.Controller`` (live commands), or ``None``."""
    amp_init_scale: float | None = None
    """``watch(..., scaler=)``: the GradScaler's initial scale (a first logged scale below it is a skipped step)."""
    alerts: bool = True
    """Run the diagnosis rules (``tuimon_agent.alerts``) on this thread and emit their ``alert`` records."""


def _warn(message: str) -> None:
    try:
        print(f"tuimon: {message}", file=sys.stderr, flush=True)
    except Exception:
        pass


class AgentThread(threading.Thread):
    """The one thread that does the monitor's I/O.

    Args:
        cfg: The run's configuration.
        queue: The training thread's queue of ``(tag, step, ts, payload)`` tuples.
        counters: Returns ``(dropped, step)`` from the monitor, for heartbeats and the end record.
        on_error: Called once with an unexpected exception; the thread then stops.
    """

    def __init__(
        self,
        cfg: RunConfig,
        queue: collections.deque[tuple[Any, ...]],
        counters: Callable[[], tuple[int, int]],
        on_error: Callable[[BaseException], None],
    ) -> None:
        super().__init__(name=f"tuimon-agent-{cfg.run_id}", daemon=True)
        self.cfg = cfg
        self._queue = queue
        self._counters = counters
        self._on_error = on_error
        self._stop_event = threading.Event()
        self._seq = 0
        self._writer: RunFileWriter | None = None
        self._ctx: zmq.Context | None = None
        self._pub: zmq.Socket | None = None
        self._router: zmq.Socket | None = None
        self._conn: discovery.ConnectionInfo | None = None
        self._ring: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=RING_SIZE)
        self._pending_opt: tuple[int, float, dict[str, float]] | None = None
        self._bad_values: set[str] = set()
        self._skipped = 0  # optimizer steps a GradScaler skipped (inf/NaN gradients)
        self._amp_from_opt = False
        self._last_scale: float | None = cfg.amp_init_scale
        self.provenance = Provenance()
        """Decides the run's one ``nonfinite`` event; the monitor configures it before :meth:`start`."""
        self._ended = False
        self._outbox: list[tuple[str, bytes]] = []
        self._gate: Any = None  # control_gate.CommandGate once the sockets and the key exist
        self._diag: Any = None
        if cfg.alerts:
            from .alerts import Diagnoser

            self._diag = Diagnoser()
        self._diagnosing = False
        self.published = 0
        self.requests_served = 0
        """Requests read from ROUTER and answered (refused ones included)."""
        self.requests_refused = 0
        """Of those, requests refused as unauthenticated (TCP without the run's key)."""
        self._request_key: bytes | None = None  # on TCP: requests other than commands must be signed with it
        self._tokens = float(REQUEST_BURST)
        self.bad_values = 0
        """Values (and queue items) dropped because they were not numbers: counted in the ``end`` record."""
        self.ready = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def stop(self, timeout: float) -> None:
        """Ask the thread to flush and exit, and wait up to ``timeout`` seconds."""
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        try:
            self._open()
            self.ready.set()
            self._loop()
        except BaseException as exc:  # never let anything escape a daemon thread silently
            self.ready.set()
            self._on_error(exc)
        finally:
            self._shutdown()

    def _open(self) -> None:
        cfg = self.cfg
        if cfg.run_file is not None:
            meta = {"run_id": cfg.run_id, "name": cfg.name, "created": time.time(), "hello": cfg.hello}
            try:
                self._writer = RunFileWriter(cfg.run_file, meta=meta)
            except PersistenceError as exc:
                _warn(f"run file persistence is off: {exc}; training goes on")
        if cfg.publish:
            try:
                self._open_sockets()
            except (zmq.ZMQError, OSError) as exc:
                _warn(f"live publishing is off: {exc}; the run file is still written")
                self._close_sockets()
        self._emit(protocol.HELLO, None, time.time(), cfg.hello)

    def _open_sockets(self) -> None:
        cfg = self.cfg
        rdir = discovery.runtime_dir()
        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._router = self._ctx.socket(zmq.ROUTER)
        for s in (self._pub, self._router):
            s.setsockopt(zmq.LINGER, LINGER_MS)
        self._pub.setsockopt(zmq.SNDHWM, 50_000)
        self._router.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        self._router.setsockopt(zmq.SNDHWM, 1000)
        self._router.setsockopt(zmq.RCVHWM, REQUEST_HWM)
        ep = cfg.endpoint
        curve = ""
        if ep != "ipc" and zmq.has("curve"):
            # Any local user can connect to a TCP port: the live stream is encrypted with CURVE, and only a
            # subscriber that has the server key (kept in the 0600 connection file) can complete the handshake.
            public, secret = zmq.curve_keypair()
            self._pub.curve_secretkey = secret
            self._pub.curve_publickey = public
            self._pub.curve_server = True
            curve = public.decode("ascii")
        if ep == "ipc":
            pub, router = discovery.ipc_endpoints(cfg.run_id, rdir)
            self._pub.bind(pub)
            self._router.bind(router)
        elif ep == "tcp":
            pub, router = self._bind_port_pair("127.0.0.1")
        elif ep.startswith("tcp://"):
            host, _, port_s = ep[len("tcp://") :].rpartition(":")
            try:
                port = int(port_s)
            except ValueError:
                raise ValueError(f"invalid endpoint={ep!r}: expected tcp://HOST:PORT") from None
            pub, router = f"tcp://{host}:{port}", f"tcp://{host}:{port + 1}"
            self._pub.bind(pub)
            self._router.bind(router)
        else:
            raise ValueError(f"invalid endpoint={ep!r}: use 'ipc', 'tcp' or 'tcp://HOST:PORT'")
        self._conn = discovery.ConnectionInfo(
            run_id=cfg.run_id,
            name=cfg.name,
            pub=pub,
            router=router,
            key=discovery.new_key(),
            pid=cfg.hello["pid"],
            host=cfg.hello["host"],
            started=cfg.hello["started"],
            run_file=str(cfg.run_file) if cfg.run_file else None,
            curve_server_key=curve,
        )
        discovery.write_connection_file(self._conn, rdir)
        if ep != "ipc":  # any local user can connect to a TCP port: only the key's holders are answered
            from .commands import decode_key

            self._request_key = decode_key(self._conn.key)
        if cfg.control is not None:
            from .commands import decode_key
            from .control_gate import CommandGate

            self._gate = CommandGate(
                cfg.control,
                decode_key(self._conn.key),
                emit=self._emit,
                reply=self._reply,
                step_of=lambda: self._counters()[1],
            )

    def _bind_port_pair(self, host: str) -> tuple[str, str]:
        """Bind PUB to a free port P and ROUTER to P+1 (so ``tcp://HOST:P`` alone names the run)."""
        assert self._pub is not None and self._router is not None
        for _ in range(50):
            port = self._pub.bind_to_random_port(f"tcp://{host}", min_port=20000, max_port=60000)
            try:
                self._router.bind(f"tcp://{host}:{port + 1}")
            except zmq.ZMQError:
                self._pub.unbind(f"tcp://{host}:{port}")
                continue
            return f"tcp://{host}:{port}", f"tcp://{host}:{port + 1}"
        raise zmq.ZMQError(msg=f"no two adjacent free ports on {host}")

    def _close_sockets(self) -> None:
        for s in (self._pub, self._router):
            if s is not None:
                s.close(linger=LINGER_MS)
        self._pub = self._router = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _shutdown(self) -> None:
        try:
            if not self._ended:
                self._drain()
                self._flush_opt()
            self._commit()
        except BaseException as exc:
            _warn(f"could not flush the run file at exit: {exc}")
        if self._writer is not None:
            try:
                self._writer.close()
            except PersistenceError:
                pass
            self._writer = None
        try:
            self._publish()
        except zmq.ZMQError:
            pass
        if self._conn is not None:
            discovery.remove_run_files(self._conn)
            discovery.remember_recent(self._conn)
            self._conn = None
        self._close_sockets()

    # -- main loop -------------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        poller = zmq.Poller()
        if self._router is not None:
            poller.register(self._router, zmq.POLLIN)
        last_commit = last_beat = last_fill = time.monotonic()
        while True:
            stopping = self._stop_event.is_set()
            if self._router is not None:
                now = time.monotonic()
                self._tokens = min(float(REQUEST_BURST), self._tokens + (now - last_fill) * REQUEST_RATE)
                last_fill = now
                # Bounded per tick and per second: a flood of requests can neither starve the queue nor take the
                # agent thread's (and so the training thread's) time; what is not read waits in ZeroMQ.
                for _ in range(min(100, int(self._tokens))):
                    if not dict(poller.poll(0)):
                        break
                    self._tokens -= 1.0
                    self._serve_request()
            if self._gate is not None:
                self._gate.poll()
            self._drain()
            now = time.monotonic()
            if self._pending_opt is not None and time.time() - self._pending_opt[1] > 1.0:
                self._flush_opt()
            if now - last_commit >= self.cfg.commit_interval:
                self._commit()
                last_commit = now
            if now - last_beat >= HEARTBEAT_INTERVAL:
                self._heartbeat()
                last_beat = now
            if stopping or self._ended:
                self._flush_opt()
                self._publish()
                return
            self._publish()
            if self._router is not None and self._tokens >= 1.0:
                poller.poll(TICK * 1000)
            else:  # no tokens: requests wait (polling ROUTER would wake at once, spinning)
                self._stop_event.wait(TICK)

    def _drain(self) -> None:
        """Turn everything queued into records; tensors are read in one batch."""
        q = self._queue
        items = []
        try:
            while True:
                items.append(q.popleft())
        except IndexError:
            pass
        if not items:
            return
        try:
            tensors = [
                v
                for item in items
                if item[0] <= _EVAL  # _LOG or _EVAL: user values
                for v in item[3].values()
                if type(v) not in _PLAIN and _is_tensor(v)
            ]
            converted = _read_tensors(tensors) if tensors else {}
        except Exception:  # an odd object: each value is then read on its own in _numbers
            converted = {}
        for item in items:
            try:
                self._record(item, converted)
            except Exception as exc:  # one bad item is dropped and counted; the rest, and the run, go on
                self._bad_item(item[0], exc)

    def _record(self, item: tuple[Any, ...], converted: dict[int, float]) -> None:
        """One queue item → its records."""
        tag, raw_step, ts, payload = item
        step = (
            raw_step
            if type(raw_step) is int and -_STEP_LIMIT < raw_step < _STEP_LIMIT
            else self._step(raw_step)
        )
        if tag == _LOG:
            values = self._numbers(payload, converted)
            if "amp/scale" in values and not self._amp_from_opt:
                self._amp_scale_seen(values)
            pend = self._pending_opt
            if pend is not None and pend[0] == step:
                values = {**values, **pend[2]}
                self._pending_opt = None
            else:
                self._flush_opt()
            self._emit(protocol.METRICS, step, ts, {"values": values})
            if not self.provenance.done:
                self._nonfinite(step, ts, self.provenance.on_loss(step, values))
        elif tag == _EVAL:
            self._emit(protocol.EVAL, step, ts, {"values": self._numbers(payload, converted)})
        elif tag == _OPT:
            j, groups, amp = payload
            values = _opt_values(groups, "opt/" if j == 0 else f"opt/o{j}/")
            if amp is not None:
                values.update(self._amp_step(amp))
            if j == 0 and self.cfg.control is not None and self.cfg.control.clip_norms:
                from .control_gate import clip_values

                values.update(clip_values(self.cfg.control, step))
            pend = self._pending_opt
            if pend is not None and pend[0] == step:  # several optimizers stepped in one iteration
                self._pending_opt = (step, pend[1], {**pend[2], **values})
            else:
                self._flush_opt()
                self._pending_opt = (step, ts, values)
        elif tag == _CHECK:
            self._emit(protocol.CHECK, step, ts, payload)
        elif tag == _LAYERS:
            self._emit(protocol.LAYERS, step, ts, payload)
        elif tag == _STATS:
            self._param_stats(step, ts, payload)
        elif tag == _NORMS:
            self._grad_norms(step, ts, payload)
        elif tag == _MODULES:
            self._emit(protocol.MODULES, step, ts, payload)
        elif tag == _ACTS:
            self._act_stats(step, ts, payload)
        elif tag == _HIST:
            from .histograms import hist_payload  # torch is imported already: the hook made the buffers

            bufs, event = payload
            self._emit(protocol.HISTOGRAMS, step, ts, hist_payload(bufs, event))
        elif tag == _PROBE:
            self._feature_maps(step, ts, payload)
        elif tag == _PROV:
            self._nonfinite(step, ts, self.provenance.on_replay(step, payload))
        elif tag == _EVENT:
            if payload.get("what") == "bad_value":  # dropped on the training thread (monitor.py)
                self.bad_values += 1
            self._emit(protocol.EVENT, step, ts, payload)
        elif tag == _END:
            self._flush_opt()
            if self._gate is not None:
                self._gate.poll()  # acks for commands the run ended before applying
            self._nonfinite(step, ts, self.provenance.flush())
            dropped, steps = self._counters()
            end = {**payload, "dropped": dropped, "steps": self._step(steps) or 0}
            if self.bad_values:
                end["bad_values"] = self.bad_values
            self._emit(protocol.END, step, ts, end)
            self._ended = True
            self._commit()

    def _feature_maps(self, step: int | None, ts: float, payload: tuple[Any, ...]) -> None:
        """One probe pass → a ``feature_maps`` record (waiting here for its device-to-host copy); the probe's
        failure → one ``probe_off`` event."""
        if payload[0] == "error":
            self._emit(protocol.EVENT, step, ts, {"what": "probe_off", "message": payload[1]})
            return
        from .probe import probe_payload  # torch is imported already: the hook made the buffers

        self._emit(protocol.FEATURE_MAPS, step, ts, probe_payload(*payload))

    def _param_stats(self, step: int | None, ts: float, payload: tuple[Any, ...]) -> None:
        """A statistics buffer from the instruments → a ``param_stats`` record (waiting here, on this thread, for
        its device-to-host copy), and the first non-finite gradient or weight → one ``nonfinite`` event."""
        # torch is imported already: the training thread made the buffer.
        from .instruments import stats_payload

        buf, event, names, numel, skipped = payload
        if _was_skipped(skipped):
            return  # a GradScaler overflow step: routine, never a NaN alarm (counted as amp/skipped_steps)
        data = stats_payload(buf, event, numel)
        self._emit(protocol.PARAM_STATS, step, ts, data)
        self._nonfinite(step, ts, self.provenance.on_stats(step, data, names))

    def _grad_norms(self, step: int | None, ts: float, payload: tuple[Any, ...]) -> None:
        """A per-step norms buffer (``norms_every``) → a ``grad_norms`` record, and the first non-finite gradient
        → one ``nonfinite`` event (exact where every step is measured)."""
        from .instruments import norms_payload

        buf, event, names, _numel, skipped = payload
        if _was_skipped(skipped):
            return
        data = norms_payload(buf, event)
        self._emit(protocol.GRAD_NORMS, step, ts, data)
        self._nonfinite(step, ts, self.provenance.on_norms(step, data, names))

    def _nonfinite(self, step: int | None, ts: float, data: dict[str, Any] | None) -> None:
        """Emit the run's one ``nonfinite`` event once :class:`~tuimon_agent.provenance.Provenance` decided it."""
        if data is not None:
            self._emit(protocol.EVENT, data.get("first_step", step), ts, data)

    def _act_stats(self, step: int | None, ts: float, payload: tuple[Any, ...]) -> None:
        """Activation (and input) statistics buffers of one measured forward → ``act_stats`` and ``input_stats``
        records (waiting here for their device-to-host copy)."""
        from .activations import act_payloads

        bufs, event, names, shape, order = payload
        acts, inputs = act_payloads(bufs, event, shape)
        input_bad = inputs is not None and not bool(np.isfinite(inputs["mean"]).all())
        self.provenance.on_acts(step, acts["nonfinite"], order, names, input_bad)
        if len(acts["mean"]):  # a model with no measured module still has its input measured
            self._emit(protocol.ACT_STATS, step, ts, acts)
        if inputs is not None:
            self._emit(protocol.INPUT_STATS, step, ts, inputs)

    def _step(self, step: Any) -> int | None:
        """A user's ``step=`` as an int: numpy and tensor integers and integral floats are taken; anything else is
        recorded without a step (the viewer then uses the latest one), with one ``bad_step`` event."""
        if step is None:
            return None
        try:
            value = operator.index(step)
        except Exception:
            try:
                f = float(step)
                value = int(f) if f.is_integer() else None
            except Exception:  # whatever an odd object's __float__ raises
                value = None
        if value is not None and -_STEP_LIMIT < value < _STEP_LIMIT:
            return int(value)
        self.bad_values += 1
        if "step=" not in self._bad_values:
            self._bad_values.add("step=")
            msg = f"step={_short_repr(step)} is not an integer; records with it are kept without a step"
            self._emit(protocol.EVENT, None, time.time(), {"what": "bad_step", "message": msg[:300]})
        return None

    def _amp_step(self, amp: tuple[Any, Any]) -> dict[str, float]:
        """A fused optimizer stepped by ``GradScaler``: ``amp/scale`` and the count of skipped (overflow) steps."""
        found_inf, scale = amp
        self._amp_from_opt = True
        out: dict[str, float] = {}
        try:
            if float(found_inf.sum()) > 0:
                self._skipped += 1
            if scale is not None:
                out["amp/scale"] = float(scale.reshape(-1)[0])
        except (TypeError, ValueError, RuntimeError):
            return out
        out["amp/skipped_steps"] = float(self._skipped)
        return out

    def _amp_scale_seen(self, values: dict[str, float]) -> None:
        """``watch(..., scaler=)``: a loss scale lower than the previous one means GradScaler skipped a step."""
        scale = values["amp/scale"]
        last, self._last_scale = self._last_scale, scale
        if last is not None and scale < last:
            self._skipped += 1
        values["amp/skipped_steps"] = float(self._skipped)

    def _flush_opt(self) -> None:
        pend = self._pending_opt
        if pend is not None:
            self._pending_opt = None
            self._emit(protocol.METRICS, pend[0], pend[1], {"values": pend[2]})

    def _numbers(self, values: dict[str, Any], converted: dict[int, float]) -> dict[str, float]:
        """A ``log()``/``log_eval()`` mapping as floats; a value that is not one (an int beyond a float's range,
        a meta or sparse tensor, an object whose ``__float__`` raises) or a name that is not a string is dropped
        and counted, with one ``bad_value`` event per name."""
        out: dict[str, float] = {}
        for name, v in values.items():
            if type(name) is not str:
                self._bad_value(f"name {_short_repr(name)}", "is not a string")
                continue
            try:
                if type(v) is float or type(v) is int:
                    out[name] = float(v)
                    continue
                got = converted.get(id(v))
                out[name] = got if got is not None else float(v)
            except Exception as exc:  # float() of an odd object can raise anything
                self._bad_value(
                    name, f"={type(v).__name__} is not a number or one-element tensor ({_exc(exc)})"
                )
        return out

    def _bad_value(self, name: str, why: str) -> None:
        """Count a dropped value; the first of each name also emits a ``bad_value`` event."""
        self.bad_values += 1
        if name not in self._bad_values:
            self._bad_values.add(name)
            msg = f"value {name}{why}; it is skipped"
            self._emit(protocol.EVENT, None, time.time(), {"what": "bad_value", "message": msg[:300]})

    def _bad_item(self, tag: int, exc: BaseException) -> None:
        """A queue item that could not become a record (an odd payload): dropped and counted, one ``bad_value``
        event per kind of item."""
        self._bad_value(f"of queue item {tag}", f" could not be recorded ({_exc(exc)})")

    def _emit(self, kind: str, step: int | None, ts: float, data: dict[str, Any]) -> None:
        rec = protocol.Record(kind, self._seq + 1, step, ts, data)
        body = protocol.encode(rec)  # first: a payload that cannot be encoded leaves no gap in the sequence
        self._seq = rec.seq
        self._ring.append((rec.seq, body))
        if self._pub is not None:
            self._outbox.append((kind, body))
        if self._writer is not None:
            self._writer.add(
                rec, body, data.get("values") if kind in (protocol.METRICS, protocol.EVAL) else None
            )
        if self._diag is not None and not self._diagnosing:
            self._diagnose(rec)

    def _diagnose(self, rec: protocol.Record) -> None:
        """Feed one emitted record to the diagnosis rules and emit the ``alert`` records they return (never fed
        back). A failure of the engine itself turns diagnosis off with one warning and an event."""
        self._diagnosing = True
        try:
            try:
                out = self._diag.feed(rec)
            except Exception as exc:
                self._diag = None
                msg = f"alert diagnosis is off: {type(exc).__name__}: {exc}; training goes on"
                _warn(msg)
                self._emit(
                    protocol.EVENT, rec.step, time.time(), {"what": "diagnosis_off", "message": msg[:500]}
                )
                return
            for r in out:
                self._emit(r.kind, r.step, r.ts, r.data)
        finally:
            self._diagnosing = False

    def _publish(self) -> None:
        """Send what :meth:`_emit` queued: one PUB message per run of records of one kind (``[topic, body, ...]``),
        so the per-message cost of ZeroMQ is paid per drain rather than per record."""
        out, self._outbox = self._outbox, []
        if self._pub is None or not out:
            return
        i = 0
        while i < len(out):
            kind = out[i][0]
            j = i + 1
            while j < len(out) and out[j][0] == kind and j - i < PUB_BATCH:
                j += 1
            try:
                self._pub.send_multipart([protocol.topic(kind), *(b for _, b in out[i:j])], flags=zmq.NOBLOCK)
                self.published += j - i
            except zmq.Again:
                pass  # a slow subscriber: PUB drops, the viewer counts the gap
            i = j

    def _commit(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.commit()
        except PersistenceError as exc:
            self._writer = None
            _warn(f"run file persistence is off: {exc}; training goes on")
            self._emit(protocol.EVENT, None, time.time(), {"what": "persistence_off", "message": str(exc)})

    def _heartbeat(self) -> None:
        if self._pub is None:
            return
        self._publish()  # the heartbeat's seq must not run ahead of the records sent
        dropped, step = self._counters()
        rec = protocol.Record(
            protocol.HEARTBEAT, self._seq, step, time.time(), {"dropped": dropped, "queued": len(self._queue)}
        )
        try:
            self._pub.send_multipart(
                [protocol.topic(protocol.HEARTBEAT), protocol.encode(rec)], flags=zmq.NOBLOCK
            )
        except zmq.Again:
            pass

    def _serve_request(self) -> None:
        assert self._router is not None
        try:
            frames = self._router.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        self.requests_served += 1
        ident, body = frames[0], frames[-1]
        try:
            req = protocol.decode(body) if len(frames) >= 2 else None
            if req is None:
                raise protocol.ProtocolError("empty request")
        except protocol.ProtocolError as exc:
            self._reply(ident, protocol.ERROR, {"message": f"bad request: {exc}"})
            return
        if (
            req.kind != protocol.COMMAND and self._request_key is not None
        ):  # commands carry their own signature
            from .commands import check_request

            why = check_request(self._request_key, req.kind, req.data)
            if why is not None:
                self.requests_refused += 1
                self._reply(
                    ident, protocol.ERROR, {"message": f"{req.kind} refused: {why}", "reason": "auth"}
                )
                return
        if req.kind == protocol.SNAPSHOT_REQ:
            after, limit = req.data.get("after", 0), req.data.get("limit", SNAPSHOT_LIMIT)
            if not isinstance(after, int) or not isinstance(limit, int) or after < 0 or limit < 1:
                self._reply(
                    ident, protocol.ERROR, {"message": f"bad snapshot_req: after={after!r} limit={limit!r}"}
                )
                return
            self._reply(ident, protocol.SNAPSHOT, self._snapshot(after, min(limit, SNAPSHOT_LIMIT)))
        elif req.kind == protocol.COMMAND and self._gate is not None:
            self._gate.receive(ident, len(body), req.data)
        elif req.kind == protocol.COMMAND:  # a run without commands answers at once, with the hello's reason
            why = self.cfg.hello.get("commands_unavailable") or "watch() was given no optimizer"
            cid = req.data.get("id") if isinstance(req.data.get("id"), str) else None
            reason = f"no commands: {why}"
            self._reply(ident, protocol.ACK, {"id": cid, "status": "rejected", "reason": reason})
        else:
            self._reply(ident, protocol.ERROR, {"message": f"unknown request kind {req.kind!r}"})

    def _snapshot(self, after: int, limit: int) -> dict[str, Any]:
        self._drain()
        self._commit()
        truncated = False
        if self._writer is not None:
            rows = self._writer.bodies_after(after, limit)
        else:
            ring = self._ring
            truncated = bool(ring) and ring[0][0] > after + 1
            rows = [r for r in ring if r[0] > after][:limit]
        last = rows[-1][0] if rows else after
        return {
            "records": [bytes(b) for _, b in rows],
            "last_seq": last,
            "more": last < self._seq,
            "head_seq": self._seq,
            "truncated": truncated,
        }

    def _reply(self, ident: bytes, kind: str, data: dict[str, Any]) -> None:
        assert self._router is not None
        body = protocol.encode(protocol.Record(kind, 0, None, time.time(), data))
        try:
            self._router.send_multipart([ident, body], flags=zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            pass


def _is_tensor(v: Any) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "detach")


def _read_tensors(tensors: list[Any]) -> dict[int, float]:
    """Read many one-element tensors with one device-to-host copy per device (on the agent thread). A tensor
    that cannot be read so (a sparse or meta tensor) is left out: :meth:`AgentThread._numbers` then tries it
    alone, and drops and counts it."""
    import torch

    out: dict[int, float] = {}
    by_device: dict[Any, list[Any]] = {}
    for t in tensors:
        try:
            if t.numel() == 1 and t.layout == torch.strided and t.device.type != "meta":
                by_device.setdefault(t.device, []).append(t)
        except Exception:
            continue
    for ts in by_device.values():
        try:
            with torch.no_grad():
                flat = torch.stack([t.detach().reshape(()).to(torch.float64) for t in ts]).cpu().tolist()
        except Exception:  # an odd tensor among them: each is then read on its own
            continue
        for t, v in zip(ts, flat, strict=True):
            out[id(t)] = v
    return out


def _exc(exc: BaseException) -> str:
    """``Type: message`` of an exception, short, even when its ``__str__`` raises."""
    try:
        return f"{type(exc).__name__}: {exc}"[:200]
    except Exception:
        return type(exc).__name__


def _short_repr(obj: Any) -> str:
    """``repr(obj)``, short, even when its ``__repr__`` raises."""
    try:
        return repr(obj)[:100]
    except Exception:
        return f"<{type(obj).__name__}>"


def _was_skipped(found_inf: Any) -> bool:
    """Whether a statistics buffer came from a step that ``GradScaler`` skipped (its ``found_inf`` is set)."""
    if found_inf is None:
        return False
    try:
        return float(found_inf.sum()) > 0
    except (TypeError, ValueError, RuntimeError):
        return False


def _opt_values(groups: list[tuple[Any, Any, Any, Any]], base: str = "opt/") -> dict[str, float]:
    """``opt/lr``, ``opt/momentum``, ``opt/beta1``, ``opt/beta2``, ``opt/weight_decay`` (group 0) and ``opt/gN/...``;
    ``base`` replaces ``opt/`` for the second and later optimizers (``opt/o1/lr``, ``opt/o1/g1/lr``)."""
    out: dict[str, float] = {}
    for i, (lr, momentum, betas, wd) in enumerate(groups):
        prefix = base if i == 0 else f"{base}g{i}/"
        for key, v in (("lr", lr), ("momentum", momentum), ("weight_decay", wd)):
            if v is not None:
                f = _to_float(v)
                if f is not None:
                    out[prefix + key] = f
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            for key, v in (("beta1", betas[0]), ("beta2", betas[1])):
                f = _to_float(v)
                if f is not None:
                    out[prefix + key] = f
    return out


def _to_float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError, RuntimeError):
        return None
