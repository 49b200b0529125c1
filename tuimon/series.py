"""One metric's whole history in bounded memory: the :class:`Series` behind every chart and sparkline.

A :class:`Series` keeps three things:

* **Buckets** over the whole step range. ``capacity`` buckets (an even number), bucket ``i`` covering the steps
  ``[origin + i * 2**shift, origin + (i + 1) * 2**shift)`` where ``origin`` is the first step seen. Each bucket holds
  the min, max, sum and count of its *finite* values, its number of points (finite or not) and its first (smallest)
  step, in six preallocated numpy arrays. When a step falls past the last bucket, the bucket width doubles: buckets
  ``2i`` and ``2i + 1`` merge into bucket ``i`` (min of mins, max of maxes, sums and counts added), which frees the
  upper half. So memory never grows, min/max are exact per bucket (a one-step spike stays visible however long the
  run), and the buckets always span the run from its first step. Steps before ``origin`` (a step counter that went
  backwards) land in bucket 0.
* **A raw tail**: the last ``tail`` (step, value) points in two preallocated ring-ordered arrays, for sparklines,
  trends and exact plotting of short runs.
* **A pending chunk**: ``add`` only appends to two Python lists; every :data:`CHUNK` points (or before any read) the
  chunk is folded into the buckets and the tail with a handful of vectorised numpy calls (``ufunc.reduceat`` over
  runs of equal bucket index). No numpy object is allocated per point, which is what lets :meth:`RunState.apply_many`
  ingest well over 100,000 metrics records a second.

:meth:`Series.downsample` returns the held points exactly when they fit (the whole run still in the tail, or one
non-empty bucket per output column); otherwise it merges runs of buckets into at most ``width`` columns of equal step
span, keeping each column's min and max.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

CHUNK = 256
"""Points buffered per series before they are folded into its buckets."""

_STEP_MAX = np.iinfo(np.int64).max
_EMPTY_F = np.empty(0, dtype=np.float64)
_EMPTY_I = np.empty(0, dtype=np.int64)


class Series:
    """One metric's whole history in bounded memory: min/max/mean buckets over the full step range plus a raw
    recent tail (see the module docstring for the design).

    Args:
        name: The metric name.
        capacity: Number of buckets kept over the whole run (rounded up to an even number, at least 2).
        tail: Number of raw recent points kept.
    """

    def __init__(self, name: str, *, capacity: int = 2048, tail: int = 512) -> None:
        if not isinstance(capacity, int) or capacity < 2:
            raise ValueError(f"invalid capacity={capacity!r}: must be an int >= 2")
        if not isinstance(tail, int) or tail < 1:
            raise ValueError(f"invalid tail={tail!r}: must be an int >= 1")
        self.name = name
        self.capacity = capacity + capacity % 2
        self.tail = tail
        self._ps: list[int] = []
        self._pv: list[float] = []
        self._folded = 0
        self._nonfinite = 0
        self._last_step: int | None = None
        self._last_value: float | None = None
        self._vmin = math.inf
        self._vmax = -math.inf
        self._origin: int | None = None
        self._shift = 0
        self._used = 0
        c = self.capacity
        self._mins = np.full(c, np.inf)
        self._maxs = np.full(c, -np.inf)
        self._sums = np.zeros(c)
        self._fcount = np.zeros(c, dtype=np.int64)
        self._npts = np.zeros(c, dtype=np.int64)
        self._first = np.full(c, _STEP_MAX, dtype=np.int64)
        self._tail_s = np.zeros(tail, dtype=np.int64)
        self._tail_v = np.zeros(tail)
        self._tail_n = 0

    def __repr__(self) -> str:
        return f"Series({self.name!r}, count={self.count}, last_step={self.last_step}, last_value={self.last_value})"

    # -- ingest ---------------------------------------------------------------------------------------------------

    def add(self, step: int, value: float) -> None:
        """Append one point (amortised O(1), no numpy allocation per point).

        Args:
            step: The training step.
            value: The value; NaN and Inf are counted in :attr:`nonfinite` and left out of min/max/mean.
        """
        self._ps.append(step)
        pv = self._pv
        pv.append(value)
        if len(pv) >= CHUNK:
            self._fold()

    def extend(self, steps: Iterable[int] | np.ndarray, values: Iterable[float] | np.ndarray) -> None:
        """Append many points at once (for replaying a run file); same result as calling :meth:`add` for each.

        Args:
            steps: The steps, one per value.
            values: The values.

        Raises:
            ValueError: ``steps`` and ``values`` differ in length.
        """
        s = np.asarray(steps, dtype=np.int64).ravel()
        v = np.asarray(values, dtype=np.float64).ravel()
        if len(s) != len(v):
            raise ValueError(f"steps and values differ in length: {len(s)} != {len(v)}")
        self._fold()
        block = 1 << 16  # bounds the temporaries
        for i in range(0, len(v), block):
            self._fold_arrays(s[i : i + block], v[i : i + block])

    def _fold(self) -> None:
        """Fold the pending chunk into the tail and the buckets."""
        pv = self._pv
        if not pv:
            return
        steps = np.array(self._ps, dtype=np.int64)
        vals = np.array(pv, dtype=np.float64)
        self._ps.clear()
        pv.clear()
        self._fold_arrays(steps, vals)

    def _fold_arrays(self, steps: np.ndarray, vals: np.ndarray) -> None:
        k = len(vals)
        if k == 0:
            return
        self._folded += k
        self._last_step = int(steps[-1])
        self._last_value = float(vals[-1])

        t = self.tail
        if k >= t:
            self._tail_s[:] = steps[-t:]
            self._tail_v[:] = vals[-t:]
        else:  # shift left by k (numpy handles the overlap), then write the chunk at the end
            self._tail_s[: t - k] = self._tail_s[k:]
            self._tail_s[t - k :] = steps
            self._tail_v[: t - k] = self._tail_v[k:]
            self._tail_v[t - k :] = vals
        self._tail_n = min(t, self._tail_n + k)

        finite = np.isfinite(vals)
        nfin = int(np.count_nonzero(finite))
        self._nonfinite += k - nfin
        if nfin == k:
            lo = hi = sm = vals
        else:
            lo = np.where(finite, vals, np.inf)
            hi = np.where(finite, vals, -np.inf)
            sm = np.where(finite, vals, 0.0)
        if nfin:
            self._vmin = min(self._vmin, float(lo.min()))
            self._vmax = max(self._vmax, float(hi.max()))

        if self._origin is None:
            self._origin = int(steps.min())
        idx = steps - self._origin
        np.maximum(idx, 0, out=idx)
        idx >>= self._shift
        top = int(idx.max())
        grow = 0
        while top >= self.capacity:
            self._merge()
            top >>= 1
            grow += 1
        if grow:
            idx >>= grow
        if k > 1 and not bool(np.all(idx[1:] >= idx[:-1])):
            order = np.argsort(idx, kind="stable")
            idx, steps, lo, hi, sm, finite = (a[order] for a in (idx, steps, lo, hi, sm, finite))
        if k == 1:
            starts = np.zeros(1, dtype=np.intp)
        else:
            starts = np.flatnonzero(np.concatenate(([True], idx[1:] != idx[:-1])))
        u = idx[starts]
        self._mins[u] = np.minimum(self._mins[u], np.minimum.reduceat(lo, starts))
        self._maxs[u] = np.maximum(self._maxs[u], np.maximum.reduceat(hi, starts))
        self._sums[u] += np.add.reduceat(sm, starts)
        self._fcount[u] += np.add.reduceat(finite, starts, dtype=np.int64)
        self._npts[u] += np.diff(np.append(starts, k))
        self._first[u] = np.minimum(self._first[u], np.minimum.reduceat(steps, starts))
        self._used = max(self._used, top + 1)

    def _merge(self) -> None:
        """Double the bucket width: buckets 2i and 2i+1 become bucket i; the upper half is emptied."""
        h = self.capacity // 2
        for arr, op, empty in (
            (self._mins, np.minimum, np.inf),
            (self._maxs, np.maximum, -np.inf),
            (self._first, np.minimum, _STEP_MAX),
            (self._sums, np.add, 0.0),
            (self._fcount, np.add, 0),
            (self._npts, np.add, 0),
        ):
            arr[:h] = op(arr[0::2], arr[1::2])
            arr[h:] = empty
        self._shift += 1
        self._used = (self._used + 1) // 2

    # -- scalar views -----------------------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Points ever added."""
        return self._folded + len(self._pv)

    @property
    def nonfinite(self) -> int:
        """NaN/Inf points ever added."""
        self._fold()
        return self._nonfinite

    @property
    def last_step(self) -> int | None:
        """Step of the latest point, ``None`` before the first."""
        return self._ps[-1] if self._ps else self._last_step

    @property
    def last_value(self) -> float | None:
        """The latest value (possibly NaN), ``None`` before the first."""
        return float(self._pv[-1]) if self._pv else self._last_value

    @property
    def first_step(self) -> int | None:
        """The smallest step seen, ``None`` before the first point."""
        self._fold()
        return int(self._first[: self._used].min()) if self._used else None

    @property
    def bucket_width(self) -> int:
        """Steps covered by one bucket (a power of two)."""
        self._fold()
        return 1 << self._shift

    def min(self) -> float | None:
        """The smallest finite value over the whole run, ``None`` if there is none."""
        self._fold()
        return self._vmin if self._vmin != math.inf else None

    def max(self) -> float | None:
        """The largest finite value over the whole run, ``None`` if there is none."""
        self._fold()
        return self._vmax if self._vmax != -math.inf else None

    def nbytes(self) -> int:
        """Bytes held by the numpy buffers plus the pending chunk (an upper bound on what grows with data)."""
        arrays = (
            self._mins,
            self._maxs,
            self._sums,
            self._fcount,
            self._npts,
            self._first,
            self._tail_s,
            self._tail_v,
        )
        return sum(a.nbytes for a in arrays) + 16 * len(self._pv)

    # -- array views ------------------------------------------------------------------------------------------------

    def tail_values(self, n: int) -> np.ndarray:
        """The last ``<= n`` raw values, oldest first (a new float64 array), for sparklines.

        Args:
            n: How many at most.

        Returns:
            The values, NaN and Inf included as they came.
        """
        self._fold()
        m = min(max(int(n), 0), self._tail_n)
        return self._tail_v[self.tail - m :].copy()

    def tail_points(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The last ``<= n`` raw points as ``(steps, values)``, oldest first."""
        self._fold()
        m = min(max(int(n), 0), self._tail_n)
        return self._tail_s[self.tail - m :].copy(), self._tail_v[self.tail - m :].copy()

    def downsample(self, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The whole run in at most ``width`` columns, for charts.

        Args:
            width: The most columns wanted (>= 1).

        Returns:
            ``(steps, mins, maxs, means)``: each column's first step and the min, max and mean of its finite values
            (NaN where it has none). When the held points fit in ``width`` they are returned exactly: the raw points
            while the whole run is still in the tail (sorted by step), otherwise one column per non-empty bucket.

        Raises:
            ValueError: ``width`` < 1.
        """
        if width < 1:
            raise ValueError(f"invalid width={width!r}: must be >= 1")
        self._fold()
        if self._folded == 0:
            return _EMPTY_I.copy(), _EMPTY_F.copy(), _EMPTY_F.copy(), _EMPTY_F.copy()
        if self._folded <= self.tail and self._folded <= width:
            steps, vals = self.tail_points(self._folded)
            if len(steps) > 1 and not bool(np.all(steps[1:] >= steps[:-1])):
                order = np.argsort(steps, kind="stable")
                steps, vals = steps[order], vals[order]
            vals[~np.isfinite(vals)] = np.nan
            return steps, vals, vals.copy(), vals.copy()
        used = self._used
        nz = np.flatnonzero(self._npts[:used])
        mins, maxs = self._mins[nz], self._maxs[nz]
        sums, fcount, first = self._sums[nz], self._fcount[nz], self._first[nz]
        if len(nz) > width:
            group = (nz * width) // used  # equal step span per column
            starts = np.flatnonzero(np.concatenate(([True], group[1:] != group[:-1])))
            mins = np.minimum.reduceat(mins, starts)
            maxs = np.maximum.reduceat(maxs, starts)
            sums = np.add.reduceat(sums, starts)
            fcount = np.add.reduceat(fcount, starts)
            first = np.minimum.reduceat(first, starts)
        has = fcount > 0
        means = np.divide(sums, fcount, out=np.full(len(sums), np.nan), where=has)
        return first.copy(), np.where(has, mins, np.nan), np.where(has, maxs, np.nan), means

    def trend(self, window: int = 128) -> float:
        """Relative slope of the recent tail: the least-squares line's change over the window divided by the
        window's mean magnitude.

        Args:
            window: How many of the latest raw points to fit.

        Returns:
            > 0 rising, < 0 falling, 0.0 when flat or unknown (fewer than 3 finite points).
        """
        y = self.tail_values(window)
        ok = np.isfinite(y)
        if np.count_nonzero(ok) < 3:
            return 0.0
        x = np.arange(len(y), dtype=np.float64)[ok]
        y = y[ok]
        xc = x - x.mean()
        ym = y.mean()
        scale = abs(ym) or float(np.abs(y).max())
        if scale == 0.0 or not math.isfinite(scale):
            return 0.0
        with np.errstate(all="ignore"):
            r = float((xc * (y - ym)).sum() / (xc * xc).sum() * (x[-1] - x[0]) / scale)
        return r if math.isfinite(r) else 0.0
