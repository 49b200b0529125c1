"""The viewer's view state: what it knows about one run, built only from protocol records, in bounded memory.

Pure Python and numpy; no Textual here, so it is tested and benchmarked headless and shared by the live client and
``tuimon replay``. Not thread-safe: one thread (the UI thread) applies records and reads the state. Each metric's
history is a :class:`~tuimon.series.Series` (see that module for the bounded whole-run buckets).

RunState: sequencing
--------------------
Records carry ``seq`` 1, 2, 3, ... per run. A record whose ``seq`` is at or below the highest applied is a duplicate
and is dropped (counted); a jump counts the missing numbers as gaps. ``seq`` 0 marks ephemeral messages, which never
move ``last_seq``. ``heartbeat`` messages carry the last seq the agent sent, so :attr:`RunState.behind` shows a
trailing gap. Records of unknown kinds advance the sequence (they are a newer agent's additions) but are otherwise
ignored and counted. A ``hello`` with another ``run_id`` is the caller's cue to :meth:`RunState.reset`
(:meth:`RunState.is_new_run` tells it); this class does not guess.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any, NamedTuple

from tuimon_agent import protocol

from .alerts import ALERT, AlertState
from .control import ACK_KIND, COMMAND_KIND, COMMANDS_KIND, CommandLog, TrackedCommand
from .hists import HISTOGRAMS, HistState
from .layers import ACT_STATS, GRAD_NORMS, INPUT_STATS, LAYERS, MODULES, PARAM_STATS, ActState, LayerState
from .probe import FEATURE_MAPS, ProbeState
from .series import CHUNK, Series

EVENTS_KEPT = 200
"""How many of the latest ``event`` records a :class:`RunState` keeps."""
MARKERS_KEPT = 256
METRIC_NAMES_KEPT = 256
"""How many metric names (train and eval together) a :class:`RunState` keeps a series for: the first ones seen.
Each :class:`Series` holds ~106 KiB, so a script that logs a new name per step (``f"loss_{step}"``) would otherwise
grow the viewer by that much per step. Values of names beyond the cap are dropped and the names counted
(:attr:`RunState.names_dropped`); the metric list says so."""
DROPPED_NAMES_COUNTED = 100_000
"""Distinct dropped names counted exactly; past this many, :attr:`RunState.names_dropped` stops growing (the list
then says "at least")."""
"""How many of the latest chart markers (alert onsets, applied commands) a :class:`RunState` keeps."""

_STEP_LIMIT = (
    1 << 62
)  # steps beyond +-2**62 (a corrupt counter) are treated as missing, so int64 never overflows
_RATE_SAMPLE_S = 0.25  # one (ts, step) sample per quarter second of agent time ...
_RATE_SAMPLES = 40  # ... over the last ~10 s
RATE_MIN_SECONDS = 1.0
"""The speed is shown only once the records it comes from span at least this much agent time (a rate from the
first two or three steps says more about start-up than about training)."""
_EVAL_PREFIXES = ("val_", "eval_", "valid_", "validation_", "test_", "val/", "eval/", "valid/", "test/")
_TRAIN_PREFIXES = ("train_", "train/")


__all__ = ["CHUNK", "EVENTS_KEPT", "MARKERS_KEPT", "METRIC_NAMES_KEPT", "Marker", "RunState", "Series"]


class Marker(NamedTuple):
    """A vertical marker on the learning-curve chart at one step."""

    step: int
    """Where it goes."""
    kind: str
    """What it is: ``"alert:critical"``, ``"alert:warning"``, ``"alert:info"``, ``"command"``, ..."""
    label: str
    """A few words for the legend."""


class RunState:
    """Everything the viewer knows about one run, built only from records, in bounded memory.

    Args:
        capacity: Buckets per :class:`Series`.
        tail: Raw recent points per :class:`Series`.

    Attributes:
        hello: The hello payload (``{}`` until one arrives).
        run_id: From the hello.
        name: From the hello.
        train: ``metrics`` series by name, first-seen order.
        eval: ``eval`` series by name, first-seen order.
        step: Highest step seen (records and heartbeats).
        last_seq: Highest seq applied.
        received: Records applied (heartbeats and duplicates not included; unknown kinds included).
        gaps: Missing seq numbers counted (a jump from 5 to 9 adds 3).
        duplicates: Records dropped because their seq was already applied.
        malformed: Bad messages the source reported through :meth:`note_malformed`.
        unknown: Messages of kinds this viewer does not know (ignored).
        dropped: The agent's own drop counter (from heartbeat and end).
        ended: Whether an ``end`` record arrived.
        end_reason: Its reason.
        end_steps: Its step count.
        events: The last :data:`EVENTS_KEPT` event payloads, each with ``"what"``, ``"message"``, ``"step"``, ``"ts"``.
        first_ts: Agent time of the first record.
        last_ts: Agent time of the latest record.
        heartbeats: Heartbeats applied.
        heartbeat_seq: The last seq the agent said it sent (latest heartbeat).
        heartbeat_ts: Agent time of the latest heartbeat.
        queued: The agent's queue depth (latest heartbeat).
        version: Bumped on every change (never reset), so a widget knows when to repaint.
    """

    def __init__(self, *, capacity: int = 2048, tail: int = 512) -> None:
        Series("probe", capacity=capacity, tail=tail)  # validate the options up front
        self._capacity = capacity
        self._tail = tail
        self.version = 0
        self._clear()

    def _clear(self) -> None:
        self.hello: dict[str, Any] = {}
        self.run_id: str | None = None
        self.name: str | None = None
        self.train: dict[str, Series] = {}
        self.eval: dict[str, Series] = {}
        self._dropped_names: set[str] = set()
        self.step = 0
        self.last_seq = 0
        self.received = 0
        self.gaps = 0
        self.duplicates = 0
        self.malformed = 0
        self.unknown = 0
        self.dropped = 0
        self.ended = False
        self.end_reason: str | None = None
        self.end_steps: int | None = None
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS_KEPT)
        self.checks: dict[str, dict[str, Any]] = {}
        """Latest sanity-check result per check name (``check`` record payloads), in first-seen order."""
        # -- per-layer statistics (tuimon/layers.py) --
        self.layers = LayerState()
        """Per-parameter statistics (``layers`` and ``param_stats`` records)."""
        self.acts = ActState()
        """Per-module output and input statistics (``modules``, ``act_stats`` and ``input_stats`` records)."""
        self.hists = HistState()
        """The latest weight and gradient histograms per parameter tensor (``histograms`` records)."""
        self.probe = ProbeState()
        """The latest feature maps of the probe input (``feature_maps`` records, ``probe_off`` events)."""
        # -- end per-layer statistics --
        # -- alerts (tuimon/alerts.py) and chart markers --
        self.markers: collections.deque[Marker] = collections.deque(maxlen=MARKERS_KEPT)
        """Chart markers in the order added, the latest :data:`MARKERS_KEPT` (see :meth:`add_marker`)."""
        self.alerts = AlertState(on_onset=self.add_marker)
        """Active and resolved alerts (``alert`` records); onsets become :attr:`markers`."""
        # -- end alerts --
        # -- live commands (tuimon/control.py) --
        self.commands = CommandLog(on_applied=self._command_applied)
        """Every live command of the run and its outcome (``command`` and ``ack`` records, and this viewer's acks)."""
        # -- end live commands --
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.heartbeats = 0
        self.heartbeat_seq = 0
        self.heartbeat_ts: float | None = None
        self.queued = 0
        self._rate: collections.deque[tuple[float, int]] = collections.deque(maxlen=_RATE_SAMPLES)
        self._rate_end: tuple[float, int] | None = None

    def reset(self) -> None:
        """Forget everything (a new run: the trainer restarted). :attr:`version` still moves forward."""
        self._clear()
        self.version += 1

    @property
    def behind(self) -> int:
        """Records the agent says it sent that have not been applied (a trailing gap)."""
        return max(0, self.heartbeat_seq - self.last_seq)

    # -- ingest ---------------------------------------------------------------------------------------------------

    def is_new_run(self, rec: protocol.Record) -> bool:
        """Whether ``rec`` is a hello for another run than the current one (the caller should :meth:`reset`)."""
        if rec.kind != protocol.HELLO or self.run_id is None:
            return False
        return rec.data.get("run_id") != self.run_id

    def note_malformed(self, n: int = 1) -> None:
        """Count ``n`` messages the source could not decode."""
        self.malformed += n
        self.version += 1

    def apply(self, rec: protocol.Record) -> bool:
        """Apply one record or heartbeat.

        Args:
            rec: A decoded record.

        Returns:
            False if it was dropped as a duplicate (its seq already applied), else True.
        """
        kind = rec.kind
        if kind == protocol.HEARTBEAT:
            self._heartbeat(rec)
            return True
        seq = rec.seq
        if seq > 0:
            last = self.last_seq
            if seq <= last:
                self.duplicates += 1
                self.version += 1
                return False
            if seq > last + 1:
                self.gaps += seq - last - 1
            self.last_seq = seq
        self.received += 1
        self.version += 1
        if kind == protocol.METRICS:
            self._values(self.train, rec)
        elif kind == protocol.EVAL:
            self._values(self.eval, rec)
        elif kind == protocol.EVENT:
            self._event(rec)
        elif kind == protocol.HELLO:
            self._hello(rec)
        elif kind == protocol.END:
            self._end(rec)
        elif kind == protocol.CHECK:
            name = rec.data.get("name")
            if isinstance(name, str):
                self.checks[name] = {**rec.data, "step": rec.step}
        # -- per-layer statistics (tuimon/layers.py) --
        elif kind == PARAM_STATS:
            self._seen(rec.ts, rec.step)
            self.layers.apply_stats(rec.step, rec.data)
        elif kind == GRAD_NORMS:
            self._seen(rec.ts, rec.step)
            self.layers.apply_norms(rec.step, rec.data)
        elif kind == LAYERS:
            self._seen(rec.ts, rec.step)
            self.layers.apply_layers(rec.data)
        elif kind == ACT_STATS:
            self._seen(rec.ts, rec.step)
            self.acts.apply_stats(rec.step, rec.data)
        elif kind == INPUT_STATS:
            self._seen(rec.ts, rec.step)
            self.acts.apply_inputs(rec.step, rec.data)
        elif kind == MODULES:
            self._seen(rec.ts, rec.step)
            self.acts.apply_modules(rec.data)
        elif kind == HISTOGRAMS:
            self._seen(rec.ts, rec.step)
            self.hists.apply(rec.step, rec.data, self.layers.names)
        elif kind == FEATURE_MAPS:
            self._seen(rec.ts, rec.step)
            self.probe.apply(rec.step, rec.data)
        # -- end per-layer statistics --
        elif kind == ALERT:
            self._seen(rec.ts, rec.step)
            self.alerts.apply(rec.step, rec.data)
        elif kind in (COMMAND_KIND, ACK_KIND, COMMANDS_KIND):
            self._seen(rec.ts, rec.step)
            self.commands.apply_record(rec)
        else:
            self.unknown += 1
        return True

    def _command_applied(self, cmd: TrackedCommand) -> None:
        """An applied command marks the chart at the step where it took effect."""
        if isinstance(cmd.step, int):
            self.add_marker(cmd.step, "command", cmd.label)
        self.version += 1

    def apply_many(self, recs: Iterable[protocol.Record]) -> int:
        """Apply records in order (the fast path for bursts and snapshots).

        Args:
            recs: Decoded records.

        Returns:
            How many were applied (not dropped as duplicates).
        """
        applied = seen = 0
        train, values, apply = self.train, self._values, self.apply
        for rec in recs:
            seen += 1
            seq = rec.seq
            if rec.kind == "metrics" and seq > self.last_seq:  # the common case, inlined
                if seq > self.last_seq + 1:
                    self.gaps += seq - self.last_seq - 1
                self.last_seq = seq
                self.received += 1
                values(train, rec)
                applied += 1
            elif apply(rec):
                applied += 1
        if seen:
            self.version += 1
        return applied

    def apply_encoded(self, bodies: Iterable[bytes]) -> int:
        """Decode and apply record bodies (a snapshot or run file rows); undecodable ones are counted as malformed.

        Args:
            bodies: Encoded records.

        Returns:
            How many were applied.
        """
        decode = protocol.decode
        bad = 0

        def records() -> Iterable[protocol.Record]:
            nonlocal bad
            for body in bodies:
                try:
                    yield decode(body)
                except protocol.ProtocolError:
                    bad += 1

        applied = self.apply_many(records())
        if bad:
            self.note_malformed(bad)
        return applied

    def _seen(self, ts: float, step: int | None) -> None:
        if step is not None and not -_STEP_LIMIT <= step <= _STEP_LIMIT:
            step = None
        if ts > 0.0:
            if self.first_ts is None:
                self.first_ts = ts
            if self.last_ts is None or ts > self.last_ts:
                self.last_ts = ts
        if step is not None and step > self.step:
            self.step = step

    def _values(self, table: dict[str, Series], rec: protocol.Record) -> None:
        step = rec.step
        ts = rec.ts
        if step is not None and not -_STEP_LIMIT <= step <= _STEP_LIMIT:
            step = None
        self._seen(ts, step)
        if step is None:
            step = self.step
        elif ts > 0.0:
            self._rate_end = (ts, step)
            rate = self._rate
            if not rate or ts - rate[-1][0] >= _RATE_SAMPLE_S:
                rate.append((ts, step))
        values = rec.data.get("values")
        if type(values) is not dict:
            return
        for name, v in values.items():
            if type(v) is not float:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                try:
                    v = float(v)
                except OverflowError:
                    continue
            s = table.get(name)
            if s is None:
                if type(name) is not str:
                    continue
                if len(self.train) + len(self.eval) >= METRIC_NAMES_KEPT:
                    self._drop_name(table, name)
                    continue
                s = table[name] = Series(name, capacity=self._capacity, tail=self._tail)
            s._ps.append(step)
            pv = s._pv
            pv.append(v)
            if len(pv) >= CHUNK:
                s._fold()

    def _drop_name(self, table: dict[str, Series], name: str) -> None:
        """Count a metric name past :data:`METRIC_NAMES_KEPT` (its values are not kept)."""
        dropped = self._dropped_names
        if len(dropped) < DROPPED_NAMES_COUNTED:
            dropped.add(("e:" if table is self.eval else "t:") + name)

    @property
    def names_dropped(self) -> int:
        """Distinct metric names whose values were dropped because :data:`METRIC_NAMES_KEPT` names were already
        kept (counted up to :data:`DROPPED_NAMES_COUNTED`)."""
        return len(self._dropped_names)

    def _heartbeat(self, rec: protocol.Record) -> None:
        d = rec.data
        self.heartbeats += 1
        self.heartbeat_seq = rec.seq
        if rec.ts > 0.0:
            self.heartbeat_ts = rec.ts
        dropped, queued, step = d.get("dropped"), d.get("queued"), d.get("step")
        if _is_int(dropped):
            self.dropped = max(self.dropped, dropped)
        if _is_int(queued):
            self.queued = queued
        if _is_int(step) and step > self.step:
            self.step = step
        self.version += 1

    def _event(self, rec: protocol.Record) -> None:
        self._seen(rec.ts, rec.step)
        ev = dict(rec.data)
        ev["what"] = str(ev.get("what", ""))
        ev["message"] = str(ev.get("message", ""))
        ev["step"] = rec.step
        ev["ts"] = rec.ts
        self.events.append(ev)
        if ev["what"] == "probe_off":
            self.probe.note_off(ev["message"])

    def _hello(self, rec: protocol.Record) -> None:
        self._seen(rec.ts, rec.step)
        self.hello = dict(rec.data)
        run_id, name = self.hello.get("run_id"), self.hello.get("name")
        self.run_id = str(run_id) if run_id is not None else None
        self.name = str(name) if name is not None else None

    def _end(self, rec: protocol.Record) -> None:
        self._seen(rec.ts, rec.step)
        d = rec.data
        self.ended = True
        reason = d.get("reason")
        self.end_reason = str(reason) if reason is not None else None
        if _is_int(d.get("dropped")):
            self.dropped = max(self.dropped, d["dropped"])
        if _is_int(d.get("steps")):
            self.end_steps = d["steps"]

    def add_marker(self, step: int, kind: str, label: str) -> None:
        """Put a marker on the learning-curve chart (the oldest goes when :data:`MARKERS_KEPT` are held).

        Args:
            step: The step it marks.
            kind: ``"alert:<severity>"`` for an alert's onset, ``"command"`` for an applied command, ...
            label: A few words for the chart's legend.
        """
        self.markers.append(Marker(int(step), str(kind), str(label)))
        self.version += 1

    # -- queries ----------------------------------------------------------------------------------------------------

    def steps_per_second(self) -> float | None:
        """Training steps per second of agent time over the last ~10 s of records; ``None`` while unknown (less
        than :data:`RATE_MIN_SECONDS` of records so far)."""
        if not self._rate or self._rate_end is None:
            return None
        t0, s0 = self._rate[0]
        t1, s1 = self._rate_end
        if t1 - t0 < RATE_MIN_SECONDS:
            return None
        return max(0.0, (s1 - s0) / (t1 - t0))

    def elapsed(self) -> float:
        """Agent time from the first record to the latest, 0.0 when unknown."""
        if self.first_ts is None or self.last_ts is None:
            return 0.0
        return self.last_ts - self.first_ts

    def lr(self) -> float | None:
        """The latest ``opt/lr``, ``None`` if none was logged."""
        s = self.train.get("opt/lr")
        return s.last_value if s is not None else None

    def series(self, name: str) -> Series | None:
        """The train series called ``name``, else the eval one, else ``None``."""
        return self.train.get(name) or self.eval.get(name)

    def eval_for(self, train_name: str) -> Series | None:
        """The eval series that pairs with a train metric: ``loss`` (or ``train_loss``, ``train/loss``) pairs with
        ``val_loss``, ``eval_loss``, ``valid_loss``, ``validation_loss``, ``test_loss``, ``val/loss``, ... or an
        eval ``loss``, tried in that order.

        Args:
            train_name: The train metric's name.

        Returns:
            The eval series, or ``None``.
        """
        base = train_name
        for p in _TRAIN_PREFIXES:
            if base.startswith(p):
                base = base[len(p) :]
                break
        for p in _EVAL_PREFIXES:
            s = self.eval.get(p + base)
            if s is not None:
                return s
        return self.eval.get(base) or self.eval.get(train_name)

    def metric_names(self) -> list[str]:
        """Names to offer in a metric chooser: train names, then eval names no train name pairs with, then
        ``opt/*`` names (each group in first-seen order). Look them up with :meth:`series`."""
        paired = {id(s) for n in self.train if (s := self.eval_for(n)) is not None}
        main = [n for n in self.train if not n.startswith("opt/")]
        opt = [n for n in self.train if n.startswith("opt/")]
        eval_only = [n for n, s in self.eval.items() if id(s) not in paired and n not in self.train]
        return main + eval_only + opt


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
