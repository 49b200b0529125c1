"""Numbers for the chart: EMA smoothing and round axis ticks (pure functions, no Textual)."""

from __future__ import annotations

import math

import numpy as np

EMA_WEIGHT = 0.85
"""Weight of the previous smoothed value per chart column (TensorBoard-style, bias-corrected)."""


def ema(values: np.ndarray, weight: float = EMA_WEIGHT) -> np.ndarray:
    """Bias-corrected exponential moving average; NaNs are skipped (they stay NaN and do not reset the average).

    Args:
        values: The values, oldest first.
        weight: How much of the previous average each step keeps (0 = no smoothing).

    Returns:
        A new array of the same length.
    """
    out = np.full(len(values), np.nan)
    acc = 0.0
    n = 0
    for i, v in enumerate(values.tolist()):
        if v != v:  # NaN
            continue
        n += 1
        acc = weight * acc + (1.0 - weight) * v
        out[i] = acc / (1.0 - weight**n)
    return out


def nice_ticks(
    lo: float, hi: float, count: int, *, dense: bool = False, integer: bool = False
) -> list[float]:
    """Round tick positions (1, 2 or 5 times a power of ten apart) within ``[lo, hi]``.

    Args:
        lo: The low end.
        hi: The high end.
        count: About how many ticks.
        dense: When that gives fewer than half of ``count``, use the next finer step (a y axis wants a few).
        integer: Ticks at whole numbers only, at least 1 apart (training steps: ``0 1 2``, never ``0 0.5 1``).

    Returns:
        The positions, ascending.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(1, count)
    if integer:
        raw = max(raw, 1.0)
    mag = 10 ** math.floor(math.log10(raw))
    steps = [m * mag for m in (0.5, 1, 2, 5, 10)]
    if integer:
        steps = [v for v in steps if v >= 1]
    i = next(i for i, v in enumerate(steps) if v >= raw)
    ticks = _ticks(lo, hi, steps[i])
    if dense and len(ticks) < max(2, count // 2):
        ticks = _ticks(lo, hi, steps[i - 1])  # one notch finer
    return ticks


def _ticks(lo: float, hi: float, step: float) -> list[float]:
    first = math.ceil(lo / step) * step
    n = int((hi - first) / step + 1e-9) + 1
    return [round(first + i * step, 12) for i in range(n)]


def log_ticks(lo: float, hi: float, count: int) -> list[float]:
    """Tick positions for a log axis over ``[lo, hi]`` (both > 0): powers of ten when at least two fit, else
    1-2-5 multiples; thinned to at most ``count``."""
    if not (lo > 0 and hi >= lo and math.isfinite(hi)):
        return []
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    decades = [10.0**e for e in range(e0, e1 + 1) if lo <= 10.0**e <= hi]
    ticks = decades
    if len(decades) < 2:
        ticks = [m * 10.0**e for e in range(e0, e1 + 1) for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
    stride = max(1, math.ceil(len(ticks) / max(1, count)))
    return ticks[::stride]


def step_label(step: float) -> str:
    """A step count for an axis: ``950``, ``12k``, ``1.5M``."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(step) >= div:
            return f"{step / div:.4g}{suffix}"
    return f"{step:.0f}"
