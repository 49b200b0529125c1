"""The viewer's alert state: the latest ``alert`` record per alert id, active ones and a bounded history.

Pure Python, no Textual: :class:`~tuimon.state.RunState` feeds it from :meth:`~tuimon.state.RunState.apply`, the
alert panel and the alert detail screen read it. The record format is the shared spec (``alert`` records, one each
time an alert starts, changes severity, is materially updated or resolves; payload keys ``id``, ``rule``, ``state``,
``severity``, ``first_step``, ``last_step``, ``layers``, ``metric``, ``confidence``, ``evidence``, ``message``,
``remedies``, ``actions``).

Payloads come from the wire, so every field is checked: a payload without a usable ``id``, ``rule``, ``state`` or
``severity`` is ignored and counted in :attr:`AlertState.malformed`; optional fields of the wrong type are dropped
(counted in :attr:`AlertState.repaired`), strings are cut to a few hundred characters and lists and dicts to a few
entries, so a hostile record can neither crash the viewer nor make it hold much memory.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tuimon_agent import protocol

ALERT = protocol.ALERT
"""The record kind."""

SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
"""Severities, most severe first."""
SEVERITY_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}
"""Sort key of each severity (0 is the most severe)."""
SEVERITY_GLYPH: dict[str, str] = {"critical": "✖", "warning": "⚠", "info": "ℹ"}
"""The glyph the panel, the chart markers and the detail screen show for each severity."""

ACTIVE_KEPT = 200
"""At most this many alerts are active at once; records for further new ids are ignored (and counted)."""
HISTORY_KEPT = 200
"""Resolved alerts kept in the history (the oldest go first)."""
MAX_TEXT = 400
"""Longest message, remedy or label kept (characters); longer ones are cut with an ellipsis."""
MAX_NAME = 120
"""Longest id, rule, layer, metric, evidence key or command kept."""
MAX_LAYERS = 8
MAX_EVIDENCE = 24
MAX_REMEDIES = 8
MAX_ACTIONS = 8
MAX_ARGS = 8

_STEP_LIMIT = 1 << 62


@dataclass(frozen=True)
class Alert:
    """One alert as its latest record describes it (already checked and trimmed).

    Attributes:
        id: Stable identifier, ``rule:scope`` (e.g. ``exploding_gradients:global``).
        rule: The rule's name.
        state: ``"active"`` or ``"resolved"``.
        severity: ``"critical"``, ``"warning"`` or ``"info"``.
        first_step: The onset step.
        last_step: The latest step with evidence.
        step: The step of this update (the record's step).
        layers: Parameter or module names involved, model order.
        metric: The scalar involved (``"loss"``, ``"val/loss"``), if any.
        confidence: 0..1, ``None`` when the record had none.
        evidence: The numbers (or short strings) that triggered it.
        message: One sentence: what is wrong, where, since when.
        remedies: Short imperative sentences.
        actions: Machine-readable suggestions: ``{"command": str, "args": dict, "label": str}``.
        updates: How many records this alert has had (this one included).
    """

    id: str
    rule: str
    state: str
    severity: str
    first_step: int
    last_step: int
    step: int
    layers: tuple[str, ...] = ()
    metric: str | None = None
    confidence: float | None = None
    evidence: dict[str, float | int | str] = field(default_factory=dict)
    message: str = ""
    remedies: tuple[str, ...] = ()
    actions: tuple[dict[str, Any], ...] = ()
    updates: int = 1

    @property
    def active(self) -> bool:
        """Whether the alert is still active."""
        return self.state == "active"

    @property
    def glyph(self) -> str:
        """The severity's glyph."""
        return SEVERITY_GLYPH[self.severity]

    def sort_key(self) -> tuple[int, int, str]:
        """Most severe first, then earliest onset, then id."""
        return (SEVERITY_RANK[self.severity], self.first_step, self.id)


MarkerSink = Callable[[int, str, str], None]
"""Where onsets go: ``add_marker(step, kind, label)`` (:meth:`tuimon.state.RunState.add_marker`)."""


class AlertState:
    """The latest record per alert id: active alerts, resolved history, counts.

    Args:
        on_onset: Called with ``(step, kind, label)`` when an alert starts (kind ``"alert:<severity>"``) or
            escalates to a more severe level; the run state passes its ``add_marker``.

    Attributes:
        applied: Alert records accepted.
        malformed: Alert records ignored (missing or invalid ``id``, ``rule``, ``state``, ``severity``).
        repaired: Accepted records with an optional field dropped or cut.
        overflow: Records for new ids ignored because :data:`ACTIVE_KEPT` alerts were active.
        version: Bumped on every change, so a widget knows when to repaint.
    """

    def __init__(self, *, on_onset: MarkerSink | None = None) -> None:
        self._on_onset = on_onset
        self._active: dict[str, Alert] = {}
        self._history: collections.deque[Alert] = collections.deque(maxlen=HISTORY_KEPT)
        self._sorted: list[Alert] | None = []
        self.applied = 0
        self.malformed = 0
        self.repaired = 0
        self.overflow = 0
        self.version = 0

    # -- ingest -----------------------------------------------------------------------------------------------------

    def apply(self, step: int | None, data: Any) -> Alert | None:
        """Apply one ``alert`` record.

        Args:
            step: The record's step (the step of the update).
            data: Its payload.

        Returns:
            The alert as now known, or ``None`` when the record was ignored (counted).
        """
        self.version += 1
        alert = self._parse(step, data)
        if alert is None:
            self.malformed += 1
            return None
        prev = self._active.get(alert.id)
        if prev is None and alert.active and len(self._active) >= ACTIVE_KEPT:
            self.overflow += 1
            return None
        self.applied += 1
        if prev is not None:
            alert = replace(alert, updates=prev.updates + 1)
        self._sorted = None
        if alert.active:
            self._active[alert.id] = alert
            if self._on_onset is not None:
                if prev is None or prev.first_step != alert.first_step:
                    self._on_onset(alert.first_step, f"alert:{alert.severity}", _marker_label(alert))
                elif SEVERITY_RANK[alert.severity] < SEVERITY_RANK[prev.severity]:
                    self._on_onset(alert.step, f"alert:{alert.severity}", _marker_label(alert))
        else:
            self._active.pop(alert.id, None)
            hist = self._history
            # A repeated resolve of the same episode replaces its entry rather than adding one.
            for i in range(len(hist) - 1, max(-1, len(hist) - 9), -1):
                if hist[i].id == alert.id and hist[i].first_step == alert.first_step:
                    del hist[i]
                    break
            hist.append(alert)
        return alert

    def clear(self) -> None:
        """Forget every alert (counters too); :attr:`version` still moves forward."""
        self._active.clear()
        self._history.clear()
        self._sorted = []
        self.applied = self.malformed = self.repaired = self.overflow = 0
        self.version += 1

    # -- queries ----------------------------------------------------------------------------------------------------

    @property
    def active(self) -> list[Alert]:
        """Active alerts, most severe first, then by onset (a cached list: do not modify)."""
        if self._sorted is None:
            self._sorted = sorted(self._active.values(), key=Alert.sort_key)
        return self._sorted

    @property
    def history(self) -> list[Alert]:
        """Resolved alerts, most recently resolved first."""
        return list(reversed(self._history))

    def get(self, alert_id: str) -> Alert | None:
        """The alert with this id: the active one, else its latest resolved episode, else ``None``."""
        found = self._active.get(alert_id)
        if found is not None:
            return found
        return next((a for a in reversed(self._history) if a.id == alert_id), None)

    def counts(self) -> dict[str, int]:
        """Active alerts per severity (every severity present, 0 when none)."""
        out = dict.fromkeys(SEVERITIES, 0)
        for a in self._active.values():
            out[a.severity] += 1
        return out

    def __len__(self) -> int:
        return len(self._active)

    # -- parsing ----------------------------------------------------------------------------------------------------

    def _parse(self, step: int | None, d: Any) -> Alert | None:
        if not isinstance(d, Mapping):
            return None
        alert_id, rule = d.get("id"), d.get("rule")
        state, severity = d.get("state"), d.get("severity")
        if not (isinstance(alert_id, str) and alert_id and isinstance(rule, str) and rule):
            return None
        if state not in ("active", "resolved") or severity not in SEVERITY_RANK:
            return None
        fixes = 0
        rec_step = step if _is_step(step) else None
        first = d.get("first_step")
        if not _is_step(first):
            fixes += "first_step" in d
            first = rec_step if rec_step is not None else 0
        last = d.get("last_step")
        if not _is_step(last):
            fixes += "last_step" in d
            last = rec_step if rec_step is not None else first
        layers, bad = _strings(d.get("layers"), MAX_LAYERS, MAX_NAME)
        fixes += bad
        remedies, bad = _strings(d.get("remedies"), MAX_REMEDIES, MAX_TEXT)
        fixes += bad
        metric = d.get("metric")
        if metric is not None and not isinstance(metric, str):
            fixes += 1
            metric = None
        confidence = d.get("confidence")
        if _is_number(confidence) and math.isfinite(confidence):
            confidence = min(1.0, max(0.0, float(confidence)))
        else:
            fixes += confidence is not None
            confidence = None
        message = d.get("message")
        if not isinstance(message, str):
            fixes += message is not None
            message = ""
        evidence, bad = _evidence(d.get("evidence"))
        fixes += bad
        actions, bad = _actions(d.get("actions"))
        fixes += bad
        if len(alert_id) > MAX_NAME or len(rule) > MAX_NAME or len(message) > MAX_TEXT:
            fixes += 1
        if fixes:
            self.repaired += 1
        return Alert(
            id=_cut(alert_id, MAX_NAME),
            rule=_cut(rule, MAX_NAME),
            state=state,
            severity=severity,
            first_step=first,
            last_step=max(first, last),
            step=rec_step if rec_step is not None else last,
            layers=layers,
            metric=_cut(metric, MAX_NAME) if metric else None,
            confidence=confidence,
            evidence=evidence,
            message=_cut(" ".join(message[: 2 * MAX_TEXT].split()), MAX_TEXT),
            remedies=remedies,
            actions=actions,
        )


def _marker_label(alert: Alert) -> str:
    where = f" {alert.layers[0]}" if alert.layers else ""
    return f"{alert.glyph} {alert.rule}{where}"


def _is_step(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -_STEP_LIMIT <= v <= _STEP_LIMIT


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _strings(raw: Any, count: int, limit: int) -> tuple[tuple[str, ...], int]:
    """Up to ``count`` strings of ``raw`` (a list), each cut to ``limit``; and how many problems were fixed."""
    if raw is None:
        return (), 0
    if not isinstance(raw, (list, tuple)):
        return (), 1
    good = (s for s in raw if isinstance(s, str) and s.strip())
    out = tuple(_cut(" ".join(s[: 2 * limit].split()), limit) for s in itertools.islice(good, count))
    return out, int(len(out) != len(raw) or any(len(s) > limit for s in out))


def _evidence(raw: Any) -> tuple[dict[str, float | int | str], int]:
    if raw is None:
        return {}, 0
    if not isinstance(raw, Mapping):
        return {}, 1
    out: dict[str, float | int | str] = {}
    for k, v in raw.items():
        if len(out) >= MAX_EVIDENCE:
            break
        if not isinstance(k, str):
            continue
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, int):
            v = v if abs(v) < 1 << 63 else float(v)
        elif isinstance(v, str):
            v = _cut(v, MAX_NAME)
        elif not isinstance(v, float):
            continue
        out[_cut(k, MAX_NAME)] = v
    return out, int(len(out) != len(raw))


def _actions(raw: Any) -> tuple[tuple[dict[str, Any], ...], int]:
    if raw is None:
        return (), 0
    if not isinstance(raw, (list, tuple)):
        return (), 1
    out: list[dict[str, Any]] = []
    for a in raw[:MAX_ACTIONS]:
        if not isinstance(a, Mapping):
            continue
        command, args, label = a.get("command"), a.get("args", {}), a.get("label")
        if not isinstance(command, str) or not command or not isinstance(args, Mapping):
            continue
        clean: dict[str, Any] = {}
        for k, v in list(args.items())[:MAX_ARGS]:
            if isinstance(k, str) and (
                v is None or isinstance(v, (bool, str)) or (_is_number(v) and abs(v) < 1 << 63)
            ):
                clean[_cut(k, MAX_NAME)] = _cut(v, MAX_NAME) if isinstance(v, str) else v
        text = _cut(label, MAX_TEXT) if isinstance(label, str) and label else describe_action(command, clean)
        out.append({"command": _cut(command, MAX_NAME), "args": clean, "label": text})
    return tuple(out), int(len(out) != len(raw))


def describe_action(command: str, args: Mapping[str, Any]) -> str:
    """The exact command with its values, as the detail screen shows it: ``set_lr value=0.0003``.

    Args:
        command: The command's name.
        args: Its arguments.

    Returns:
        One line.
    """
    parts = [command]
    for k, v in args.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)
