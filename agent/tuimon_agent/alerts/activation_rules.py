"""Activation rules: ``dead_units`` (ReLU family) and ``saturation`` (tanh, sigmoid), one alert per module.

Both read the ``dead`` / ``saturated`` fractions of ``act_stats`` records (one sampled training forward every
``stats_every`` steps). A single batch over-counts dead units (a rarely-active unit can be silent for all of a
small batch), so the statistic is the **minimum over the last K samples**: a lower bound on the fraction that was
dead (or saturated) in *every* one of them. ``K = max(2, ceil(128 / batch))`` samples, so that the window spans at
least 128 inputs whatever the batch size (the batch is the first dimension of the latest ``input_stats``; 32 is
assumed without it).

``dead_units`` (scope: the activation module's name)
    On at a sustained dead fraction ``>= 0.6`` (healthy ReLU networks measured: up to ~0.45 in one layer at
    small batches), ``critical`` at ``>= 0.9``; off at ``<= 0.4`` for 3 samples. Subordinate to
    ``unnormalized_input``, ``nonfinite``, ``exploding_gradients`` and ``loss_divergence`` (a huge step kills
    units); while the training loss sits well above where it started (divergence) the alert is ``info``.
``saturation`` (scope: the activation module's name)
    Hidden layers only: a tanh or sigmoid that is the model's last module is its output activation, and a confident
    classifier (or a generator drawing ±1 pixels) saturates it by design. On at a sustained saturated fraction (``|y| > 0.99`` for tanh, within 0.01 of 0 or 1 for sigmoid) ``>= 0.5``,
    ``critical`` at ``>= 0.9``; off at ``<= 0.3`` for 3 samples. Same attribution as ``dead_units``: a diverging
    run pins tanh units at ±1 as a consequence, not a cause.

A cause seen during an episode (an active alert of a ``subordinate_to`` rule, or the loss well above its start)
keeps the episode at ``info`` until it resolves: units saturated or killed by a divergence stay so after the loss
calms down, and are still its consequence. Both wait until :data:`SURE_LOSSES` training losses were logged (when the run logs any) before the first report, so
that a loss diverging from its first steps is seen as the cause; the onset is still the first sample of the window.
"""

from __future__ import annotations

import math

import numpy as np

from .. import protocol
from ..protocol import Record
from .base import CRITICAL, INFO, WARNING, Context, Finding, Hysteresis, Rule
from .layer_common import RELU_FAMILY, SATURATING, LossTrend, array, fpct

SPAN_INPUTS = 128
"""Inputs the dead/saturated window spans at least."""
MIN_SAMPLES = 2
"""Samples the window holds at least."""
MAX_SAMPLES = 32
"""Samples the window holds at most."""
SURE_LOSSES = 10
"""Training losses seen (when any are logged) before an alert is reported."""
DEFAULT_BATCH = 32
"""Batch size assumed when no ``input_stats`` says it."""


class _FractionRule(Rule):
    """A per-module rule on one fraction field of ``act_stats`` (see the subclasses)."""

    field = ""
    types: frozenset[str] = frozenset()
    on_at = 0.5
    off_at = 0.3
    critical_at = 0.9
    skip_output = False
    """Leave out the model's last module (an output activation) when it is of :attr:`types`."""
    kinds = frozenset({protocol.ACT_STATS, protocol.INPUT_STATS, protocol.METRICS})
    subordinate_to = frozenset({"unnormalized_input", "nonfinite", "exploding_gradients", "loss_divergence"})

    def __init__(self) -> None:
        self.states: dict[str, Hysteresis] = {}
        self.caused: dict[str, str] = {}  # module -> the cause that explained its current episode
        self.batch = DEFAULT_BATCH
        self.loss = LossTrend()
        self._key: int | None = None
        self.cols = np.zeros(0, dtype=np.int64)  # act_stats columns of the modules of :attr:`types`
        self.names: list[str] = []
        self.mtypes: list[str] = []
        self.buf = np.zeros((MAX_SAMPLES, 0))  # the last values of each module, newest last (NaN: none yet)
        self.steps = np.zeros((MAX_SAMPLES, 0), dtype=np.int64)
        self.count = np.zeros(0, dtype=np.int64)

    def _k(self) -> int:
        return int(min(MAX_SAMPLES, max(MIN_SAMPLES, math.ceil(SPAN_INPUTS / max(1, self.batch)))))

    def _index(self, ctx: Context) -> None:
        if self._key == id(ctx.modules):
            return
        self._key = id(ctx.modules)
        last = len(ctx.modules) - 1
        cols = [
            i
            for i, m in enumerate(ctx.modules)
            if m.get("type") in self.types and not (self.skip_output and i == last)
        ]
        self.cols = np.asarray(cols, dtype=np.int64)
        self.names = [str(ctx.modules[i].get("name", f"#{i}")) for i in cols]
        self.mtypes = [str(ctx.modules[i].get("type")) for i in cols]
        self.buf = np.full((MAX_SAMPLES, len(cols)), np.nan)
        self.steps = np.zeros((MAX_SAMPLES, len(cols)), dtype=np.int64)
        self.count = np.zeros(len(cols), dtype=np.int64)

    def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
        """Read one ``metrics``, ``input_stats`` or ``act_stats`` record."""
        step = record.step
        if step is None:
            return None
        if record.kind == protocol.METRICS:
            self.loss.add(ctx.loss_value(record), step)
            return None
        if record.kind == protocol.INPUT_STATS:
            shape = record.data.get("shape")
            if isinstance(shape, list) and len(shape) >= 2 and isinstance(shape[0], int) and shape[0] > 0:
                self.batch = shape[0]
            return None
        self._index(ctx)
        values = array(record.data, self.field, len(ctx.modules) or None)
        if values is None or not len(self.cols):
            return None
        v = values[self.cols]
        fin = np.isfinite(v)  # a module not called in this forward has NaN: its window waits
        self.buf[:-1, fin] = self.buf[1:, fin]
        self.buf[-1, fin] = v[fin]
        self.steps[:-1, fin] = self.steps[1:, fin]
        self.steps[-1, fin] = step
        self.count[fin] += 1
        k = self._k()
        recent = self.buf[-k:]
        low = recent.min(axis=0)  # NaN until k values
        on = np.array([self.states[n].on if n in self.states else False for n in self.names], dtype=bool)
        look = np.flatnonzero(fin & (self.count >= k) & ((low >= self.on_at) | on))
        out: list[Finding] = []
        for j in look:
            name = self.names[j]
            st = self.states.get(name)
            if st is None:
                st = self.states[name] = Hysteresis(self.on_at, self.off_at, min_on=1, min_off=3)
            lo = float(low[j])
            changed = st.update(lo, step)
            if changed and st.on:
                st.onset = int(self.steps[-k, j])  # the first sample of the window that showed it
            if st.on:
                if 0 < self.loss.count < SURE_LOSSES:
                    continue  # on, but said only once a few losses tell a divergence (the cause) from this
                onset = st.onset if st.onset is not None else step
                mean = float(recent[:, j].mean())
                out.append(self._finding(name, self.mtypes[j], step, onset, lo, mean, k, ctx))
            elif changed:
                self.caused.pop(name, None)
                out.append(self.resolved(name, step))
        return out or None

    def _finding(
        self, name: str, mtype: str, step: int, onset: int, low: float, mean: float, k: int, ctx: Context
    ) -> Finding:
        raise NotImplementedError

    def _severity(self, name: str, low: float, ctx: Context) -> tuple[str, dict[str, str]]:
        # A cause seen during the episode explains it for the rest of the episode: saturated or dead units stay so
        # after a divergence has calmed down (the damage is done), and are still its consequence.
        cause = self.caused.get(name)
        if cause is None:
            active = sorted(r for r in self.subordinate_to if ctx.is_active(r))
            if active:
                cause = ",".join(active)
            elif self.loss.rising():
                cause = "loss_rising"
            if cause is not None:
                self.caused[name] = cause
        if cause is not None:
            return INFO, {"caused_by": cause}
        return (CRITICAL if low >= self.critical_at else WARNING), {}


class DeadUnits(_FractionRule):
    """A large fraction of a ReLU-family layer's units output zero for every input, sample after sample."""

    name = "dead_units"
    field = "dead"
    types = RELU_FAMILY
    on_at = 0.6
    off_at = 0.4

    def _finding(
        self, name: str, mtype: str, step: int, onset: int, low: float, mean: float, k: int, ctx: Context
    ) -> Finding:
        severity, extra = self._severity(name, low, ctx)
        return self.active(
            name,
            step,
            severity=severity,
            first_step=onset,
            layers=[name],
            confidence=min(1.0, 0.5 + (low - self.on_at) / (2 * (1 - self.on_at) or 1)),
            evidence={"dead": round(low, 3), "dead_mean": round(mean, 3), "samples": k, **extra},
            message=(
                f"{fpct(low)} of the units of {name} ({mtype}) output 0 for every input "
                f"since step {onset}: they are dead and no longer learn."
            ),
            remedies=[
                "Lower the learning rate: one large step can push units into the dead zone for good.",
                "Use LeakyReLU, ELU or GELU instead of ReLU.",
                "Use Kaiming/He initialization and small positive (or zero) biases.",
                "Normalize the inputs and add normalization layers (BatchNorm, LayerNorm) before the activation.",
            ],
            actions=[],
        )


class Saturation(_FractionRule):
    """A large fraction of a tanh or sigmoid layer's outputs sit at the bounds, sample after sample."""

    name = "saturation"
    field = "saturated"
    types = SATURATING
    on_at = 0.5
    off_at = 0.3
    # A confident classifier's output sigmoid, a generator's output tanh: saturated by design.
    skip_output = True

    def _finding(
        self, name: str, mtype: str, step: int, onset: int, low: float, mean: float, k: int, ctx: Context
    ) -> Finding:
        severity, extra = self._severity(name, low, ctx)
        bounds = "±1" if mtype == "Tanh" else "0 or 1"
        return self.active(
            name,
            step,
            severity=severity,
            first_step=onset,
            layers=[name],
            confidence=min(1.0, 0.5 + (low - self.on_at) / (2 * (1 - self.on_at) or 1)),
            evidence={"saturated": round(low, 3), "saturated_mean": round(mean, 3), "samples": k, **extra},
            message=(
                f"{fpct(low)} of the outputs of {name} ({mtype}) sit at {bounds} since step {onset}: "
                "their gradients are nearly zero."
            ),
            remedies=[
                "Use a scaled initialization (Xavier/Glorot for tanh and sigmoid): the pre-activations are too large.",
                "Normalize the inputs and add normalization layers (BatchNorm, LayerNorm) before the activation.",
                "Use ReLU-family activations (ReLU, LeakyReLU, GELU) in hidden layers.",
                "Lower the learning rate if the saturation grew during training.",
            ],
            actions=[],
        )


ACTIVATION_RULES: list[type[Rule]] = [DeadUnits, Saturation]
"""The activation rule classes, in the order the engine runs them."""
