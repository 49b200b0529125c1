"""Per-layer view state: the model's parameter tensors and their statistics over the whole run, in bounded memory.

Built from two record kinds (``protocol.LAYERS`` and ``protocol.PARAM_STATS``, see the protocol module). Pure
Python and numpy, no Textual; one thread applies records and reads.

History
-------
Each statistic in :data:`HISTORY_STATS` has a float32 matrix ``[P, capacity]``: row ``i`` is parameter ``i`` (model
order), column ``j`` a run of consecutive sampled steps, oldest left. A column holds up to ``2**shift`` samples;
when every column is full, adjacent columns merge pairwise (``2j`` and ``2j + 1`` become ``j``), the upper half is
freed and ``shift`` grows, so the whole run stays visible in ``capacity`` columns, as :class:`~tuimon.series.Series`
does for scalars. Merging keeps the **maximum** for every statistic: the heatmap is for spotting spikes (an
exploding gradient norm, a huge update ratio, a layer whose gradient went all-zero), and a maximum keeps a one-step
spike visible however long the run; weight norms move slowly, so their maximum is their value.

Values that are NaN or Inf are not kept as values: they set a bit in the statistic's boolean ``nonfinite`` matrix
(merged with OR) and leave the value NaN, so a heatmap can paint them in a colour outside its map. A NaN value
without the bit means "not measured" (no gradient for this tensor, the update ratio of a step that was not
measured, or a column with no sample).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuimon_agent import protocol

from .series import Series

LAYERS = getattr(protocol, "LAYERS", "layers")
"""The record kind of the parameter index."""
PARAM_STATS = getattr(protocol, "PARAM_STATS", "param_stats")
"""The record kind of one sampled step's per-parameter statistics."""

HISTORY_STATS: tuple[str, ...] = ("grad_norm", "update_ratio", "weight_norm", "grad_zero", "grad_max")
"""The statistics whose history is kept (one ``[P, capacity]`` matrix each)."""
LATEST_STATS: tuple[str, ...] = (*HISTORY_STATS, "grad_nonfinite", "has_grad")
"""The arrays kept from the latest sample."""
GRAD_STATS = frozenset({"grad_norm", "grad_zero", "grad_max"})
"""Statistics that are not measured where ``has_grad`` is 0, and non-finite where ``grad_nonfinite`` is 1."""
DEFAULT_CAPACITY = 512
"""History columns per statistic."""


@dataclass(frozen=True)
class Param:
    """One parameter tensor of the ``layers`` index.

    Attributes:
        name: Its qualified name (``layer1.0.conv1.weight``).
        shape: Its shape.
        numel: Its number of elements.
        module: The qualified name of the module that owns it.
        module_type: That module's class name.
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    module: str
    module_type: str

    @classmethod
    def from_data(cls, d: Mapping[str, Any]) -> Param:
        """Read one ``params`` entry tolerantly (missing fields become empty)."""
        shape = d.get("shape")
        dims = tuple(int(x) for x in shape if isinstance(x, int)) if isinstance(shape, (list, tuple)) else ()
        numel = d.get("numel")
        name = str(d.get("name", "?"))
        return cls(
            name=name,
            shape=dims,
            numel=numel if isinstance(numel, int) and not isinstance(numel, bool) else math.prod(dims),
            module=str(d.get("module", name.rpartition(".")[0])),
            module_type=str(d.get("module_type", "")),
        )


class LayerState:
    """Per-parameter statistics of one run: the index, the latest sample and a bounded whole-run history.

    Args:
        capacity: History columns per statistic (rounded up to an even number, at least 2).

    Attributes:
        params: The parameter index, model order (empty until a ``layers`` record).
        latest: The latest sample's arrays by statistic (float64 copies), empty before the first.
        latest_step: Its step.
        global_grad_norm: The L2 norm over every gradient, one point per sample.
        samples: ``param_stats`` records applied since the index was (re)built.
        mismatched: ``param_stats`` records ignored because their arrays did not match the index.
        version: Bumped on every change, so a widget knows when to repaint.
    """

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY) -> None:
        if not isinstance(capacity, int) or capacity < 2:
            raise ValueError(f"invalid capacity={capacity!r}: must be an int >= 2")
        self.capacity = capacity + capacity % 2
        self.version = 0
        self.mismatched = 0
        self.global_grad_norm = Series("global_grad_norm")
        self._index([])

    def _index(self, params: list[Param]) -> None:
        self.params = params
        self.names = [p.name for p in params]
        self.latest: dict[str, np.ndarray] = {}
        self.latest_step: int | None = None
        self.samples = 0
        p, c = len(params), self.capacity
        self._values = {s: np.full((p, c), np.nan, dtype=np.float32) for s in HISTORY_STATS}
        self._nonfinite = {s: np.zeros((p, c), dtype=bool) for s in HISTORY_STATS}
        self._first = np.zeros(c, dtype=np.int64)
        self._last = np.zeros(c, dtype=np.int64)
        self._count = np.zeros(c, dtype=np.int64)
        self._used = 0
        self._shift = 0

    # -- ingest -----------------------------------------------------------------------------------------------------

    def apply_layers(self, data: Mapping[str, Any]) -> None:
        """Apply a ``layers`` record: the same index keeps the history; a different one starts it afresh.

        Args:
            data: The record's payload, ``{"params": [...]}``.
        """
        raw = data.get("params")
        params = [Param.from_data(d) for d in raw if isinstance(d, Mapping)] if isinstance(raw, list) else []
        if params != self.params:
            self._index(params)
        self.version += 1

    def apply_stats(self, step: int | None, data: Mapping[str, Any]) -> bool:
        """Apply one ``param_stats`` record.

        Args:
            step: The sampled step (the record's ``step``); ``None`` continues after the latest.
            data: The record's payload: arrays of length P (the index's length) and ``global_grad_norm``.

        Returns:
            False when the record did not match the index (counted in :attr:`mismatched` and ignored).
        """
        p = len(self.params)
        arrays: dict[str, np.ndarray] = {}
        for s in LATEST_STATS:
            a = data.get(s)
            if a is None:
                continue
            try:
                a = np.asarray(a, dtype=np.float64).ravel()
            except (TypeError, ValueError):
                a = None
            if a is None or len(a) != p:
                arrays = {}
                break
            arrays[s] = a
        if not p or "grad_norm" not in arrays:
            self.mismatched += 1
            self.version += 1
            return False
        if step is None:
            step = (self.latest_step or 0) + 1
        has_grad = arrays.get("has_grad")
        grad_bad = arrays.get("grad_nonfinite")
        self.latest, self.latest_step = arrays, step
        self.samples += 1
        g = data.get("global_grad_norm")
        if isinstance(g, (int, float)) and not isinstance(g, bool):
            self.global_grad_norm.add(step, float(g))
        col = self._column(step)
        for s in HISTORY_STATS:
            a = arrays.get(s)
            if a is None:
                continue
            bad = ~np.isfinite(a)
            if s in GRAD_STATS and grad_bad is not None:
                bad |= grad_bad != 0
            if has_grad is not None and s != "weight_norm":
                bad &= has_grad != 0  # no gradient: "not measured", not NaN
            vals = np.where(bad, np.nan, a).astype(np.float32)
            column = self._values[s][:, col]
            self._values[s][:, col] = np.fmax(column, vals)  # fmax: NaN (nothing yet) gives way to a value
            self._nonfinite[s][:, col] |= bad
        self.version += 1
        return True

    def _column(self, step: int) -> int:
        """The column the next sample goes to: the last one until it holds ``2**shift`` samples, else a new one
        (merging first when all are in use; every column is full then, so the new one is the first of the upper
        half)."""
        used = self._used
        if used and self._count[used - 1] < (1 << self._shift):
            col = used - 1
        else:
            if used == self.capacity:
                self._merge()
            col = self._used
            self._used += 1
        self._add_step(col, step)
        return col

    def _add_step(self, col: int, step: int) -> None:
        if self._count[col] == 0:
            self._first[col] = self._last[col] = step
        else:
            self._first[col] = min(self._first[col], step)
            self._last[col] = max(self._last[col], step)
        self._count[col] += 1

    def _merge(self) -> None:
        """Columns ``2j`` and ``2j + 1`` become column ``j`` (max, OR, step spans joined); the upper half empties."""
        h = self.capacity // 2
        for s in HISTORY_STATS:
            v, b = self._values[s], self._nonfinite[s]
            v[:, :h] = np.fmax(v[:, 0::2], v[:, 1::2])
            v[:, h:] = np.nan
            b[:, :h] = b[:, 0::2] | b[:, 1::2]
            b[:, h:] = False
        self._first[:h] = np.minimum(self._first[0::2], self._first[1::2])
        self._last[:h] = np.maximum(self._last[0::2], self._last[1::2])
        self._count[:h] = self._count[0::2] + self._count[1::2]
        self._first[h:] = self._last[h:] = self._count[h:] = 0
        self._used = (self._used + 1) // 2
        self._shift += 1

    # -- queries ----------------------------------------------------------------------------------------------------

    @property
    def columns(self) -> int:
        """History columns in use."""
        return self._used

    @property
    def samples_per_column(self) -> int:
        """Samples a full column holds (a power of two that doubles at each merge)."""
        return 1 << self._shift

    def history(self, stat: str) -> tuple[np.ndarray, np.ndarray]:
        """One statistic's history (views: do not modify).

        Args:
            stat: One of :data:`HISTORY_STATS`.

        Returns:
            ``(values, nonfinite)``, each ``[P, columns]``: values (NaN where not measured or non-finite) and the
            non-finite marks.

        Raises:
            KeyError: An unknown statistic.
        """
        n = self._used
        return self._values[stat][:, :n], self._nonfinite[stat][:, :n]

    def steps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each used column's ``(first step, last step, samples)``, oldest first (views)."""
        n = self._used
        return self._first[:n], self._last[:n], self._count[:n]

    def latest_value(self, stat: str, index: int) -> float | None:
        """The latest sample's value of a statistic for parameter ``index``, ``None`` when there is none."""
        a = self.latest.get(stat)
        return float(a[index]) if a is not None and 0 <= index < len(a) else None

    def nbytes(self) -> int:
        """Bytes held by the history matrices (what grows with the model, not with the run)."""
        held: Sequence[np.ndarray] = [*self._values.values(), *self._nonfinite.values()]
        return sum(a.nbytes for a in held) + self.global_grad_norm.nbytes()
