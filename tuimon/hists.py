"""Weight and gradient histograms per parameter tensor: the last samples of each, in bounded memory.

Built from ``protocol.HISTOGRAMS`` records (see the protocol module): every ``hist_every`` optimizer steps, for each
parameter tensor of the ``layers`` index, the finite values' range ``lo``/``hi``, ``B`` equal bins over it and the
NaN and ±Inf counts, for the weights and for the gradients. Pure Python and numpy, no Textual; one thread applies
records and reads.

:class:`HistState` keeps the last :data:`DEFAULT_SAMPLES` records in ring buffers (``[N, P, B]`` counts, ``[N, P]``
ranges and NaN/Inf counts per kind), so its memory is about ``N × P × (B + 4) × 8`` bytes whatever the run's
length; ``N`` shrinks (down to 2) when ``P × B`` is large, so the counts never pass :data:`COUNT_BUDGET`.
Each sample has its own range; :func:`rebin` puts samples with different ranges on one x scale (the counts are
spread uniformly within each source bin, the way a histogram's bar is read), which is how a widget draws their
evolution over the union of the recent ranges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuimon_agent import protocol

HISTOGRAMS = getattr(protocol, "HISTOGRAMS", "histograms")
"""The record kind of one sampled step's weight and gradient histograms."""
KINDS: tuple[str, ...] = ("weight", "grad")
"""The two histograms per parameter tensor, in the record's keys."""
DEFAULT_SAMPLES = 64
"""Samples kept per parameter tensor (the latest ones), when the budget allows."""
COUNT_BUDGET = 4 * 1024 * 1024
"""The most counts kept per kind (``N × P × B``, 16 MB of int32): a model with many tensors or many bins keeps
fewer samples (never fewer than 2)."""


@dataclass(frozen=True)
class HistSeries:
    """One tensor's histograms of one kind over the kept samples, oldest first (copies).

    Attributes:
        name: The parameter's name.
        kind: ``"weight"`` or ``"grad"``.
        bins: Bins per histogram.
        steps: ``int64[n]``: each sample's step.
        lo: ``float64[n]``: the finite values' minimum (NaN when the tensor had none, or no gradient).
        hi: ``float64[n]``: their maximum.
        counts: ``float64[n, bins]``: counts of finite values over ``[lo, hi]``.
        nan: ``int64[n]``: NaN entries.
        inf: ``int64[n]``: ±Inf entries.
    """

    name: str
    kind: str
    bins: int
    steps: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    counts: np.ndarray
    nan: np.ndarray
    inf: np.ndarray

    def __len__(self) -> int:
        return len(self.steps)

    def measured(self) -> np.ndarray:
        """Which samples have a finite range (a tensor with no gradient has none)."""
        return np.isfinite(self.lo) & np.isfinite(self.hi)

    def span(self, last: int | None = None) -> tuple[float, float] | None:
        """The union of the ranges of the last ``last`` samples (all when ``None``); ``None`` when none has one."""
        sel = self.measured()
        if last is not None:
            sel[: max(0, len(sel) - last)] = False
        if not sel.any():
            return None
        return float(self.lo[sel].min()), float(self.hi[sel].max())


def rebin(counts: np.ndarray, lo: float, hi: float, new_lo: float, new_hi: float, bins: int) -> np.ndarray:
    """One histogram's counts over ``[lo, hi]`` moved onto ``bins`` equal bins over ``[new_lo, new_hi]``.

    Each source bin's count is spread uniformly over its width (a linear cumulative count); counts outside the new
    range are dropped. When ``lo == hi`` (every finite value equal) the whole count goes to the bin holding ``lo``.

    Args:
        counts: The source counts (``B`` equal bins over ``[lo, hi]``).
        lo: The source range's low end.
        hi: Its high end.
        new_lo: The target range's low end.
        new_hi: Its high end (``> new_lo``).
        bins: Target bins (``>= 1``).

    Returns:
        ``float64[bins]``.

    Raises:
        ValueError: An empty or reversed target range, or ``bins < 1``.
    """
    if not new_hi > new_lo or bins < 1:
        raise ValueError(f"invalid target range [{new_lo!r}, {new_hi!r}] with bins={bins!r}")
    out = np.zeros(bins, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    total = float(counts.sum())
    if not total or not (np.isfinite(lo) and np.isfinite(hi)):
        return out
    if hi <= lo:
        if new_lo <= lo <= new_hi:
            out[min(bins - 1, int((lo - new_lo) / (new_hi - new_lo) * bins))] = total
        return out
    edges = np.linspace(lo, hi, len(counts) + 1)
    cum = np.concatenate(([0.0], np.cumsum(counts)))
    new_edges = np.linspace(new_lo, new_hi, bins + 1)
    return np.diff(np.interp(new_edges, edges, cum))


class HistState:
    """The latest weight and gradient histograms of every parameter tensor, up to ``samples`` per tensor.

    Histogram records are aligned with the ``layers`` index, which the caller hands to :meth:`apply` (the
    :class:`~tuimon.layers.LayerState`'s names): a record whose length does not match it is counted in
    :attr:`mismatched` and ignored; another index, or another bin count, starts the buffers afresh.

    Args:
        samples: Samples kept per tensor (``>= 1``), fewer when the model and bins are large (:data:`COUNT_BUDGET`).

    Attributes:
        capacity: Samples kept per tensor for the current index and bins.
        names: The parameter index the buffers follow (empty before the first record).
        bins: Bins per histogram (0 before the first record).
        received: Histogram records applied since the buffers were (re)built.
        mismatched: Records ignored because they did not fit the index.
        latest_step: The latest sample's step, or ``None``.
        version: Bumped on every change, so a widget knows when to repaint.
    """

    def __init__(self, *, samples: int = DEFAULT_SAMPLES) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"invalid samples={samples!r}: must be an int >= 1")
        self.samples = samples
        self.version = 0
        self.mismatched = 0
        self._reset([], 0)

    def _reset(self, names: list[str], bins: int) -> None:
        p = len(names)
        n = self.capacity = max(2, min(self.samples, COUNT_BUDGET // max(1, p * bins)))
        self.names = names
        self._pos = {name: i for i, name in enumerate(names)}
        self.bins = bins
        self.received = 0
        self.latest_step: int | None = None
        self._steps = np.zeros(n, dtype=np.int64)
        self._lo = {k: np.full((n, p), np.nan, dtype=np.float32) for k in KINDS}
        self._hi = {k: np.full((n, p), np.nan, dtype=np.float32) for k in KINDS}
        self._counts = {k: np.zeros((n, p, bins), dtype=np.int32) for k in KINDS}
        self._nan = {k: np.zeros((n, p), dtype=np.int32) for k in KINDS}
        self._inf = {k: np.zeros((n, p), dtype=np.int32) for k in KINDS}

    # -- ingest -----------------------------------------------------------------------------------------------------

    def apply(self, step: int | None, data: Mapping[str, Any], names: Sequence[str]) -> bool:
        """Apply one ``histograms`` record.

        Args:
            step: The sampled step (the record's ``step``); ``None`` continues after the latest.
            data: The payload: ``{"bins": B, "weight": H, "grad": H}`` (protocol module).
            names: The current ``layers`` index's parameter names, which the arrays follow.

        Returns:
            False when the record did not fit (counted in :attr:`mismatched` and ignored).
        """
        p = len(names)
        bins = data.get("bins")
        parsed = {k: _read_hist(data.get(k), p, bins) for k in KINDS}
        if (
            not p
            or not isinstance(bins, int)
            or isinstance(bins, bool)
            or any(v is None for v in parsed.values())
        ):
            self.mismatched += 1
            self.version += 1
            return False
        if list(names) != self.names or bins != self.bins:
            self._reset(list(names), bins)
        if step is None:
            step = (self.latest_step or 0) + 1
        row = self.received % self.capacity
        self._steps[row] = step
        for k, h in parsed.items():
            assert h is not None
            self._lo[k][row], self._hi[k][row], self._counts[k][row], self._nan[k][row], self._inf[k][row] = h
        self.received += 1
        self.latest_step = step
        self.version += 1
        return True

    # -- queries ----------------------------------------------------------------------------------------------------

    @property
    def kept(self) -> int:
        """Samples held now (at most :attr:`samples`)."""
        return min(self.received, self.capacity)

    def index(self, name: str) -> int | None:
        """The position of a parameter in the index, ``None`` when it is not there."""
        return self._pos.get(name)

    def series(self, index: int, kind: str) -> HistSeries:
        """One tensor's kept histograms of one kind, oldest first.

        Args:
            index: The parameter's position in :attr:`names`.
            kind: ``"weight"`` or ``"grad"``.

        Returns:
            Copies of the kept samples (empty before the first record).

        Raises:
            IndexError: ``index`` is not a position in :attr:`names`.
            KeyError: An unknown kind.
        """
        if kind not in KINDS:
            raise KeyError(f"invalid kind={kind!r}: must be one of {', '.join(KINDS)}")
        if not 0 <= index < len(self.names):
            raise IndexError(f"invalid index={index!r}: the index has {len(self.names)} parameters")
        n = self.kept
        order = (np.arange(n) + self.received - n) % self.capacity  # oldest first
        return HistSeries(
            name=self.names[index],
            kind=kind,
            bins=self.bins,
            steps=self._steps[order].copy(),
            lo=self._lo[kind][order, index].astype(np.float64),
            hi=self._hi[kind][order, index].astype(np.float64),
            counts=self._counts[kind][order, index].astype(np.float64),
            nan=self._nan[kind][order, index].astype(np.int64),
            inf=self._inf[kind][order, index].astype(np.int64),
        )

    def nbytes(self) -> int:
        """Bytes held by the buffers (what grows with the model and the bins, not with the run)."""
        held = [self._steps, *self._lo.values(), *self._hi.values(), *self._counts.values()]
        held += [*self._nan.values(), *self._inf.values()]
        return sum(a.nbytes for a in held)


def _read_hist(
    h: Any, p: int, bins: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """One kind's ``(lo, hi, counts, nan, inf)``, or ``None`` when it is missing or does not fit ``[p, bins]``."""
    if not isinstance(h, Mapping) or not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        return None
    try:
        lo = np.asarray(h.get("lo"), dtype=np.float32).ravel()
        hi = np.asarray(h.get("hi"), dtype=np.float32).ravel()
        counts = np.asarray(h.get("counts"), dtype=np.float64)
        nan = np.asarray(h.get("nan", np.zeros(p)), dtype=np.float64).ravel()
        inf = np.asarray(h.get("inf", np.zeros(p)), dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return None
    if counts.size != p * bins or any(len(a) != p for a in (lo, hi, nan, inf)):
        return None
    counts = counts.reshape(p, bins)
    for a in (counts, nan, inf):
        if not np.isfinite(a).all() or (a < 0).any():
            return None
    return lo, hi, _int32(counts), _int32(nan), _int32(inf)


def _int32(a: np.ndarray) -> np.ndarray:
    """Counts as int32, clipped to ``2**31 - 1`` (a hostile value does not overflow)."""
    return np.clip(a, 0, np.iinfo(np.int32).max).astype(np.int32)
