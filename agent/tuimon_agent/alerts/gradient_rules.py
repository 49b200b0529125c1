"""Gradient and update rules: ``exploding_gradients``, ``vanishing_gradients`` and ``update_ratio``.

All three read ``param_stats`` records (one per sampled step, every ``stats_every`` steps) and count in *samples*,
so they behave the same with ``stats_every=1`` and ``stats_every=50``. They compare like with like: per-layer
figures are taken over weight matrices only (see :class:`~.layer_common.WeightIndex`), as RMS values
(``grad_norm / sqrt(numel)``) so that big and small layers compare.

``exploding_gradients`` (scope ``global``)
    Statistic: ``x = max(spike, growth - 1)`` in decades, where ``spike = log10(g) - median(log10 g)`` of the
    global gradient norm ``g`` against the previous :data:`BASELINE` samples (at least 5; frozen while the alert is
    on), and ``growth =
    log10(g) - min(log10 g)`` over the run's first 3 samples; a spike counts in full only once ``growth >= 1``
    (a converged run whose tiny norms jump back towards their starting level is not exploding). On when ``x >= 2`` (a 100× spike over the recent
    level, or 1000× the start) for 2 consecutive samples, or at once when ``x >= 3``; critical once ``x >= 4``
    (kept for the episode); off after 5 samples with
    ``x <= 1``. Healthy runs measured grow at most ~1 decade over their start and spike at most ~1 decade over
    their recent median; a diverging learning rate (loss_divergence) ~2.4 decades over the start, and the
    steps before a NaN ~1.8 decades over the recent median for one sample. Layers: the weight matrices whose own gradient norm is the most decades
    above their own baseline. Action: ``set_clip`` at the 90th percentile of the healthy samples' norms, and
    ``set_lr`` at a tenth of the current rate. Subordinate to ``nonfinite`` and ``unnormalized_input``.
``vanishing_gradients`` (scope ``global``)
    Statistic: ``d = median(log10 rms)`` of the first quarter of the weight matrices (model order, at least one)
    minus that of the last quarter, median over the last 5 samples; exact-zero gradients (dead units, unused
    layers) are left out. Healthy networks measured: ``d >= -1.7``. On when ``d <= -3`` (early layers get 1000×
    less) for 2 samples while the training loss is not learning (over at least 20 logged losses, the recent median is
    not 10% below the start) and no layer has half its units dead or saturated (those rules explain it);
    critical when ``d <= -6``; off when ``d >= -2`` for 5 samples. Subordinate to ``nonfinite``, ``dead_units``, ``saturation``, ``unnormalized_input``,
    ``exploding_gradients`` and ``loss_divergence`` (a blown-up tanh RNN stops passing gradient back).
``update_ratio`` (scope ``global``)
    Statistic: the median over weight matrices of ``log10(update_ratio)`` (``‖Δw‖ / ‖w‖`` of the step), median
    over the last 5 samples. Too large: on at ``>= -1`` (each step moves the weights by 10%) for 3 samples,
    ``warning`` (``critical`` at ``>= 0``), off at ``<= -1.5``. Too small: on at ``<= -6`` for 3 samples while the
    learning rate is at least a tenth of its peak (a schedule decaying to zero is healthy), ``info`` only (the
    loss-plateau, vanishing-gradient and dead-unit rules own that warning); off at ``>= -5``. Action: ``set_lr``
    scaled towards a ratio of 1e-3 (at most 10× down, 100× up). Subordinate to the rules that explain it.
"""

from __future__ import annotations

import math

import numpy as np

from .. import protocol
from ..protocol import Record
from .base import CRITICAL, INFO, WARNING, Context, Finding, Hysteresis, Rule, Window, set_clip, set_lr
from .layer_common import RELU_FAMILY, SATURATING, LossTrend, WeightIndex, array, fnum, fpct

BASELINE = 20
"""Samples in the exploding-gradient baseline window."""
STRONG = 3.0
"""Decades of ``x`` that turn ``exploding_gradients`` on at a single sample."""

HIGH = -0.5
"""``log10`` update ratio at or above which (sustained) the steps are too large (healthy runs measured: <= -1.25)."""
LOW = -6.0
"""``log10`` update ratio at or below which (sustained, learning rate not decayed) the steps are too small."""

CLIP_WHY = "the 90th percentile of the healthy gradient norms"


class _LayerHistory:
    """A ring buffer of per-weight-matrix ``log10`` values (samples × layers), reset when the layers change."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = np.zeros((0, 0))
        self.n = 0
        self.i = 0

    def add(self, row: np.ndarray) -> None:
        if self.buf.shape[1] != len(row):
            self.buf = np.full((self.size, len(row)), np.nan)
            self.n = self.i = 0
        self.buf[self.i] = row
        self.i = (self.i + 1) % self.size
        self.n = min(self.n + 1, self.size)

    def median(self, width: int, skip_last: bool = False) -> np.ndarray:
        """Per-column median of the rows held (without the newest one when ``skip_last``)."""
        n = self.n - (1 if skip_last else 0)
        if n <= 0 or self.buf.shape[1] != width:
            return np.full(width, np.nan)
        with np.errstate(all="ignore"):
            if skip_last:
                last = (self.i - 1) % self.size
                keep = [r for r in range(self.n if self.n < self.size else self.size) if r != last]
                rows = self.buf[keep]
            else:
                rows = self.buf[: self.n] if self.n < self.size else self.buf
            ok = np.isfinite(rows).any(axis=0)
            out = np.full(rows.shape[1], np.nan)
            if ok.any():
                out[ok] = np.nanmedian(rows[:, ok], axis=0)
            return out


def _log10(a: np.ndarray) -> np.ndarray:
    """``log10`` of the positive finite entries, NaN elsewhere."""
    out = np.full(a.shape, np.nan)
    ok = np.isfinite(a) & (a > 0)
    out[ok] = np.log10(a[ok])
    return out


class ExplodingGradients(Rule):
    """The global gradient norm spikes 100× above its recent level, or grows 1000× over its early level."""

    name = "exploding_gradients"
    kinds = frozenset({protocol.PARAM_STATS})
    subordinate_to = frozenset({"nonfinite", "unnormalized_input"})

    def __init__(self) -> None:
        self.index = WeightIndex()
        self.base = Window(BASELINE)  # log10 global norm of the previous samples
        self.healthy = Window(50)  # linear global norms of samples without a spike, for the clip value
        self.samples = 0
        self.reference: list[float] = []  # log10 norms of the first 3 samples
        self.recent = Window(5)  # log10 norms, for the evidence
        self.peak = 0.0  # the largest x of this episode
        self.layers = _LayerHistory(BASELINE)
        self.state = Hysteresis(2.0, 1.0, min_on=2, min_off=5)

    def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
        """Read one ``param_stats`` record."""
        step = record.step
        g = record.data.get("global_grad_norm")
        if step is None or not isinstance(g, (int, float)) or not math.isfinite(g) or g <= 0:
            return None
        self.index.update(ctx)
        lg = math.log10(g)
        self.samples += 1
        growth = lg - min(self.reference) if self.reference else math.nan
        spike = lg - self.base.median() if len(self.base) >= 5 else math.nan
        if math.isfinite(growth) and growth < 1.0:
            # A converged run's tiny norms jump back to ordinary ones: only a spike well above the start counts.
            spike = min(spike, growth)
        if len(self.reference) < 3:
            self.reference.append(lg)
        parts = [v for v in (spike, growth - 1.0) if math.isfinite(v)]
        x = max(parts) if parts else math.nan
        # Per-layer: which weight matrices moved most against their own baseline.
        gn = array(record.data, "grad_norm", self.index.n_params or None)
        lrow = _log10(gn[self.index.columns]) if gn is not None and len(self.index.columns) else None
        was_on = self.state.on
        if not self.state.on:  # the baselines stay frozen during an episode
            if lrow is not None:
                self.layers.add(lrow)
            self.base.add(lg, step)
        if not (math.isfinite(x) and x >= 1.0) and not self.state.on:
            self.healthy.add(g, step)
        self.recent.add(lg, step)
        changed = self.state.update(x, step)
        if not self.state.on and math.isfinite(x) and x >= STRONG:
            changed = self.state.force_on(step)
        if not self.state.on:
            self.peak = 0.0
            return [self.resolved("global", step)] if changed else None
        if math.isfinite(x):
            self.peak = max(self.peak, x)
        layers: list[str] = []
        # Against the baseline before this sample (computed only while the alert is on: it costs a median).
        layer_rise = None if lrow is None else lrow - self.layers.median(len(lrow), skip_last=not was_on)
        if layer_rise is not None and np.isfinite(layer_rise).any():
            # The layers within a decade of the worst one (and at least a decade above their own baseline).
            cut = max(1.0, float(np.nanmax(layer_rise)) - 1.0)
            top = np.flatnonzero(np.nan_to_num(layer_rise, nan=-np.inf) >= cut)
            layers = [self.index.names[int(i)] for i in top[:8]]
        # Evidence and severity from smoothed figures: one noisy sample must not flip them back and forth.
        level = 10 ** self.recent.median()
        xs = max(self.peak, 2.0)
        severity = CRITICAL if self.peak >= 4 else WARNING
        onset = self.state.onset if self.state.onset is not None else step
        evidence = {"grad_norm": level, "peak_decades": round(xs, 1)}
        if math.isfinite(spike):
            evidence["baseline"] = 10 ** self.base.median()
        if self.reference:
            evidence["start"] = 10 ** min(self.reference)
        where = f", most in {', '.join(layers[:3])}" if layers else ""
        actions = []
        if len(
            self.healthy
        ):  # however few healthy samples the run had before (1 with stats_every=50 at step 100)
            actions.append(set_clip(self.healthy.quantile(0.9), CLIP_WHY))
        if ctx.lr is not None and ctx.lr > 0:
            actions.append(set_lr(ctx.lr / 10, f"a tenth of {fnum(ctx.lr)}"))
        return [
            self.active(
                "global",
                step,
                severity=severity,
                first_step=onset,
                layers=layers,
                confidence=min(1.0, xs / 4),
                evidence=evidence,
                message=(
                    f"gradients are exploding since step {onset}: the global gradient norm is {fnum(level)} "
                    f"(up to {fnum(10**xs, 2)}× its usual level){where}."
                ),
                remedies=[
                    "Clip gradients (torch.nn.utils.clip_grad_norm_) at about the norm of healthy steps.",
                    "Lower the learning rate, or add a warmup.",
                    "Use ReLU-family activations and a scaled initialization (Kaiming/He, Xavier/Glorot).",
                    "Add normalization layers (BatchNorm, LayerNorm) or residual connections.",
                ],
                actions=actions,
            )
        ]


class VanishingGradients(Rule):
    """The early layers' gradients are orders of magnitude below the late layers' while the loss is not learning."""

    name = "vanishing_gradients"
    kinds = frozenset({protocol.PARAM_STATS, protocol.METRICS, protocol.ACT_STATS})
    subordinate_to = frozenset(
        {
            "nonfinite",
            "dead_units",
            "saturation",
            "unnormalized_input",
            "exploding_gradients",
            "loss_divergence",
        }
    )

    def __init__(self) -> None:
        self.index = WeightIndex()
        self.d = Window(5)
        self.early = Window(20)  # log10 RMS of the early and the late layers, smoothed for the evidence
        self.late = Window(20)
        self.loss = LossTrend()
        self.since: int | None = None  # first sample of the current stretch with d <= -3 (the onset)
        self.modules = _ModuleColumns()
        self.explained = False  # half of some layer's units dead or saturated in the latest act_stats
        self.state = Hysteresis(-3.0, -2.0, min_on=2, min_off=5, above=False)

    def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
        """Read one ``metrics``, ``act_stats`` or ``param_stats`` record."""
        step = record.step
        if step is None:
            return None
        if record.kind == protocol.METRICS:
            self.loss.add(ctx.loss_value(record), step)
            return None
        if record.kind == protocol.ACT_STATS:
            self.modules.update(ctx)
            self.explained = _max_fraction(record, ctx, "dead", self.modules.relu) >= 0.5 or (
                _max_fraction(record, ctx, "saturated", self.modules.saturating) >= 0.5
            )
            return None
        self.index.update(ctx)
        n = self.index.n_params or None
        gn, has = array(record.data, "grad_norm", n), array(record.data, "has_grad", n)
        if gn is None or len(self.index.columns) < 2:
            return None
        cols = self.index.columns
        rms = gn[cols] / self.index.sqrt_numel
        ok = np.isfinite(rms) & (rms > 0)
        if has is not None:
            ok &= has[cols] > 0
        if ok.sum() < 2:
            return None
        lr = np.log10(rms[ok])
        k = max(1, len(lr) // 4)
        early, late = float(np.median(lr[:k])), float(np.median(lr[-k:]))
        self.d.add(early - late, step)
        self.early.add(early, step)
        self.late.add(late, step)
        d = self.d.median()
        self.since = (self.since if self.since is not None else step) if d <= -3.0 else None
        # Judge "the loss is not learning" only on a full window of losses (none logged: on gradients alone).
        unsure = 0 < self.loss.count < LossTrend.RECENT
        blocked = self.explained or unsure or self.loss.improving()
        changed = self.state.update(math.nan if blocked and not self.state.on else d, step)
        if not self.state.on:
            return [self.resolved("global", step)] if changed else None
        names = [self.index.names[i] for i in np.flatnonzero(ok)]
        low = [nm for nm, v in zip(names, lr, strict=True) if v - late <= -3.0][:8]
        onset = min(x for x in (self.state.onset, self.since, step) if x is not None)
        where = ", ".join(low[:3]) if low else ", ".join(names[:k][:3])
        return [
            self.active(
                "global",
                step,
                severity=CRITICAL if d <= -6 else WARNING,
                first_step=onset,
                layers=low or names[:k][:8],
                metric=ctx.loss_name,
                confidence=min(1.0, -d / 6),
                evidence={
                    "decades": round(d, 1),
                    "early_rms": 10 ** self.early.median(),
                    "late_rms": 10 ** self.late.median(),
                    "loss_vs_start": round(self.loss.recent / self.loss.early, 2)
                    if self.loss.known and self.loss.early
                    else "unknown",
                },
                message=(
                    f"gradients vanish in the early layers since step {onset}: {where} get "
                    f"{fnum(10**-d, 2)}× less gradient (RMS) than the last layers, and the loss is not falling."
                ),
                remedies=[
                    "Use ReLU-family activations (ReLU, LeakyReLU, GELU) instead of sigmoid or tanh in deep stacks.",
                    "Use a scaled initialization (Kaiming/He for ReLU, Xavier/Glorot for tanh).",
                    "Add normalization layers (BatchNorm, LayerNorm) or residual connections.",
                    "For recurrent networks, use LSTM/GRU cells rather than a plain RNN.",
                ],
                actions=[],
            )
        ]


class _ModuleColumns:
    """The ``act_stats`` columns of the ReLU-family and of the saturating modules, recomputed when the index changes."""

    def __init__(self) -> None:
        self._key: int | None = None
        self.relu = np.zeros(0, dtype=np.int64)
        self.saturating = np.zeros(0, dtype=np.int64)

    def update(self, ctx: Context) -> None:
        if self._key == id(ctx.modules):
            return
        self._key = id(ctx.modules)
        types = [m.get("type") for m in ctx.modules]
        self.relu = np.asarray([i for i, t in enumerate(types) if t in RELU_FAMILY], dtype=np.int64)
        self.saturating = np.asarray([i for i, t in enumerate(types) if t in SATURATING], dtype=np.int64)


def _max_fraction(record: Record, ctx: Context, key: str, cols: np.ndarray) -> float:
    """The largest ``key`` fraction of an ``act_stats`` record over the columns ``cols`` (0 when none)."""
    a = array(record.data, key, len(ctx.modules) or None)
    if a is None or not len(cols):
        return 0.0
    v = a[cols]
    v = v[np.isfinite(v)]
    return float(v.max()) if len(v) else 0.0


class UpdateRatio(Rule):
    """The weights' update-to-weight ratio stays far outside the sane band around 1e-3."""

    name = "update_ratio"
    kinds = frozenset({protocol.PARAM_STATS, protocol.METRICS})
    subordinate_to = frozenset(
        {
            "nonfinite",
            "exploding_gradients",
            "vanishing_gradients",
            "loss_divergence",
            "loss_plateau",
            "dead_units",
            "saturation",
            "unnormalized_input",
        }
    )

    def __init__(self) -> None:
        self.index = WeightIndex()
        self.u = Window(5)
        self.high = Hysteresis(HIGH, HIGH - 0.5, min_on=3, min_off=3)
        self.low = Hysteresis(LOW, LOW + 1.0, min_on=3, min_off=3, above=False)
        self.loss = LossTrend()
        self.per_layer = np.zeros(0)

    def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
        """Read one ``metrics`` or ``param_stats`` record."""
        step = record.step
        if step is None:
            return None
        if record.kind == protocol.METRICS:
            self.loss.add(ctx.loss_value(record), step)
            return None
        self.index.update(ctx)
        ur = array(record.data, "update_ratio", self.index.n_params or None)
        if ur is None or not len(self.index.columns):
            return None
        lu = _log10(ur[self.index.columns])
        if not np.isfinite(lu).any():
            return None
        self.per_layer = lu
        self.u.add(float(np.nanmedian(lu)), step)
        u = self.u.median()
        if len(self.u) < 3:
            return None
        was = self.high.on or self.low.on
        # Too-large steps are judged against a window of losses (none logged: on the ratio alone), so that a
        # loss that already diverges can take the blame.
        unsure = 0 < self.loss.count < LossTrend.RECENT
        self.high.update(math.nan if unsure and not self.high.on else u, step)
        scheduled_down = ctx.lr is not None and ctx.lr_max is not None and ctx.lr < 0.1 * ctx.lr_max
        self.low.update(math.nan if scheduled_down and not self.low.on else u, step)
        if scheduled_down and self.low.on:
            self.low.reset()
        if not (self.high.on or self.low.on):
            return [self.resolved("global", step)] if was else None
        high = self.high.on
        hyst = self.high if high else self.low
        onset = hyst.onset if hyst.onset is not None else step
        ok = np.isfinite(lu)
        pick = np.flatnonzero(ok & (lu >= HIGH)) if high else np.flatnonzero(ok & (lu <= LOW))
        layers = [self.index.names[i] for i in pick[:8]]
        actions = []
        if ctx.lr is not None and ctx.lr > 0:
            factor = min(100.0, max(0.1, 10 ** (-3.0 - u)))
            actions.append(set_lr(ctx.lr * factor, f"towards an update ratio of 1e-3 from {fnum(10**u, 2)}"))
        if high:
            message = (
                f"each step changes the weights by {fpct(10**u)} of their size since step {onset} "
                "(1e-3 is typical): the learning rate is too high."
            )
            remedies = [
                "Lower the learning rate (an update ratio near 1e-3 is the usual reference).",
                "Add a learning-rate warmup, or clip gradients.",
            ]
            severity = CRITICAL if u >= 0 else WARNING
            if self.loss.rising():  # the loss already diverges: the loss-curve rule owns the warning
                severity = INFO
        else:
            message = (
                f"each step changes the weights by only {fpct(10**u)} of their size since step {onset} "
                "(1e-3 is typical): the learning rate is too low or learning is stuck."
            )
            remedies = [
                "Raise the learning rate (an update ratio near 1e-3 is the usual reference).",
                "Check that the optimizer holds the model's parameters and that gradients reach them.",
            ]
            severity = INFO
        return [
            self.active(
                "global",
                step,
                severity=severity,
                first_step=onset,
                layers=layers,
                confidence=min(1.0, abs(u + 3.0) / 4),
                evidence={
                    "direction": "high" if high else "low",
                    "log10_ratio": round(u, 2),
                    "ratio": 10**u,
                    "lr": ctx.lr if ctx.lr is not None else "unknown",
                    **({"caused_by": "loss_rising"} if high and self.loss.rising() else {}),
                },
                message=message,
                remedies=remedies,
                actions=actions,
            )
        ]


GRADIENT_RULES: list[type[Rule]] = [ExplodingGradients, VanishingGradients, UpdateRatio]
"""The gradient and update rule classes, in the order the engine runs them."""
