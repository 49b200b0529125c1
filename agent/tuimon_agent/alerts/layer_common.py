"""What the per-layer rules share: which tensors are comparable weights, the loss trend, and array reading.

The per-layer rules (:mod:`.nonfinite`, :mod:`.gradient_rules`, :mod:`.activation_rules`, :mod:`.input_rules`)
compare like with like: gradient and update statistics are read only for *weight matrices* (tensors of two or more
dimensions whose module is not an embedding or a normalization layer), because biases, norm-layer gains and
embedding tables (sparse rows) live on other scales. :class:`LossTrend` tells a rule whether the training loss has
converged or has risen well above where it started, so a rule can attribute what it sees to a loss-curve cause.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import Context, Window

EMBEDDING_TYPES = frozenset({"Embedding", "EmbeddingBag"})
"""Module types whose weights are lookup tables (sparse gradients, per-row updates)."""
NORM_TYPES = frozenset(
    {
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "SyncBatchNorm",
        "LayerNorm",
        "GroupNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "RMSNorm",
        "LocalResponseNorm",
    }
)
"""Normalization module types (their gains and shifts are not weight matrices)."""
RELU_FAMILY = frozenset({"ReLU", "ReLU6", "LeakyReLU"})
"""Module types whose ``act_stats`` carry a dead-unit fraction."""
SATURATING = frozenset({"Tanh", "Sigmoid"})
"""Module types whose ``act_stats`` carry a saturated fraction."""


def fnum(x: float, digits: int = 3) -> str:
    """A number as people write it in a message: ``0.021``, ``1500``, ``2.0e7``, ``3.2e-5``.

    Plain notation from 0.001 to 99,999 (``digits`` significant digits, no trailing zeros), otherwise a mantissa
    with ``digits`` significant digits and a bare exponent (no ``+``, no leading zeros).
    """
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    ax = abs(x)
    if ax == 0.0:
        return "0"
    if 1e-3 <= ax < 1e5:
        if ax >= 10 ** (digits - 1):
            return f"{x:.0f}"
        return f"{x:.{digits}g}"
    mantissa, exponent = f"{x:.{max(digits - 1, 1)}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def fpct(fraction: float) -> str:
    """A fraction as a percentage for a message: ``100 %``, ``54 %``, ``3.5 %``, ``0.04 %``."""
    p = float(fraction) * 100.0
    if not math.isfinite(p):
        return f"{p} %"
    ap = abs(p)
    if ap >= 10 or ap == 0:
        return f"{p:.0f} %"
    if ap >= 1:
        return f"{p:.1f} %".replace(".0 %", " %")
    return f"{p:.2g} %"


class WeightIndex:
    """The columns of ``param_stats`` arrays that hold weight matrices, recomputed when the layer index changes.

    Args:
        ctx: The diagnosis context (its ``params`` list is read).
    """

    def __init__(self) -> None:
        self._key: int | None = None
        self.columns: np.ndarray = np.zeros(0, dtype=np.int64)
        """Indices of the weight matrices, in model order."""
        self.names: list[str] = []
        """Their parameter names."""
        self.sqrt_numel: np.ndarray = np.zeros(0)
        """``sqrt(numel)`` of each, to turn an L2 norm into an RMS."""
        self.n_params = 0
        """How many parameters the layer index lists (the expected array length)."""
        self.has_embedding = False
        """Whether the model has an embedding table (its input is then probably token ids)."""
        self.first_is_embedding = False
        """Whether the first parameter in model order belongs to an embedding."""

    def update(self, ctx: Context) -> None:
        """Recompute from ``ctx.params`` when the layer index changed since the last call."""
        if self._key == id(ctx.params):
            return
        self._key = id(ctx.params)
        cols, names, sizes = [], [], []
        for i, p in enumerate(ctx.params):
            shape = p.get("shape")
            mtype = str(p.get("module_type", ""))
            numel = p.get("numel")
            if (
                not isinstance(shape, list)
                or len(shape) < 2
                or mtype in EMBEDDING_TYPES
                or mtype in NORM_TYPES
            ):
                continue
            if not isinstance(numel, int) or numel < 1:
                continue
            cols.append(i)
            names.append(str(p.get("name", f"#{i}")))
            sizes.append(math.sqrt(numel))
        self.columns = np.asarray(cols, dtype=np.int64)
        self.names = names
        self.sqrt_numel = np.asarray(sizes, dtype=np.float64)
        self.n_params = len(ctx.params)
        types = [str(p.get("module_type", "")) for p in ctx.params]
        self.has_embedding = any(t in EMBEDDING_TYPES for t in types)
        self.first_is_embedding = bool(types) and types[0] in EMBEDDING_TYPES


def array(data: dict[str, Any], key: str, n: int | None = None) -> np.ndarray | None:
    """A numeric array field of a record payload as float64, or ``None`` when missing or of the wrong length.

    Args:
        data: The record payload.
        key: The field.
        n: The length it must have (``None``: any).
    """
    v = data.get(key)
    if v is None:
        return None
    try:
        a = np.asarray(v, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if n is not None and len(a) != n:
        return None
    return a


class LossTrend:
    """The training loss's level at the start of the run and recently, from ``metrics`` records.

    ``early`` is the lower quartile of the first :attr:`EARLY` finite losses (a run that diverges from its
    first steps must not set its own reference); ``recent`` the median of the last :attr:`RECENT` of them.
    """

    EARLY = 5
    RECENT = 20

    def __init__(self) -> None:
        self._early: list[float] = []
        self._recent = Window(self.RECENT)
        self._levels: tuple[float, float] | None = None  # (early, recent), cached until the next loss
        self.count = 0
        """Finite losses seen."""

    def add(self, loss: float | None, step: int) -> None:
        """Add one training-loss value (``None`` and non-finite values are ignored)."""
        if loss is None or not math.isfinite(loss):
            return
        self.count += 1
        self._levels = None
        if len(self._early) < self.EARLY:
            self._early.append(loss)
        self._recent.add(loss, step)

    @property
    def known(self) -> bool:
        """Whether enough losses were seen to say anything."""
        return len(self._early) >= 3

    def _level(self) -> tuple[float, float]:
        # Rules ask once per module per sample; the levels change only with a new loss.
        if self._levels is None:
            if self.known:
                self._levels = (float(np.quantile(self._early, 0.25)), self._recent.median())
            else:
                self._levels = (math.nan, math.nan)
        return self._levels

    @property
    def early(self) -> float:
        """The early level (NaN until known)."""
        return self._level()[0]

    @property
    def recent(self) -> float:
        """The recent level (NaN until known)."""
        return self._level()[1]

    def rising(self) -> bool:
        """Whether the recent loss is well above the early one (by more than half its size): divergence."""
        e, r = self.early, self.recent
        return self.known and e != 0 and r - e > 0.5 * abs(e)

    def improving(self) -> bool:
        """Whether the recent loss is at least 10% below the early one (learning is happening)."""
        e, r = self.early, self.recent
        return self.known and e > 0 and r < 0.9 * e

    def converged(self) -> bool:
        """Whether the recent loss fell below half the early one (learning is happening or done)."""
        e, r = self.early, self.recent
        return self.known and e > 0 and r < 0.5 * e
