"""The :class:`Diagnoser`: routes records to the rules and turns their findings into ``alert`` records.

Lifecycle of one alert id (``rule:scope``), as the alert spec in ``protocol.ALERT`` describes it: one record when it
starts (``state = "active"``), when its severity changes (up at once; down only once the higher severity has
held :data:`UPDATE_EVERY` steps, so that evidence hovering at a severity boundary does not flap), at most every :data:`UPDATE_EVERY` steps while it stays
active (so ``last_step`` and the evidence stay current), at once when a number of its evidence moves by a decade
or more, and once when the rule resolves it (``state = "resolved"``). A resolved id that fires again starts a new
episode with a new ``first_step``.

Memory is bounded whatever the run's length: the rules keep bounded state, and the engine keeps one small entry per
alert id, at most :data:`MAX_ALERTS` of them (the oldest resolved ones are forgotten first).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .. import protocol
from ..protocol import Record
from .base import INFO, SEVERITIES, SEVERITY_RANK, Context, Finding, Rule

UPDATE_EVERY = 50
"""Steps between two update records of one active alert at most (unless its severity or evidence jumps)."""
MAX_ALERTS = 2000
"""Alert ids the engine remembers at most."""
MAX_LAYERS = 8
"""Layer names kept in one alert record."""
MAX_TEXT = 500
"""Characters kept of a message or a remedy."""


def _warn(message: str) -> None:
    try:
        print(f"tuimon: {message}", file=sys.stderr, flush=True)
    except Exception:
        pass


@dataclass(slots=True)
class AlertState:
    """What the engine remembers about one alert id.

    Attributes:
        payload: The latest record payload emitted for it (the alert spec's ``d``).
        active: Whether it is active.
        last_emit_step: The step of the latest record emitted for it.
    """

    payload: dict[str, Any]
    active: bool
    last_emit_step: int
    severity_step: int
    """The step of its latest severity change."""


class Diagnoser:
    """Runs the rules over a run's records, in order, and returns the ``alert`` records to emit.

    Used on the agent thread (live) and by ``tuimon diagnose`` (over a run file) the same way::

        diag = Diagnoser()
        for rec in records:
            for alert in diag.feed(rec):
                emit(alert)

    Args:
        rules: The rule instances (default: one of each class in ``alerts.RULE_CLASSES``).
        warn: Called with a message when a rule fails and is disabled (default: one line on stderr).
    """

    def __init__(
        self, rules: Iterable[Rule] | None = None, *, warn: Callable[[str], None] | None = _warn
    ) -> None:
        if rules is None:
            from . import default_rules

            rules = default_rules()
        self.rules: list[Rule] = list(rules)
        self.ctx = Context()
        self.disabled: dict[str, str] = {}
        """Rule name → the error that disabled it."""
        self._warn = warn
        self._by_kind: dict[str, list[Rule]] = {}
        for r in self.rules:
            for k in r.kinds:
                self._by_kind.setdefault(k, []).append(r)
        self._alerts: dict[str, AlertState] = {}
        self.records_fed = 0

    @property
    def alerts(self) -> dict[str, dict[str, Any]]:
        """The latest payload of every alert id remembered (active and resolved)."""
        return {k: st.payload for k, st in self._alerts.items()}

    def active(self) -> list[dict[str, Any]]:
        """The active alerts' latest payloads, most severe first, then by onset."""
        act = [st.payload for st in self._alerts.values() if st.active]
        return sorted(act, key=lambda p: (-SEVERITY_RANK.get(p["severity"], 0), p["first_step"]))

    def feed(self, record: Record) -> list[Record]:
        """Read one record; return the records to emit (``alert`` records, and an ``event`` when a rule fails).

        ``alert`` records themselves are ignored (never fed back), so feeding everything the agent emits is safe.

        Args:
            record: The next record of the run, in order.

        Returns:
            New records with ``seq`` 0 (the caller numbers them), ``step`` and ``ts`` of the record that caused them.
        """
        if record.kind == protocol.ALERT:
            return []
        self.records_fed += 1
        ctx = self.ctx
        ctx.observe(record)
        rules = self._by_kind.get(record.kind)
        if not rules:
            return []
        out: list[Record] = []
        for rule in rules:
            if rule.name in self.disabled:
                continue
            try:
                found = rule.feed(record, ctx)
                if found:
                    for f in found:
                        rec = self._apply(rule, f, record)
                        if rec is not None:
                            out.append(rec)
            except Exception as exc:  # a broken rule must never stop the others or the agent
                self._disable(rule, exc, record, out)
        return out

    def _disable(self, rule: Rule, exc: Exception, record: Record, out: list[Record]) -> None:
        msg = f"alert rule {rule.name!r} failed at step {record.step} and is disabled: {type(exc).__name__}: {exc}"
        self.disabled[rule.name] = msg
        if self._warn is not None:
            self._warn(msg)
        out.append(
            Record(
                protocol.EVENT,
                0,
                record.step,
                record.ts or time.time(),
                {"what": "rule_error", "message": msg[:MAX_TEXT], "rule": rule.name},
            )
        )

    def _apply(self, rule: Rule, f: Finding, record: Record) -> Record | None:
        if f.rule != rule.name:
            raise ValueError(f"rule {rule.name!r} returned a finding for rule {f.rule!r}")
        aid = f.id
        st = self._alerts.get(aid)
        step = int(f.step)
        if not f.active:
            if st is None or not st.active:
                return None
            payload = dict(st.payload, state="resolved", last_step=step)
            st.payload, st.active, st.last_emit_step = payload, False, step
            self._touch(aid, st)
            self.ctx.set_active(aid, None)
            return self._record(payload, record)
        if f.severity not in SEVERITIES:
            raise ValueError(f"invalid severity={f.severity!r} for alert {aid}")
        severity, evidence = f.severity, _clean_evidence(f.evidence)
        causes = sorted(r for r in rule.subordinate_to if r != rule.name and self.ctx.is_active(r))
        if causes:
            severity = INFO
            evidence["caused_by"] = ",".join(causes)
        new = st is None or not st.active
        first = (f.first_step if f.first_step is not None else step) if new else st.payload["first_step"]
        payload = {
            "id": aid,
            "rule": f.rule,
            "state": "active",
            "severity": severity,
            "first_step": int(min(first, step)),
            "last_step": step,
            "layers": [str(x) for x in f.layers[:MAX_LAYERS]],
            "metric": f.metric,
            "confidence": float(min(1.0, max(0.0, f.confidence))) if math.isfinite(f.confidence) else 0.0,
            "evidence": evidence,
            "message": str(f.message)[:MAX_TEXT],
            "remedies": [str(r)[:MAX_TEXT] for r in f.remedies],
            "actions": list(f.actions),
        }
        if new:
            self._remember(aid, AlertState(payload, True, step, step))
            self.ctx.set_active(aid, severity)
            return self._record(payload, record)
        assert st is not None
        if (
            SEVERITY_RANK[severity] < SEVERITY_RANK[st.payload["severity"]]
            and step - st.severity_step < UPDATE_EVERY
        ):
            payload["severity"] = severity = st.payload["severity"]  # escalate at once, calm down slowly
        self._touch(aid, st)
        old = st.payload
        due = (
            severity != old["severity"]
            or _evidence_jumped(old["evidence"], evidence)
            or step - st.last_emit_step >= UPDATE_EVERY
        )
        st.payload = payload
        if severity != old["severity"]:
            st.severity_step = step
            self.ctx.set_active(aid, severity)
        if not due:
            return None
        st.last_emit_step = step
        return self._record(payload, record)

    def _touch(self, aid: str, st: AlertState) -> None:
        """Move an id to the end of the table: the table is in least-recently-used order."""
        del self._alerts[aid]
        self._alerts[aid] = st

    def _remember(self, aid: str, st: AlertState) -> None:
        alerts = self._alerts
        alerts.pop(aid, None)
        alerts[aid] = st
        if len(alerts) > MAX_ALERTS:
            # Forget the least recently used resolved alert (or, if all are active, the least recently used one).
            oldest = next((k for k, v in alerts.items() if not v.active), next(iter(alerts)))
            if alerts[oldest].active:
                self.ctx.set_active(oldest, None)
            del alerts[oldest]

    @staticmethod
    def _record(payload: dict[str, Any], cause: Record) -> Record:
        return Record(protocol.ALERT, 0, payload["last_step"], cause.ts or time.time(), dict(payload))


def _clean_evidence(ev: dict[str, Any]) -> dict[str, float | int | str]:
    """Evidence as plain msgpack-able scalars: numpy scalars to Python, floats to 4 significant digits."""
    out: dict[str, float | int | str] = {}
    for k, v in list(ev.items())[:32]:
        if hasattr(v, "item") and not isinstance(v, (str, bytes)):
            try:
                v = v.item()
            except (ValueError, TypeError):
                v = str(v)
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, float):
            v = float(f"{v:.4g}") if math.isfinite(v) else v
        elif not isinstance(v, (int, str)):
            v = str(v)
        out[str(k)] = v[:200] if isinstance(v, str) else v
    return out


def _evidence_jumped(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a non-zero number in the evidence moved by a decade or more, or became (non-)finite."""
    for k, v in new.items():
        o = old.get(k)
        if not isinstance(v, (int, float)) or not isinstance(o, (int, float)):
            continue
        if not math.isfinite(v) or not math.isfinite(o):
            if math.isfinite(v) != math.isfinite(o):
                return True
            continue
        if o != 0 and v != 0 and abs(math.log10(abs(v) / abs(o))) >= 1.0:
            return True
    return False
