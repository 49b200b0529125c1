"""The rule interface, the facts every rule may read, and the robust-statistics helpers rules share.

How to write a rule
-------------------
A rule is a small class that reads some record kinds and says, after each record it reads, which of its alerts
hold *now*. The :class:`~tuimon_agent.alerts.engine.Diagnoser` does the rest: it routes records, keeps each
alert's lifecycle (onset, severity changes, throttled updates, resolution), turns findings into ``alert`` records
(``protocol.ALERT``) and catches a rule's exceptions (the rule is then disabled with one warning).

1. Subclass :class:`Rule`; set ``name`` (the stable rule identifier, e.g. ``"dead_units"``) and ``kinds`` (the
   record kinds it reads, e.g. ``frozenset({protocol.ACT_STATS})``).
2. Implement ``feed(record, ctx)``. Keep only *bounded* state (a :class:`Window` of the last N values, an
   :class:`Ema`, a :class:`Hysteresis` per scope); never keep every record.
3. Return a list of :class:`Finding` (or ``None``/``[]`` when nothing changed):

   - ``self.active(scope, step, ...)`` while the condition holds (after your own hysteresis: use
     :class:`Hysteresis` so it does not flap). Return it each time you evaluate and it still holds: the engine
     deduplicates and throttles (one record per alert id at most every :data:`~.engine.UPDATE_EVERY` steps, unless
     the severity changes or the evidence moves by an order of magnitude).
   - ``self.resolved(scope, step)`` once it stops holding. Resolving an alert that is not active is a no-op.

   ``scope`` names what the alert is about: ``"global"``, a layer name, or a metric name; the alert id is
   ``f"{rule}:{scope}"``. ``first_step`` is the onset (the step the pathology began, which may precede the step
   you are sure of it; :attr:`Hysteresis.onset` gives it); it is used when the alert starts.
4. Use ``ctx`` (a :class:`Context`) for the facts other records established: the parameter and module index
   (names, module types, model order), the current learning rate, which metric is the training loss and its eval
   twin, and which alerts are active (``ctx.is_active("unnormalized_input")``) for cause attribution. Set
   ``subordinate_to`` to rule names whose active alert explains yours: while one is active the engine caps your
   severity at ``info`` and adds ``caused_by`` to the evidence.
5. Write the message as one sentence (what, where, since when), remedies as short imperative sentences, and
   actions as :func:`set_lr` / :func:`set_clip` (only with values you know).
6. Register the class in ``RULE_CLASSES`` in ``alerts/__init__.py``, and unit-test it on synthetic streams
   (fires; does not fire on healthy streams of several shapes; does not flap): feed a fresh :class:`Diagnoser`
   ``protocol.Record`` objects built by hand.

A skeleton::

    class LossIsNegative(Rule):
        name = "loss_negative"
        kinds = frozenset({protocol.METRICS})

        def __init__(self) -> None:
            self.window = Window(50)
            self.state = Hysteresis(on=0.9, off=0.5, min_on=3, min_off=5)

        def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
            loss = ctx.loss_value(record)
            if loss is None or record.step is None:
                return None
            self.window.add(loss)
            frac = float(np.mean(self.window.array() < 0))
            changed = self.state.update(frac, record.step)
            if self.state.on:
                return [self.active("global", record.step, severity=WARNING, metric=ctx.loss_name,
                                    confidence=frac, evidence={"neg_frac": frac},
                                    message=f"the loss has been negative since step {self.state.onset}",
                                    remedies=["Check the loss function's sign."])]
            if changed:
                return [self.resolved("global", record.step)]
            return None
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .. import protocol
from ..protocol import Record

INFO = "info"
WARNING = "warning"
CRITICAL = "critical"
SEVERITIES = (INFO, WARNING, CRITICAL)
"""Severities in increasing order."""
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}

RULE_NAMES = (
    "nonfinite",
    "exploding_gradients",
    "vanishing_gradients",
    "loss_divergence",
    "loss_plateau",
    "overfitting",
    "underfitting",
    "dead_units",
    "saturation",
    "unnormalized_input",
    "update_ratio",
    "loss_spike",
)
"""The stable rule identifiers of the alert spec."""

Evidence = dict[str, float | int | str]

_EVAL_PREFIXES = ("val_", "eval_", "valid_", "validation_", "test_", "val/", "eval/", "valid/", "test/")
_TRAIN_PREFIXES = ("train_", "train/")


# -- findings ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Finding:
    """What a rule says about one alert id after reading a record.

    Attributes:
        rule: The rule's name.
        scope: What the alert is about (``"global"``, a layer or metric name); the alert id is ``rule:scope``.
        step: The step of this evaluation (the alert's ``last_step``).
        active: ``True`` while the condition holds, ``False`` to resolve it.
        severity: ``info``, ``warning`` or ``critical``.
        first_step: The onset, used when the alert starts (default: ``step``).
        layers: Parameter or module names involved, in model order (at most 8 are kept).
        metric: The scalar involved (``"loss"``, ``"val/loss"``), or ``None``.
        confidence: 0..1.
        evidence: The numbers that triggered it, short keys.
        message: One sentence: what is wrong, where, since when.
        remedies: Short imperative sentences from the debugging playbook.
        actions: Machine-readable suggestions (see :func:`set_lr`, :func:`set_clip`).
    """

    rule: str
    scope: str
    step: int
    active: bool = True
    severity: str = WARNING
    first_step: int | None = None
    layers: list[str] = field(default_factory=list)
    metric: str | None = None
    confidence: float = 0.5
    evidence: Evidence = field(default_factory=dict)
    message: str = ""
    remedies: list[str] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        """The stable alert id, ``rule:scope``."""
        return f"{self.rule}:{self.scope}"


def set_lr(value: float, why: str = "") -> dict[str, Any]:
    """A ``set_lr`` suggested action.

    Args:
        value: The learning rate to set.
        why: Appended to the label (e.g. ``"a tenth of 3e-3"``).

    Returns:
        The action dict of the alert spec.
    """
    label = f"set the learning rate to {value:.3g}" + (f" ({why})" if why else "")
    return {"command": "set_lr", "args": {"value": float(value)}, "label": label}


def set_clip(max_norm: float, why: str = "") -> dict[str, Any]:
    """A ``set_clip`` suggested action (gradient-norm clipping).

    Args:
        max_norm: The clipping threshold.
        why: Appended to the label (e.g. ``"the 90th percentile of recent norms"``).

    Returns:
        The action dict of the alert spec.
    """
    label = f"clip gradients at norm {max_norm:.3g}" + (f" ({why})" if why else "")
    return {"command": "set_clip", "args": {"max_norm": float(max_norm)}, "label": label}


# -- context ----------------------------------------------------------------------------------------------------


class Context:
    """Facts established by earlier records, kept current by the engine before each record reaches the rules.

    Attributes:
        step: The latest step seen (``None`` before any).
        hello: The ``hello`` payload (empty until it arrives).
        params: The latest ``layers`` record's ``params`` (dicts with ``name``, ``shape``, ``numel``, ``module``,
            ``module_type``), in model order; the index is the column of ``param_stats`` arrays.
        modules: The latest ``modules`` record's ``modules`` (dicts with ``name``, ``type``), in model order; the
            index is the column of ``act_stats`` arrays.
        lr: The latest ``opt/lr`` (``None`` until known).
        lr_max: The largest ``opt/lr`` seen so far (``None`` until known).
        loss_name: The training-loss metric (``loss`` by convention, else the first name containing ``loss``).
        eval_loss_name: Its eval twin once an eval record names one (``val/loss``, ``val_loss``, ... or ``loss``),
            or a ``metrics`` record does (``val_loss`` logged with ``log()``; then ``eval_in_metrics``).
        ended: An ``end`` record was seen.
    """

    def __init__(self) -> None:
        self.step: int | None = None
        self.hello: dict[str, Any] = {}
        self.params: list[dict[str, Any]] = []
        self.param_names: list[str] = []
        self.modules: list[dict[str, Any]] = []
        self.module_names: list[str] = []
        self.lr: float | None = None
        self.lr_max: float | None = None
        self.loss_name: str | None = None
        self.eval_loss_name: str | None = None
        self.eval_in_metrics = False
        self.ended = False
        self._active: dict[str, str] = {}  # alert id -> severity, kept by the engine
        self._active_rules: collections.Counter[str] = collections.Counter()

    # -- updated by the engine --

    def observe(self, rec: Record) -> None:
        """Update the facts from one record (called by the engine before the rules see it)."""
        if rec.step is not None:
            self.step = rec.step
        kind, d = rec.kind, rec.data
        if kind == protocol.METRICS:
            values = d.get("values")
            if isinstance(values, dict):
                lr = values.get("opt/lr")
                if isinstance(lr, (int, float)) and math.isfinite(lr):
                    self.lr = float(lr)
                    self.lr_max = self.lr if self.lr_max is None else max(self.lr_max, self.lr)
                if self.loss_name is None:
                    self.loss_name = _pick_loss(values)
                if self.eval_loss_name is None and self.loss_name is not None:
                    # An eval loss logged with log() rather than log_eval(): ``val_loss`` next to ``loss``.
                    twin = _eval_twin(self.loss_name, values, prefixed_only=True)
                    if twin is not None:
                        self.eval_loss_name, self.eval_in_metrics = twin, True
        elif kind == protocol.EVAL:
            values = d.get("values")
            if isinstance(values, dict) and self.eval_loss_name is None and self.loss_name is not None:
                self.eval_loss_name = _eval_twin(self.loss_name, values)
        elif kind == protocol.LAYERS:
            params = d.get("params")
            if isinstance(params, list):
                self.params = [p for p in params if isinstance(p, dict)]
                self.param_names = [str(p.get("name", "")) for p in self.params]
        elif kind == protocol.MODULES:
            mods = d.get("modules")
            if isinstance(mods, list):
                self.modules = [m for m in mods if isinstance(m, dict)]
                self.module_names = [str(m.get("name", "")) for m in self.modules]
        elif kind == protocol.HELLO:
            self.hello = d
        elif kind == protocol.END:
            self.ended = True

    def set_active(self, alert_id: str, severity: str | None) -> None:
        """Record an alert as active at ``severity``, or as not active (``None``). Called by the engine."""
        rule = alert_id.partition(":")[0]
        if severity is None:
            if self._active.pop(alert_id, None) is not None:
                self._active_rules[rule] -= 1
                if self._active_rules[rule] <= 0:
                    del self._active_rules[rule]
        else:
            if alert_id not in self._active:
                self._active_rules[rule] += 1
            self._active[alert_id] = severity

    # -- read by rules --

    def is_active(self, rule: str, scope: str | None = None) -> bool:
        """Whether an alert of ``rule`` (for ``scope``, or any scope) is active now."""
        if scope is None:
            return self._active_rules.get(rule, 0) > 0
        return f"{rule}:{scope}" in self._active

    def loss_value(self, rec: Record) -> float | None:
        """The training loss in a ``metrics`` record (may be NaN/Inf), or ``None`` when it has none."""
        if rec.kind != protocol.METRICS or self.loss_name is None:
            return None
        v = (
            rec.data.get("values", {}).get(self.loss_name)
            if isinstance(rec.data.get("values"), dict)
            else None
        )
        return float(v) if isinstance(v, (int, float)) else None

    def eval_loss_value(self, rec: Record) -> float | None:
        """The eval twin of the training loss in an ``eval`` record (or in a ``metrics`` record, for runs that log
        it there), or ``None``."""
        if self.eval_loss_name is None:
            return None
        if rec.kind != protocol.EVAL and not (rec.kind == protocol.METRICS and self.eval_in_metrics):
            return None
        values = rec.data.get("values")
        v = values.get(self.eval_loss_name) if isinstance(values, dict) else None
        return float(v) if isinstance(v, (int, float)) else None

    def module_type(self, name: str) -> str | None:
        """The type of a module (from ``modules``) or of a parameter's module (from ``layers``), or ``None``."""
        for m in self.modules:
            if m.get("name") == name:
                return m.get("type")
        for p in self.params:
            if p.get("name") == name or p.get("module") == name:
                return p.get("module_type")
        return None


def _pick_loss(values: dict[str, Any]) -> str | None:
    if "loss" in values:
        return "loss"
    for p in _TRAIN_PREFIXES:
        if p + "loss" in values:
            return p + "loss"
    for n in values:
        if "loss" in n.lower() and not n.startswith("opt/") and not n.startswith(_EVAL_PREFIXES):
            return n
    return None


def _eval_twin(train_name: str, values: dict[str, Any], *, prefixed_only: bool = False) -> str | None:
    """The eval name that pairs with a train metric (as the viewer's ``RunState.eval_for`` pairs them); with
    ``prefixed_only``, only ``val_loss``-like names (for a ``metrics`` record, where ``loss`` is the train loss)."""
    base = train_name
    for p in _TRAIN_PREFIXES:
        if base.startswith(p):
            base = base[len(p) :]
            break
    for p in _EVAL_PREFIXES:
        if p + base in values:
            return p + base
    if prefixed_only:
        return None
    for n in (base, train_name):
        if n in values:
            return n
    return None


# -- the rule interface -----------------------------------------------------------------------------------------


class Rule:
    """One diagnosis rule: reads some record kinds and reports the alerts that hold now.

    Class attributes:
        name: The stable rule identifier (one of :data:`RULE_NAMES` for the built-in rules).
        kinds: The record kinds :meth:`feed` is called with.
        subordinate_to: Rule names whose active alert explains this rule's: while one is active, the engine caps
            this rule's severity at ``info`` and adds ``caused_by`` to its evidence.
    """

    name: ClassVar[str] = ""
    kinds: ClassVar[frozenset[str]] = frozenset()
    subordinate_to: ClassVar[frozenset[str]] = frozenset()

    def feed(self, record: Record, ctx: Context) -> Iterable[Finding] | None:
        """Called with each record of one of :attr:`kinds`, in order, on the agent thread.

        Args:
            record: The record (``data`` holds numpy arrays for array fields).
            ctx: The facts established so far (already updated with this record).

        Returns:
            Findings for the alerts this record changed or confirmed, or ``None``.
        """
        return None

    def active(self, scope: str, step: int, **fields: Any) -> Finding:
        """A finding that the alert ``name:scope`` holds at ``step`` (keyword fields as in :class:`Finding`)."""
        return Finding(self.name, scope, step, True, **fields)

    def resolved(self, scope: str, step: int) -> Finding:
        """A finding that the alert ``name:scope`` no longer holds at ``step``."""
        return Finding(self.name, scope, step, False)


# -- robust statistics ------------------------------------------------------------------------------------------


class Ema:
    """Exponential moving average with bias correction (the first values are not pulled towards 0).

    Args:
        alpha: Weight of each new value, 0 < alpha <= 1 (``2 / (span + 1)`` for a span).
    """

    __slots__ = ("alpha", "_value", "_weight")

    def __init__(self, alpha: float) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"invalid alpha={alpha!r}: must be in (0, 1]")
        self.alpha = alpha
        self._value = 0.0
        self._weight = 0.0

    def add(self, x: float) -> float:
        """Add a finite value (non-finite ones are ignored) and return the average."""
        if math.isfinite(x):
            a = self.alpha
            self._value = (1 - a) * self._value + a * x
            self._weight = (1 - a) * self._weight + a
        return self.value

    @property
    def value(self) -> float:
        """The average (NaN before any value)."""
        return self._value / self._weight if self._weight > 0 else math.nan


class Window:
    """The last ``size`` finite values with their steps: medians, MADs and slopes over a bounded window.

    Args:
        size: Values kept at most.
    """

    __slots__ = ("size", "_v", "_s")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"invalid size={size!r}: must be >= 1")
        self.size = size
        self._v: collections.deque[float] = collections.deque(maxlen=size)
        self._s: collections.deque[int] = collections.deque(maxlen=size)

    def add(self, x: float, step: int = 0) -> None:
        """Add a value (non-finite ones are ignored)."""
        if math.isfinite(x):
            self._v.append(float(x))
            self._s.append(step)

    def __len__(self) -> int:
        return len(self._v)

    @property
    def full(self) -> bool:
        """Whether ``size`` values are held."""
        return len(self._v) == self.size

    def clear(self) -> None:
        """Forget every value."""
        self._v.clear()
        self._s.clear()

    def array(self) -> np.ndarray:
        """The values, oldest first."""
        return np.fromiter(self._v, dtype=np.float64, count=len(self._v))

    def steps(self) -> np.ndarray:
        """The steps of the values, oldest first."""
        return np.fromiter(self._s, dtype=np.float64, count=len(self._s))

    def median(self) -> float:
        """Median (NaN when empty)."""
        return median(self._v)

    def mad(self) -> float:
        """Median absolute deviation, scaled by 1.4826 to estimate a normal standard deviation (NaN when empty)."""
        return mad(self._v)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile, 0..1 (NaN when empty)."""
        return float(np.quantile(self.array(), q)) if self._v else math.nan

    def last(self) -> float:
        """The newest value (NaN when empty)."""
        return self._v[-1] if self._v else math.nan

    def log_slope(self) -> float:
        """Least-squares slope of ``log10(value)`` against step, per step, over the positive values (NaN with
        fewer than three)."""
        return log_slope(self.steps(), self.array())


def median(x: Iterable[float]) -> float:
    """The median of a few values (NaN when empty); sorting in Python is faster than numpy below ~1,000 values.

    Args:
        x: The values.

    Returns:
        Their median.
    """
    if isinstance(x, np.ndarray) and x.size > 64:
        return float(np.median(x)) if x.size else math.nan
    v = sorted(x)
    n = len(v)
    if n == 0:
        return math.nan
    h = n // 2
    return float(v[h]) if n % 2 else 0.5 * (v[h - 1] + v[h])


def mad(x: Iterable[float]) -> float:
    """Median absolute deviation of ``x``, scaled by 1.4826 (a normal sample's MAD then estimates its std).

    Args:
        x: The values.

    Returns:
        The scaled MAD (NaN when empty).
    """
    if isinstance(x, np.ndarray) and x.size > 64:
        return float(1.4826 * np.median(np.abs(x - np.median(x))))
    v = list(x)
    if not v:
        return math.nan
    m = median(v)
    return 1.4826 * median([abs(a - m) for a in v])


def robust_z(x: float, center: float, spread: float, floor: float = 1e-12) -> float:
    """``(x - center) / spread`` with the spread floored, so that a flat window does not give infinities."""
    return (x - center) / max(spread, floor, abs(center) * 1e-6)


def log_slope(steps: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of ``log10(values)`` against ``steps`` over the positive finite values.

    Args:
        steps: The x values.
        values: The y values (non-positive and non-finite ones are skipped).

    Returns:
        Decades per step, or NaN with fewer than three usable points or a single step.
    """
    ok = np.isfinite(values) & (values > 0)
    if ok.sum() < 3:
        return math.nan
    x = steps[ok].astype(np.float64)
    y = np.log10(values[ok])
    x = x - x.mean()
    denom = float((x * x).sum())
    if denom <= 0:
        return math.nan
    return float((x * (y - y.mean())).sum() / denom)


class Hysteresis:
    """An on/off state with separate thresholds and minimum durations, so an alert does not flap.

    The state turns on after ``min_on`` consecutive updates past ``on``, and off after ``min_off`` consecutive
    updates back past ``off`` (values between the two keep the current state and reset both streaks).

    Args:
        on: Threshold that turns the state on.
        off: Threshold that turns it off (below ``on`` when ``above``; above ``on`` otherwise).
        min_on: Consecutive updates past ``on`` needed to turn on.
        min_off: Consecutive updates past ``off`` needed to turn off.
        above: ``True``: high values are bad (``value >= on`` turns on); ``False``: low values are bad.

    Attributes:
        on: Whether the state is on.
        onset: The step of the first update of the streak that turned it on (``None`` while off).
    """

    __slots__ = ("on_at", "off_at", "min_on", "min_off", "above", "on", "onset", "_streak", "_streak_start")

    def __init__(
        self, on: float, off: float, *, min_on: int = 1, min_off: int = 1, above: bool = True
    ) -> None:
        if (above and off > on) or (not above and off < on):
            raise ValueError(f"invalid thresholds on={on!r} off={off!r} for above={above!r}")
        self.on_at, self.off_at = on, off
        self.min_on, self.min_off = max(1, min_on), max(1, min_off)
        self.above = above
        self.on = False
        self.onset: int | None = None
        self._streak = 0
        self._streak_start: int | None = None

    def _bad(self, value: float) -> bool:
        return value >= self.on_at if self.above else value <= self.on_at

    def _good(self, value: float) -> bool:
        return value <= self.off_at if self.above else value >= self.off_at

    def update(self, value: float, step: int = 0) -> bool:
        """Feed one value (NaN counts as neither bad nor good: it resets the streak).

        Returns:
            Whether the state changed.
        """
        if self.on:
            if not math.isnan(value) and self._good(value):
                self._streak += 1
                if self._streak >= self.min_off:
                    self.on, self.onset, self._streak = False, None, 0
                    return True
            else:
                self._streak = 0
            return False
        if not math.isnan(value) and self._bad(value):
            if self._streak == 0:
                self._streak_start = step
            self._streak += 1
            if self._streak >= self.min_on:
                self.on, self.onset, self._streak = True, self._streak_start, 0
                return True
        else:
            self._streak = 0
        return False

    def reset(self) -> None:
        """Back to off, streaks forgotten."""
        self.on, self.onset, self._streak, self._streak_start = False, None, 0, None

    def force_on(self, step: int) -> bool:
        """Turn on now, without waiting for ``min_on`` (for evidence strong enough on its own).

        Returns:
            Whether the state changed.
        """
        if self.on:
            return False
        onset = self._streak_start if self._streak else step
        self.on, self.onset, self._streak = True, onset, 0
        return True
