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
FIRST = 5
"""Values whose median is the initial loss."""
BEST_OF = 5
"""Consecutive block medians whose median is a candidate for the best level."""


class LossCurve:
    """Block medians of one scalar series and whole-run references.

    Attributes:
        first: The loss at initialisation: the median of the first :data:`FIRST` finite values (a single
            minibatch loss is too noisy a reference; ``NaN`` until they exist), or the very first value when that
            median is already 10 times larger (a loss that explodes within its first steps).
        first_step: The step of the first finite value.
        first_block: The median of the first block (``NaN`` until it is complete).
        start: The median of the first 3 block medians (30 values; ``NaN`` until they exist): the starting level
            for "has it improved at all" questions, robust to minibatch noise.
        best: The lowest median of :data:`BEST_OF` consecutive block medians so far (``NaN`` until they exist).
        best_step: The step at the end of those blocks.
        points: Finite values seen.
        nonfinite: Non-finite values seen (ignored otherwise).
    """

    def __init__(self) -> None:
        self.first = math.nan
        self.first_step: int | None = None
        self.first_block = math.nan
        self.start = math.nan
        self.best = math.nan
        self.best_step: int | None = None
        self.points = 0
        self._v1 = math.nan
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
            self.first_step = step
        self.points += 1
        self._buf.append(value)
        if self.points == 1:
            self._v1 = value
        if self.points == FIRST:
            self.first = median(self._buf)
            if self.first - self._v1 >= 9 * abs(self._v1):
                # The loss exploded within the first steps: only the value before any update is a reference.
                self.first = self._v1
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
        elif self.blocks_total == 3:
            self.start = median(self._med)
        if len(self._med) >= BEST_OF:
            smooth = median(itertools.islice(self._med, len(self._med) - BEST_OF, None))
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

    def lr_rising(self, over: int = 20, factor: float = 1.05) -> bool:
        """Whether the learning rate grew by ``factor`` or more over the newest ``over`` blocks (a warmup)."""
        if len(self._lr) < 2:
            return False
        old = self._lr[max(0, len(self._lr) - 1 - over)]
        new = self._lr[-1]
        return math.isfinite(old) and math.isfinite(new) and new >= factor * old and new > 0
