"""A bounded, noise-robust summary of the training-loss curve, shared by the loss-curve rules.

Minibatch losses are noisy (batch size 8 easily gives ±50% step to step), so rules never look at single points:
the curve is cut into blocks of :data:`BLOCK` consecutive finite values and each block is reduced to its median.
Rules compare medians of several blocks. Only the latest :data:`MAX_BLOCKS` blocks are kept, plus a few whole-run
references (the first value, the first block's median, the best smoothed level), so memory is constant.
"""

from __future__ import annotations

import collections
import itertools
import math

import numpy as np

from .base import mad, median

BLOCK = 10
"""Finite loss values per block."""
MAX_BLOCKS = 240
"""Blocks kept (2,400 values)."""


class LossCurve:
    """Block medians of one scalar series and whole-run references.

    Attributes:
        first: The first finite value (the loss at initialisation, before any update).
        first_step: Its step.
        first_block: The median of the first block (``NaN`` until it is complete).
        best: The lowest median of three consecutive blocks so far (``NaN`` until three blocks exist).
        best_step: The step at the end of those three blocks.
        points: Finite values seen.
        nonfinite: Non-finite values seen (ignored otherwise).
    """

    def __init__(self) -> None:
        self.first = math.nan
        self.first_step: int | None = None
        self.first_block = math.nan
        self.best = math.nan
        self.best_step: int | None = None
        self.points = 0
        self.nonfinite = 0
        self._buf: list[float] = []
        self._med: collections.deque[float] = collections.deque(maxlen=MAX_BLOCKS)
        self._mad: collections.deque[float] = collections.deque(maxlen=MAX_BLOCKS)
        self._end: collections.deque[int] = collections.deque(maxlen=MAX_BLOCKS)
        self._lr: collections.deque[float] = collections.deque(maxlen=MAX_BLOCKS)
        self.blocks_total = 0

    def add(self, value: float, step: int, lr: float | None = None) -> bool:
        """Add one value.

        Args:
            value: The loss (non-finite values are counted and skipped).
            step: Its step.
            lr: The learning rate at that step, if known.

        Returns:
            Whether a block was completed (rules evaluate then).
        """
        if not math.isfinite(value):
            self.nonfinite += 1
            return False
        if self.points == 0:
            self.first, self.first_step = value, step
        self.points += 1
        self._buf.append(value)
        if len(self._buf) < BLOCK:
            return False
        med = median(self._buf)
        self._med.append(med)
        self._mad.append(mad(self._buf))
        self._buf.clear()
        self._end.append(step)
        self._lr.append(lr if lr is not None else math.nan)
        self.blocks_total += 1
        if self.blocks_total == 1:
            self.first_block = med
        if len(self._med) >= 3:
            smooth = median((self._med[-1], self._med[-2], self._med[-3]))
            if not smooth >= self.best:  # also when best is NaN
                self.best, self.best_step = smooth, step
        return True

    @property
    def blocks(self) -> int:
        """Blocks held."""
        return len(self._med)

    def medians(self, last: int | None = None) -> np.ndarray:
        """Block medians, oldest first (the ``last`` ones only, if given)."""
        arr = np.fromiter(self._med, dtype=np.float64, count=len(self._med))
        return arr[-last:] if last else arr

    def level(self, last: int = 3, skip: int = 0) -> float:
        """The median of ``last`` block medians, ending ``skip`` blocks before the newest (NaN if too few)."""
        n = len(self._med)
        if n < last + skip:
            return math.nan
        return median(itertools.islice(self._med, n - skip - last, n - skip))

    def spread(self, last: int = 10) -> float:
        """The median within-block MAD of the newest ``last`` blocks: the minibatch noise at the current level."""
        if not self._mad:
            return math.nan
        return median(itertools.islice(self._mad, max(0, len(self._mad) - last), None))

    def step_at(self, back: int = 0) -> int | None:
        """The step at the end of the block ``back`` blocks before the newest."""
        if len(self._end) <= back:
            return None
        return self._end[-1 - back]

    def lr_rising(self, over: int = 10, factor: float = 1.2) -> bool:
        """Whether the learning rate grew by ``factor`` or more over the newest ``over`` blocks (a warmup)."""
        if len(self._lr) < 2:
            return False
        old = self._lr[max(0, len(self._lr) - 1 - over)]
        new = self._lr[-1]
        return math.isfinite(old) and math.isfinite(new) and new >= factor * old and new > 0
