"""The scalar (loss-curve) rules: ``loss_divergence``, ``loss_plateau``, ``overfitting``, ``underfitting``,
``loss_spike``.

They read the training loss (``ctx.loss_name``: ``loss`` by convention) from ``metrics`` records and its eval twin
(``val_loss``, ``val/loss``, ...) from ``eval`` records. Every comparison is made on block medians
(:class:`~.curve.LossCurve`, blocks of 10 values) so that minibatch noise does not trigger anything, and every
scale is relative to the run's own loss at initialisation (``L0``, the first finite value), so cross-entropy,
MSE and negative losses are handled alike: a threshold such as "0.02·|L0|" reads "2% of the starting loss".
Each rule is silent during a burn-in and uses :class:`~.base.Hysteresis` so that it does not flap. Non-finite
losses are left to the ``nonfinite`` rule.

The exact statistics and thresholds are documented on each class and in the README's "Alerts" section.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np

from .. import protocol
from ..protocol import Record
from .base import (
    CRITICAL,
    INFO,
    WARNING,
    Context,
    Finding,
    Hysteresis,
    Rule,
    Window,
    mad,
    median,
    set_clip,
    set_lr,
)
from .curve import BLOCK, LossCurve
from .layer_common import fpct

LAYER_CAUSES = frozenset(
    {
        "nonfinite",
        "exploding_gradients",
        "vanishing_gradients",
        "dead_units",
        "saturation",
        "unnormalized_input",
    }
)
"""Per-layer rules whose alert explains a loss that does not improve."""


def _scale(*refs: float) -> float:
    """A positive scale for relative thresholds: the largest finite magnitude among ``refs`` (1e-12 at least)."""
    vals = [abs(r) for r in refs if math.isfinite(r)]
    return max([*vals, 1e-12])


def _fmt(x: float) -> str:
    return f"{x:.3g}"


class _LossRule(Rule):
    """Common plumbing: a :class:`LossCurve` of the training loss fed from ``metrics`` records."""

    kinds = frozenset({protocol.METRICS})

    def __init__(self) -> None:
        self.curve = LossCurve()

    def _add_loss(self, record: Record, ctx: Context) -> bool:
        """Add this record's loss to the curve; ``True`` when a block was completed."""
        v = ctx.loss_value(record)
        if v is None or record.step is None:
            return False
        return self.curve.add(v, record.step, ctx.lr)


class LossDivergence(_LossRule):
    """``loss_divergence``: the loss explodes or climbs back persistently: the learning rate is too high.

    Evaluated at every completed block, from the third on. ``L0`` is the median of the first 5 values, ``noise``
    the minibatch noise of a 30-value median (1.25 · the within-block MAD / √30). Bad when either
      - *explosion*: ``level3 - L0 >= 2·|L0|`` (three times the initial loss for a positive loss) and
        ``>= 4·noise``, ``level3`` the median of the last 3 block medians (30 values), or
      - *relapse*: the run had made real progress (``L0 - best >= 0.2·|L0|``, ``best`` the lowest median of 5
        consecutive block medians) and ``level10`` (the last 10 block medians, 100 values) has climbed back more
        than half of it (``level10 >= best + 0.5·(L0 - best)``, and ``level3`` too), by more than 8× the noise of
        a 100-value median, the best having been reached before those 100 values.
    On after 3 bad blocks in a row, off after 5 good ones (score below 0.7 of the threshold). Warning; critical
    when ``level - L0 >= 10·|L0|``. When the global gradient norm (``param_stats``) has grown 100× over the lowest
    of its first three samples, the cause is exploding gradients: the alert stays at info. Suggests ``set_lr`` to a tenth of the
    current learning rate.
    """

    name = "loss_divergence"
    kinds = frozenset({protocol.METRICS, protocol.PARAM_STATS})
    subordinate_to = frozenset({"nonfinite", "exploding_gradients"})

    def __init__(self) -> None:
        super().__init__()
        self.state = Hysteresis(1.0, 0.7, min_on=3, min_off=5)
        self.grad_base = Window(3)
        self.grad_now = math.nan

    def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
        if record.kind == protocol.PARAM_STATS:
            g = record.data.get("global_grad_norm")
            if isinstance(g, (int, float)) and math.isfinite(g):
                if not self.grad_base.full:
                    self.grad_base.add(float(g))
                self.grad_now = float(g)
            return None
        if not self._add_loss(record, ctx) or self.curve.blocks < 3:
            return None
        c = self.curve
        step = c.step_at()
        assert step is not None
        scale = _scale(c.first)
        level = c.level(3)
        noise = 1.25 * c.spread() / math.sqrt(3 * BLOCK)
        excess = (level - c.first) / scale
        if level - c.first < 4 * noise and not self.state.on:  # noise gates the onset, not the way back
            excess = min(excess, 0.0)
        level10 = c.level(10)
        progress = (c.first - c.best) / scale if math.isfinite(c.best) else 0.0
        relapse = 0.0
        old_best = c.best_step is not None and c.best_step <= (
            c.step_at(10) or -1
        )  # not a fall still under way
        if (
            progress >= 0.2
            and old_best
            and math.isfinite(level10)
            and level10 - c.best >= 8 * noise * math.sqrt(3 / 10)
        ):
            relapse = min(level10 - c.best, level - c.best) / (c.first - c.best)
        score = max(excess / 2.0, relapse / 0.5)
        changed = self.state.update(score, step)
        if not self.state.on:
            return [self.resolved("global", step)] if changed else None
        grad_growth = (
            self.grad_now / max(float(self.grad_base.array().min()), 1e-30)
            if len(self.grad_base)
            else math.nan
        )
        severity = CRITICAL if excess >= 10 else WARNING
        evidence: dict[str, Any] = {
            "loss_level": level,
            "loss_initial": c.first,
            "loss_best": c.best,
            "excess": excess,
        }
        if math.isfinite(grad_growth):
            evidence["grad_growth"] = grad_growth
            if grad_growth >= 100:
                severity = INFO
                evidence["caused_by"] = "exploding_gradients"
        what = (
            f"has risen to {_fmt(level)}, {_fmt(level / c.first if c.first else math.inf)}x its initial "
            f"{_fmt(c.first)}"
            if excess >= 2
            else f"has climbed back to {_fmt(level)} from its best {_fmt(c.best)} (initial {_fmt(c.first)})"
        )
        actions = [set_lr(ctx.lr / 10, f"a tenth of {ctx.lr:.3g}")] if ctx.lr else []
        return [
            self.active(
                "global",
                step,
                severity=severity,
                first_step=self.state.onset,
                metric=ctx.loss_name,
                confidence=min(1.0, 0.5 + 0.1 * score),
                evidence=evidence,
                message=f"The training loss {what} since step {self.state.onset}: the learning rate is too high.",
                remedies=[
                    "Lower the learning rate (by 3-10x).",
                    "Add or lengthen a learning-rate warmup.",
                    "Clip gradients.",
                    "Check the data and the loss for outliers.",
                ],
                actions=actions,
            )
        ]


class LossPlateau(_LossRule):
    """``loss_plateau``: the loss stays flat near its initial value: the learning rate is too low, or learning is
    stuck.

    Evaluated at every completed block after a burn-in of 20 blocks (200 values), on ``level`` = the median of the
    last 5 blocks. Stuck when ``improvement = (start - level) / |start|`` (``start`` the median of the first 30
    values) is below 5%, the loss is flat (``level`` and the 5-block median 150 values earlier differ by less than
    2% of ``|start|``) and not above the initial level by more than 10% (that is divergence), while the learning
    rate is not rising (a warmup is not a plateau). Tiny updates (the median ``update_ratio`` of the latest
    ``param_stats`` below 1e-5) make it a warning at once; otherwise (learning stuck with normal steps) it is info,
    and a warning only after 100 blocks (1,000 values). Off when the improvement passes 10% for 2 blocks.
    Suggests ``set_lr`` to 10× the current learning rate when updates are tiny.
    """

    name = "loss_plateau"
    kinds = frozenset({protocol.METRICS, protocol.PARAM_STATS})
    subordinate_to = LAYER_CAUSES | {"loss_divergence"}

    BURN_IN = 20
    TINY_UPDATE = 1e-5

    def __init__(self) -> None:
        super().__init__()
        self.state = Hysteresis(0.05, 0.10, min_on=2, min_off=2, above=False)
        self.update_ratio = math.nan

    def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
        if record.kind == protocol.PARAM_STATS:
            ur = record.data.get("update_ratio")
            if isinstance(ur, np.ndarray) and ur.size:
                finite = ur[np.isfinite(ur)]
                if finite.size:
                    self.update_ratio = float(np.median(finite))
            return None
        if not self._add_loss(record, ctx):
            return None
        c = self.curve
        step = c.step_at()
        assert step is not None
        if c.blocks_total < self.BURN_IN or c.blocks < 20:
            return None
        scale = _scale(c.start)
        level = c.level(5)
        improvement = (c.start - level) / scale
        drift = abs(c.level(5, skip=15) - level) / scale
        flat = drift < 0.02 and improvement > -0.1 and not c.lr_rising()
        value = improvement if flat or self.state.on else math.nan
        changed = self.state.update(value, step)
        if not self.state.on:
            return [self.resolved("global", step)] if changed else None
        tiny = self.update_ratio < self.TINY_UPDATE
        long = c.blocks_total >= 100
        severity = WARNING if tiny or long else INFO
        evidence: dict[str, Any] = {
            "loss_level": level,
            "loss_initial": c.start,
            "improvement": improvement,
        }
        if math.isfinite(self.update_ratio):
            evidence["update_ratio"] = self.update_ratio
        if ctx.lr is not None:
            evidence["lr"] = ctx.lr
        why = (
            f"with tiny updates (median update/weight {self.update_ratio:.1e}): the learning rate is too low"
            if tiny
            else "with normal-sized updates: learning is stuck"
        )
        actions = [set_lr(ctx.lr * 10, f"10x {ctx.lr:.3g}")] if tiny and ctx.lr else []
        onset = c.first_step if improvement < 0.05 else self.state.onset
        return [
            self.active(
                "global",
                step,
                severity=severity,
                first_step=onset,
                metric=ctx.loss_name,
                confidence=0.9 if tiny else 0.6,
                evidence=evidence,
                message=(
                    f"The training loss has stayed flat at {_fmt(level)} (initial {_fmt(c.start)}, "
                    f"{fpct(improvement)} better) since step {onset} {why}."
                ),
                remedies=[
                    "Raise the learning rate (try 3-10x), or run a learning-rate range test.",
                    "Check that the optimizer holds the model's parameters and that gradients reach them.",
                    "Check the labels and the loss function.",
                ],
                actions=actions,
            )
        ]


class _EvalRule(_LossRule):
    """Common plumbing for rules that compare the training loss with its eval twin."""

    kinds = frozenset({protocol.METRICS, protocol.EVAL})

    def __init__(self) -> None:
        super().__init__()
        self.evals: collections.deque[tuple[int, float, float]] = collections.deque(maxlen=64)
        """(step, eval loss, train level at that step)."""
        self.val_first = math.nan

    def _add_eval(self, record: Record, ctx: Context) -> bool:
        v = ctx.eval_loss_value(record)
        if v is None or record.step is None or not math.isfinite(v):
            return False
        train = self.curve.level(1) if self.curve.blocks else math.nan
        if not math.isfinite(self.val_first):
            self.val_first = v
        self.evals.append((record.step, v, train))
        return True


class Overfitting(_EvalRule):
    """``overfitting``: the eval loss rises for several evaluations while the training loss does not.

    At each eval record with ``val`` its loss: ``val_min`` is the lowest eval loss so far (its step and the train
    level then are kept), ``recent`` the median of the last 3 evals, ``rise = recent - val_min``, ``noise`` 5× the
    MAD of successive eval differences / √2 (one eval's noise; the minimum of many noisy evals sits
    a few of them below the truth). ``gain = L0 - val_min`` is what the model had gained on validation (``L0``
    the initial training loss stands in for the eval loss at initialisation). Bad when at least 3 evals follow
    the minimum, ``rise >= 5%`` of ``gain`` (the model has given back a twentieth of what it had learnt that
    generalises), ``rise >= 5%`` of ``|val_min|``, ``rise > noise``, and the training loss has not risen since
    (``train_now - train_at_min <= 2%`` of ``max(|L0|, |first eval|)``). Score ``rise / (5% of gain)``; on after
    2 bad evals, off after 3 evals below half the threshold. Warning.
    """

    name = "overfitting"
    subordinate_to = frozenset({"nonfinite", "exploding_gradients", "loss_divergence"})

    def __init__(self) -> None:
        super().__init__()
        self.state = Hysteresis(1.0, 0.5, min_on=2, min_off=3)
        self.val_min = math.inf
        self.val_min_step = 0
        self.train_at_min = math.nan
        self.evals_since_min = 0

    def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
        if record.kind == protocol.METRICS:
            self._add_loss(record, ctx)
            if not ctx.eval_in_metrics:
                return None
        if not self._add_eval(record, ctx):
            return None
        step, val, train = self.evals[-1]
        if val < self.val_min:
            self.val_min, self.val_min_step, self.train_at_min, self.evals_since_min = val, step, train, 0
            score = 0.0
        else:
            self.evals_since_min += 1
            score = self._score(train)
        changed = self.state.update(score, step)
        if not self.state.on:
            return [self.resolved("global", step)] if changed else None
        recent = median([e[1] for e in list(self.evals)[-3:]])
        return [
            self.active(
                "global",
                step,
                severity=WARNING,
                first_step=self.val_min_step,
                metric=ctx.eval_loss_name,
                confidence=min(1.0, 0.5 + 0.15 * score),
                evidence={
                    "val_min": self.val_min,
                    "val_min_step": self.val_min_step,
                    "val_now": recent,
                    "train_now": train,
                    "gap": recent - train,
                },
                message=(
                    f"The validation loss has risen from {_fmt(self.val_min)} at step {self.val_min_step} to "
                    f"{_fmt(recent)} while the training loss kept falling ({_fmt(train)}): the model overfits."
                ),
                remedies=[
                    f"Keep the checkpoint from step {self.val_min_step} (early stopping).",
                    "Add regularization: weight decay, dropout, data augmentation.",
                    "Get more training data, or use a smaller model.",
                ],
            )
        ]

    def _score(self, train: float) -> float:
        if self.evals_since_min < 3 or len(self.evals) < 4:
            return 0.0
        vals = np.array([e[1] for e in self.evals])
        recent = median(vals[-3:])
        rise = recent - self.val_min
        scale = _scale(self.curve.first, self.val_first)
        # Eval noise: the MAD of successive differences / √2 estimates one eval's standard deviation, and the
        # lowest of many noisy evals sits a few of them below the truth.
        noise = 5 * mad(np.diff(vals).tolist()) / math.sqrt(2) if len(vals) >= 4 else 0.0
        train_rose = (
            math.isfinite(train)
            and math.isfinite(self.train_at_min)
            and train - self.train_at_min > 0.02 * scale
        )
        # What the model had gained on validation: from the initial loss (the eval loss at initialisation is not
        # recorded; the training loss then is its estimate) down to the best eval.
        gain = self.curve.first - self.val_min
        if not gain > 0 or rise < 0.05 * abs(self.val_min) or rise <= noise or train_rose:
            return 0.0
        return rise / (0.05 * gain)


class Underfitting(_EvalRule):
    """``underfitting``: both the training and the eval loss stay high and flat.

    Evaluated at each eval record after a burn-in of 30 blocks (300 values) and 6 evals. With ``level`` the median
    of the last 10 blocks (100 values), ``noise`` the minibatch noise of the difference of two such levels
    (1.25 · within-block MAD · √2 / 10) and ``enoise`` one eval's noise (MAD of successive eval differences / √2),
    bad when: the training loss has improved by less than 40% of ``|start|``; it has converged rather than slowed
    (over the last fifth of the run, at least 20 blocks, it improved by less than 3% of ``|start|`` and less than
    10% of its whole improvement, where a steady linear decrease gives 20%, both after adding ``noise``: noise
    can only keep the rule quiet); the learning rate is not rising; the eval loss is flat too (the medians of the
    last 3 evals and of the 3 before differ by less than 5% of ``|start|`` after adding ``enoise``) and high
    (above 60% of ``|start|``); and there is no
    large generalisation gap (``val - train < 10%`` of ``|start|`` plus ``2·enoise``: that would be overfitting).
    On after 4 bad evals in a row (a slow phase of a learning run is not underfitting), off after 2 good ones.
    Warning.
    """

    name = "underfitting"
    subordinate_to = LAYER_CAUSES | {"loss_plateau", "loss_divergence", "overfitting"}

    BURN_IN = 30

    def __init__(self) -> None:
        super().__init__()
        self.state = Hysteresis(1.0, 0.5, min_on=4, min_off=2)

    def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
        if record.kind == protocol.METRICS:
            self._add_loss(record, ctx)
            if not ctx.eval_in_metrics:
                return None
        if not self._add_eval(record, ctx):
            return None
        c = self.curve
        step = record.step
        assert step is not None
        ok = c.blocks_total >= self.BURN_IN and c.blocks >= 30 and len(self.evals) >= 6
        if not ok:
            return None
        scale = _scale(c.start)
        level = c.level(10)
        noise = 1.25 * c.spread() * math.sqrt(2) / 10 / scale
        improvement = (c.start - level) / scale
        w = min(max(c.blocks_total // 5, 20), c.blocks - 10)
        recent_drop = (c.level(10, skip=w) - level) / scale  # improvement over the last fifth of the run
        # Noise can only keep the rule quiet: flat means flat even allowing for the noise.
        flat = abs(recent_drop) + noise < 0.03 and recent_drop + noise < 0.1 * improvement
        evals = [e[1] for e in self.evals]
        enoise = mad(np.diff(evals[-16:]).tolist()) / math.sqrt(2) / scale
        val_now = median(evals[-3:])
        val_flat = abs(median(evals[-6:-3]) - val_now) / scale + enoise < 0.05
        gap = (val_now - level) / scale
        bad = (
            improvement < 0.4
            and flat
            and not c.lr_rising()
            and val_flat
            and val_now > 0.6 * c.start
            and gap < 0.1 + 2 * enoise
        )
        changed = self.state.update(1.0 if bad else 0.0, step)
        if not self.state.on:
            return [self.resolved("global", step)] if changed else None
        return [
            self.active(
                "global",
                step,
                severity=WARNING,
                first_step=self.state.onset,
                metric=ctx.loss_name,
                confidence=0.7,
                evidence={
                    "loss_level": level,
                    "loss_initial": c.start,
                    "improvement": improvement,
                    "val_now": val_now,
                    "gap": val_now - level,
                },
                message=(
                    f"The training loss ({_fmt(level)}) and the validation loss ({_fmt(val_now)}) have stayed "
                    f"high and flat since step {self.state.onset}, only {fpct(improvement)} below the initial "
                    f"{_fmt(c.start)}: the model underfits."
                ),
                remedies=[
                    "Give the model more capacity (wider or deeper layers).",
                    "Train longer, or with a higher learning rate.",
                    "Reduce regularization (weight decay, dropout).",
                    "Check the features: the inputs may not carry the signal.",
                ],
            )
        ]


class LossSpike(_LossRule):
    """``loss_spike``: an isolated spike much larger than the recent robust spread.

    Each finite value ``x`` is compared with the previous 64 values (from 32 on; the baseline is refreshed every
    4 values), with median ``m``. When they are all positive the comparison is on log scale (minibatch noise is
    multiplicative): a candidate when ``log x - median(log) >= 6·max(MAD(log), 0.05)`` and ``x >= 3·m``.
    Otherwise (losses that reach 0 or below) on linear scale: ``x - m >= 10·MAD`` and ``x - m >= 0.25·max(|L0|,
    |m|)``. It is a spike, not a level shift, when the median of the next 5 values is back within 3 MADs of the
    baseline (a level shift is ``loss_divergence``'s). Info; warning when the spike is huge: ``x - m >=
    2·max(|L0 - m|, |m|)`` (more than twice the way back to the initial loss). Resolved 300 values after the
    latest spike. Suggests ``set_clip`` at the 90th percentile of the
    recent global gradient norms when ``param_stats`` are recorded.
    """

    name = "loss_spike"
    kinds = frozenset({protocol.METRICS, protocol.PARAM_STATS})
    subordinate_to = frozenset({"nonfinite", "exploding_gradients", "loss_divergence"})

    WINDOW = 64
    AFTER = 5
    QUIET = 300

    def __init__(self) -> None:
        super().__init__()
        self.window = Window(self.WINDOW)
        self.pending: tuple[int, float, float, float, list[float]] | None = None
        self.spikes: collections.deque[int] = collections.deque(maxlen=8)  # value index of recent spikes
        self.index = 0
        self.baseline: tuple[float, float, bool, float, float] = (
            math.nan,
            math.nan,
            False,
            math.nan,
            math.nan,
        )
        self.baseline_at = 0
        self.grad = Window(20)
        self.active_since: int | None = None
        self.last: dict[str, Any] = {}

    def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
        if record.kind == protocol.PARAM_STATS:
            g = record.data.get("global_grad_norm")
            if isinstance(g, (int, float)):
                self.grad.add(float(g))
            return None
        x = ctx.loss_value(record)
        step = record.step
        if x is None or step is None or not math.isfinite(x):
            return None
        self.curve.add(x, step, ctx.lr)
        self.index += 1
        out: list[Finding] = []
        if self.pending is not None:  # a candidate waits for the next values: back to its level, or a shift?
            pstep, px, m, back, after = self.pending
            after.append(x)
            if len(after) >= self.AFTER:
                self.pending = None
                if median(after) <= back:
                    out.append(self._spike(pstep, px, m, ctx))
        elif len(self.window) >= 32:
            if self.index >= self.baseline_at:  # the robust baseline moves slowly: refresh it every 4 values
                self.baseline = self._baseline()
                self.baseline_at = self.index + 4
            m, spread, logs, lm, lmad = self.baseline
            if logs:
                if x >= 3 * m and math.log(x) - lm >= 6 * lmad:
                    self.pending = (step, x, m, math.exp(lm + 3 * lmad), [])
            elif x - m >= 10 * max(spread, 1e-12) and x - m >= 0.25 * max(abs(self.curve.first), abs(m)):
                self.pending = (step, x, m, m + 3 * spread, [])
        self.window.add(x, step)
        if self.active_since is not None and self.spikes and self.index - self.spikes[-1] >= self.QUIET:
            self.active_since = None
            out.append(self.resolved("global", step))
        return out or None

    def _baseline(self) -> tuple[float, float, bool, float, float]:
        """(median, MAD, on log scale?, median of logs, MAD of logs floored at 0.05) of the window."""
        vals = self.window.array()
        m, spread = median(vals.tolist()), mad(vals.tolist())
        if vals.min() > 0:
            logs = np.log(vals).tolist()
            return m, spread, True, median(logs), max(mad(logs), 0.05)
        return m, spread, False, math.nan, math.nan

    def _spike(self, step: int, x: float, m: float, ctx: Context) -> Finding:
        self.spikes.append(self.index)
        recent = sum(1 for i in self.spikes if self.index - i < self.QUIET)
        first = self.curve.first if math.isfinite(self.curve.first) else m
        big = x - m >= 2 * max(abs(first - m), abs(m))
        severity = WARNING if big else INFO
        spread = self.baseline[1]
        if self.active_since is None:
            self.active_since = step
        actions = []
        if len(self.grad) >= 3:
            clip = self.grad.quantile(0.9)
            if math.isfinite(clip) and clip > 0:
                actions.append(set_clip(clip, "the 90th percentile of recent gradient norms"))
        return self.active(
            "global",
            step,
            severity=severity,
            first_step=self.active_since,
            metric=ctx.loss_name,
            confidence=min(1.0, 0.4 + 0.2 * recent),
            evidence={
                "spike": x,
                "spike_step": step,
                "median": m,
                "mad": spread,
                "z": (x - m) / max(spread, 1e-12),
                "spikes_recent": recent,
            },
            message=(
                f"The training loss spiked to {_fmt(x)} at step {step}, {(x - m) / max(spread, 1e-12):.0f} robust "
                f"deviations above its recent median {_fmt(m)}"
                + (f" ({recent} spikes in the last {self.QUIET} values)." if recent > 1 else ".")
            ),
            remedies=[
                "Clip gradients.",
                "Lower the learning rate, or lengthen its warmup.",
                "Look for bad samples in the batch of that step.",
            ],
            actions=actions,
        )


LOSS_RULES: list[type[Rule]] = [LossDivergence, LossPlateau, Overfitting, Underfitting, LossSpike]
"""The loss-curve rule classes."""

__all__ = ["BLOCK", "LOSS_RULES", "LossDivergence", "LossPlateau", "LossSpike", "Overfitting", "Underfitting"]
