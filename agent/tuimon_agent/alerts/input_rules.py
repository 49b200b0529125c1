"""The ``unnormalized_input`` rule: the model's input is far from zero-mean, unit-scale.

Statistic
    From each ``input_stats`` record (per channel — dim 1 — mean, std, min and max of the first tensor argument of
    a sampled training forward): the per-channel scale ``rms = sqrt(mean² + std²)`` over the channels that are not
    identically zero. The input is unnormalized when any of:

    - **large**: the median channel's ``rms >= 10`` or the largest channel's ``rms >= 100`` (0–255 pixels have
      ``rms`` ≈ 120; standardized inputs ≈ 1, [0, 1] images ≈ 0.4);
    - **tiny**: every channel's ``rms <= 1e-3``;
    - **mixed scales**: the largest channel's ``rms`` is ``>= 1000×`` the median channel's;
    - **moderate** (``info`` only): the median channel's ``rms >= 3`` (e.g. raw 0–16 counts: trainable, but
      slower and more fragile than standardized inputs).
Exemptions
    Token ids are not features: when the model's first parameter belongs to an ``Embedding`` (or the model has an
    embedding and the input holds non-negative integers only), the rule stays silent.
Severity and hysteresis
    ``critical`` when the median channel's ``rms >= 100``, ``info`` when only moderate, else ``warning``; also
    ``info`` when the model's first module is affine (Linear, Conv) or a norm layer and its output, in the same
    forward, has an RMS within :data:`ABSORBED` (healthy first layers measured: 0.09–0.6; fed 0–255 pixels: 70 and
    more): the model rescales its input itself (``x / 255`` inside ``forward``, an input BatchNorm). On at the first sample (the input's
    scale is a property of the data pipeline, and every later symptom — huge first gradients, dead units — follows
    within a step or two); off after 3 consecutive normalized samples. ``dead_units``, ``saturation`` and
    ``exploding_gradients`` are subordinate to it.
"""

from __future__ import annotations

import math

import numpy as np

from .. import protocol
from ..protocol import Record
from .base import CRITICAL, INFO, WARNING, Context, Finding, Hysteresis, Rule
from .layer_common import NORM_TYPES, WeightIndex, array, fnum

LARGE = 10.0
"""Median channel RMS at or above which the input is too large."""
LARGE_MAX = 100.0
"""Largest channel RMS at or above which the input is too large."""
MODERATE = 3.0
"""Median channel RMS at or above which (below :data:`LARGE`) the input is worth an ``info`` alert."""
CRITICAL_RMS = 100.0
"""Median channel RMS at or above which the alert is critical."""
TINY = 1e-3
"""Largest channel RMS at or below which the input is too small."""
SCALE_FOLLOWING = frozenset({"Linear", "Conv1d", "Conv2d", "Conv3d"}) | NORM_TYPES
"""First-module types whose output scale follows their input's (affine maps and norm layers; not RNNs, bounded)."""
ABSORBED = (1e-2, 3.0)
"""Output RMS range of that first module within which the model is taken to rescale its input itself."""
SPREAD = 1000.0
"""Largest over median channel RMS at or above which the channels are on different scales."""


def assess(data: dict[str, object]) -> dict[str, float | int | str] | None:
    """Judge one ``input_stats`` payload.

    Args:
        data: The payload (``mean``, ``std``, ``min``, ``max`` arrays of equal length).

    Returns:
        The evidence when the input is unnormalized (with ``problem`` = ``large``, ``tiny`` or ``mixed_scales``),
        an empty dict when it is normalized, ``None`` when the payload cannot be read.
    """
    mean, std = array(data, "mean"), array(data, "std")
    lo, hi = array(data, "min"), array(data, "max")
    if mean is None or std is None or lo is None or hi is None:
        return None
    n = len(mean)
    if n == 0 or len(std) != n or len(lo) != n or len(hi) != n:
        return None
    rms = np.sqrt(mean * mean + std * std)
    ok = np.isfinite(rms) & (rms > 0)
    if not ok.any():
        return None
    r = rms[ok]
    med, top = float(np.median(r)), float(r.max())
    evidence: dict[str, float | int | str] = {
        "mean": float(np.median(mean[ok])),
        "std": float(np.median(std[ok])),
        "min": float(np.nanmin(lo[ok])),
        "max": float(np.nanmax(hi[ok])),
        "rms": med,
        "rms_max": top,
        "channels": int(ok.sum()),
    }
    if med >= LARGE:
        evidence["problem"] = "large"
    elif len(r) >= 2 and top >= SPREAD * med:
        evidence["problem"] = "mixed_scales"
        evidence["scale_ratio"] = top / med
    elif top >= LARGE_MAX:
        evidence["problem"] = "large"
    elif top <= TINY:
        evidence["problem"] = "tiny"
    elif med >= MODERATE:
        evidence["problem"] = "moderate"
    else:
        return {}
    return evidence


def _integral(data: dict[str, object]) -> bool:
    lo, hi, mean = array(data, "min"), array(data, "max"), array(data, "mean")
    if lo is None or hi is None or mean is None:
        return False
    vals = np.concatenate([lo, hi])
    return bool(np.isfinite(vals).all() and (vals >= 0).all() and (vals == np.round(vals)).all())


class UnnormalizedInput(Rule):
    """The model's input statistics are far from normalized (huge, tiny, or channels on different scales)."""

    name = "unnormalized_input"
    kinds = frozenset({protocol.INPUT_STATS, protocol.ACT_STATS})

    def __init__(self) -> None:
        self.index = WeightIndex()
        self.state = Hysteresis(1.0, 0.0, min_on=1, min_off=3)
        self.evidence: dict[str, float | int | str] = {}
        self.first: tuple[int, str, float] | None = (
            None  # (step, module, output RMS) of the first affine module
        )

    def _first_layer(self, record: Record, ctx: Context) -> None:
        """Remember the output scale of the model's first module when it is affine or a norm layer."""
        if not ctx.modules or ctx.modules[0].get("type") not in SCALE_FOLLOWING:
            self.first = None
            return
        mean, std = array(record.data, "mean", len(ctx.modules)), array(record.data, "std", len(ctx.modules))
        if mean is None or std is None or record.step is None:
            return
        rms = math.sqrt(mean[0] ** 2 + std[0] ** 2)
        if math.isfinite(rms):
            self.first = (record.step, str(ctx.modules[0].get("name")), rms)

    def feed(self, record: Record, ctx: Context) -> list[Finding] | None:
        """Read one ``act_stats`` or ``input_stats`` record."""
        step = record.step
        if step is None:
            return None
        if record.kind == protocol.ACT_STATS:  # the same forward's act_stats come just before its input_stats
            self._first_layer(record, ctx)
            return None
        self.index.update(ctx)
        if self.index.first_is_embedding or (self.index.has_embedding and _integral(record.data)):
            return None  # token ids feed an embedding: their scale means nothing
        ev = assess(record.data)
        if ev is None:
            return None
        if ev and (not self.state.on or ev.get("problem") != self.evidence.get("problem")):
            # The episode keeps the numbers of the batch that showed it: the next batches' near-zero channel
            # means would otherwise "move by a decade" and re-send the alert at every sample.
            self.evidence = ev
        changed = self.state.update(1.0 if ev else 0.0, step)
        if not self.state.on:
            return [self.resolved("global", step)] if changed else None
        ev = self.evidence
        onset = self.state.onset if self.state.onset is not None else step
        problem = str(ev.get("problem"))
        shape = record.data.get("shape")
        where = f"the input {tuple(shape)}" if isinstance(shape, list) else "the input"
        if problem in ("large", "moderate"):
            what = (
                f"values span [{fnum(float(ev['min']))}, {fnum(float(ev['max']))}] with mean "
                f"{fnum(float(ev['mean']))} and std {fnum(float(ev['std']))}"
            )
        elif problem == "tiny":
            what = f"every channel's scale is below {fnum(TINY)} (median {fnum(float(ev['rms']))})"
        else:
            what = (
                f"the largest channel's scale ({fnum(float(ev['rms_max']))}) is "
                f"{fnum(float(ev.get('scale_ratio', 0)))}× the median channel's"
            )
        rms = float(ev["rms"])
        severity = CRITICAL if problem == "large" and rms >= CRITICAL_RMS else WARNING
        if problem == "moderate":
            severity = INFO
        ev = dict(ev)
        first = self.first
        if first is not None and first[0] == step and ABSORBED[0] <= first[2] <= ABSORBED[1]:
            # The model's first layer already brings the input back to scale (it normalizes inside forward, or
            # starts with a norm layer): worth knowing, not a warning.
            severity = INFO
            ev["absorbed_by"] = first[1]
            ev["first_layer_rms"] = first[2]
            what += f"; {first[1]} brings it back to scale (RMS {fnum(first[2])}), so the model may rescale it itself"
        return [
            self.active(
                "global",
                step,
                severity=severity,
                first_step=onset,
                layers=[],
                confidence=min(1.0, 0.6 + 0.1 * abs(math.log10(max(rms, 1e-12)))),
                evidence=ev,
                message=f"{where} is not normalized since step {onset}: {what} (expected mean ≈ 0, std ≈ 1).",
                remedies=[
                    "Standardize the inputs: subtract the training set's per-channel mean and divide by its std "
                    "(e.g. torchvision.transforms.Normalize).",
                    "Scale 8-bit pixels to [0, 1] (divide by 255) before normalizing.",
                    "Bring features measured in different units to a common scale (StandardScaler).",
                    "Add a normalization layer (BatchNorm, LayerNorm) at the model's input.",
                ],
                actions=[],
            )
        ]


INPUT_RULES: list[type[Rule]] = [UnnormalizedInput]
"""The input rule classes."""
