"""Per-layer view state: the model's parameter tensors and their statistics over the whole run, in bounded memory.

Built from two record kinds (``protocol.LAYERS`` and ``protocol.PARAM_STATS``, see the protocol module);
:class:`ActState`, from three more (``MODULES``, ``ACT_STATS``, ``INPUT_STATS``), does the same for module outputs
and the model's input. Pure Python and numpy, no Textual; one thread applies records and reads.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuimon_agent import protocol

from .series import Series

LAYERS = getattr(protocol, "LAYERS", "layers")
"""The record kind of the parameter index."""
PARAM_STATS = getattr(protocol, "PARAM_STATS", "param_stats")
"""The record kind of one sampled step's per-parameter statistics."""
GRAD_NORMS = getattr(protocol, "GRAD_NORMS", "grad_norms")
"""The record kind of the per-step gradient norms between samples (``watch(..., norms_every=N)``)."""

MODULES = getattr(protocol, "MODULES", "modules")
"""The record kind of the measured-module index."""
ACT_STATS = getattr(protocol, "ACT_STATS", "act_stats")
"""The record kind of one sampled forward's per-module output statistics."""
INPUT_STATS = getattr(protocol, "INPUT_STATS", "input_stats")
"""The record kind of one sampled forward's input statistics."""
ACT_LATEST: tuple[str, ...] = ("mean", "std", "dead", "saturated", "nonfinite")
"""The ``act_stats`` arrays kept from the latest sample."""
ACT_HISTORY_STATS: tuple[str, ...] = ("dead", "saturated")
"""The activation statistics whose history is kept (one ``[M, capacity]`` matrix each)."""
HISTORY_STATS: tuple[str, ...] = ("grad_norm", "update_ratio", "weight_norm", "grad_zero", "grad_max")
"""The statistics whose history is kept (one ``[P, capacity]`` matrix each)."""
LATEST_STATS: tuple[str, ...] = (*HISTORY_STATS, "grad_nonfinite", "has_grad")
"""The arrays kept from the latest sample."""
GRAD_STATS = frozenset({"grad_norm", "grad_zero", "grad_max"})
"""Statistics that are not measured where ``has_grad`` is 0, and non-finite where ``grad_nonfinite`` is 1."""
DEFAULT_CAPACITY = 512
"""History columns per statistic."""


def _read_arrays(data: Mapping[str, Any], keys: Iterable[str], n: int) -> dict[str, np.ndarray]:
    """The named arrays of a record as float64 vectors of length ``n``; empty when any present one does not fit."""
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        a = data.get(key)
        if a is None:
            continue
        try:
            a = np.asarray(a, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            return {}
        if len(a) != n:
            return {}
        arrays[key] = a
    return arrays


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


class _ColumnHistory:
    """The bounded whole-run history matrices (module docstring) of the statistics in ``_stats``, one row per
    tensor or module; shared by :class:`LayerState` and :class:`ActState`."""

    _stats: tuple[str, ...] = ()
    capacity: int

    def _init_history(self, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity < 2:
            raise ValueError(f"invalid capacity={capacity!r}: must be an int >= 2")
        self.capacity = capacity + capacity % 2
        self.version = 0
        self.mismatched = 0

    def _reset_history(self, rows: int) -> None:
        c = self.capacity
        self._values = {s: np.full((rows, c), np.nan, dtype=np.float32) for s in self._stats}
        self._nonfinite = {s: np.zeros((rows, c), dtype=bool) for s in self._stats}
        self._first = np.zeros(c, dtype=np.int64)
        self._last = np.zeros(c, dtype=np.int64)
        self._count = np.zeros(c, dtype=np.int64)
        self._used = 0
        self._shift = 0

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
        for s in self._stats:
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

    # -- queries (history) -------------------------------------------------------------------------------------------------

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
            stat: One of the statistics kept (:data:`HISTORY_STATS`, :data:`ACT_HISTORY_STATS`).

        Returns:
            ``(values, nonfinite)``, each ``[rows, columns]``: values (NaN where not measured or non-finite) and the
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


class LayerState(_ColumnHistory):
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

    _stats = HISTORY_STATS

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY) -> None:
        self._init_history(capacity)
        self.global_grad_norm = Series("global_grad_norm")
        self._index([])

    def _index(self, params: list[Param]) -> None:
        self.params = params
        self.names = [p.name for p in params]
        self.latest: dict[str, np.ndarray] = {}
        self.latest_step: int | None = None
        self.samples = 0
        self._reset_history(len(params))

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
        arrays = _read_arrays(data, LATEST_STATS, p)
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

    def apply_norms(self, step: int | None, data: Mapping[str, Any]) -> bool:
        """Apply one ``grad_norms`` record (a step between samples): its gradient norms go into the ``grad_norm``
        history and its global norm into :attr:`global_grad_norm`; the other statistics of that column stay "not
        measured" (NaN, merged away by ``fmax``) and :attr:`latest` stays the latest full sample.

        Args:
            step: The step (``None`` continues after the latest).
            data: The record's payload: ``grad_norm``, ``grad_nonfinite``, ``has_grad`` (length P) and
                ``global_grad_norm``.

        Returns:
            False when the record did not match the index (counted in :attr:`mismatched` and ignored).
        """
        p = len(self.params)
        arrays = _read_arrays(data, ("grad_norm", "grad_nonfinite", "has_grad"), p)
        if not p or "grad_norm" not in arrays:
            self.mismatched += 1
            self.version += 1
            return False
        if step is None:
            step = (self.latest_step or 0) + 1
        g = data.get("global_grad_norm")
        if isinstance(g, (int, float)) and not isinstance(g, bool):
            self.global_grad_norm.add(step, float(g))
        a = arrays["grad_norm"]
        bad = ~np.isfinite(a)
        if "grad_nonfinite" in arrays:
            bad |= arrays["grad_nonfinite"] != 0
        if "has_grad" in arrays:
            bad &= arrays["has_grad"] != 0  # no gradient: "not measured", not NaN
        col = self._column(step)
        vals = np.where(bad, np.nan, a).astype(np.float32)
        self._values["grad_norm"][:, col] = np.fmax(self._values["grad_norm"][:, col], vals)
        self._nonfinite["grad_norm"][:, col] |= bad
        self.version += 1
        return True

    def latest_value(self, stat: str, index: int) -> float | None:
        """The latest sample's value of a statistic for parameter ``index``, ``None`` when there is none."""
        a = self.latest.get(stat)
        return float(a[index]) if a is not None and 0 <= index < len(a) else None

    def nbytes(self) -> int:
        """Bytes held by the history matrices (what grows with the model, not with the run)."""
        held: Sequence[np.ndarray] = [*self._values.values(), *self._nonfinite.values()]
        return sum(a.nbytes for a in held) + self.global_grad_norm.nbytes()


@dataclass(frozen=True)
class Module:
    """One module of the ``modules`` index: its qualified name and class name."""

    name: str
    type: str


class ActState(_ColumnHistory):
    """Per-module output statistics and the model's input statistics of one run.

    Keeps the module index, the latest ``act_stats`` arrays, the latest ``input_stats`` and a bounded whole-run
    history of the dead and saturated fractions (:data:`ACT_HISTORY_STATS`, merged by maximum like
    :class:`LayerState`; a non-finite output sets the non-finite mark of both).

    Args:
        capacity: History columns per statistic (rounded up to an even number, at least 2).

    Attributes:
        modules: The module index, model order.
        names: Their names.
        latest: The latest sample's arrays by statistic (float64 copies).
        latest_step: Its step.
        inputs: The latest ``input_stats`` payload (``shape`` and float64 arrays), or ``None``.
        inputs_step: Its step.
        samples: ``act_stats`` records applied since the index was (re)built.
        mismatched: ``act_stats`` records ignored because their arrays did not match the index.
        version: Bumped on every change.
    """

    _stats = ACT_HISTORY_STATS

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY) -> None:
        self._init_history(capacity)
        self.inputs: dict[str, Any] | None = None
        self.inputs_step: int | None = None
        self._index([])

    def _index(self, modules: list[Module]) -> None:
        self.modules = modules
        self.names = [m.name for m in modules]
        self._pos = {n: i for i, n in enumerate(self.names)}
        self.latest: dict[str, np.ndarray] = {}
        self.latest_step: int | None = None
        self.samples = 0
        self._reset_history(len(modules))

    def apply_modules(self, data: Mapping[str, Any]) -> None:
        """Apply a ``modules`` record: the same index keeps the history; a different one starts it afresh."""
        raw = data.get("modules")
        modules = (
            [Module(str(d.get("name", "?")), str(d.get("type", ""))) for d in raw if isinstance(d, Mapping)]
            if isinstance(raw, list)
            else []
        )
        if modules != self.modules:
            self._index(modules)
        self.version += 1

    def apply_stats(self, step: int | None, data: Mapping[str, Any]) -> bool:
        """Apply one ``act_stats`` record; False (counted in :attr:`mismatched`) when it does not fit the index."""
        m = len(self.modules)
        arrays = _read_arrays(data, ACT_LATEST, m)
        if not m or "mean" not in arrays:
            self.mismatched += 1
            self.version += 1
            return False
        if step is None:
            step = (self.latest_step or 0) + 1
        self.latest, self.latest_step = arrays, step
        self.samples += 1
        flagged = arrays.get("nonfinite")
        col = self._column(step)
        for s in ACT_HISTORY_STATS:
            a = arrays.get(s)
            if a is None:
                continue
            bad = flagged != 0 if flagged is not None else np.zeros(m, dtype=bool)
            vals = np.where(bad, np.nan, a).astype(np.float32)
            self._values[s][:, col] = np.fmax(self._values[s][:, col], vals)
            self._nonfinite[s][:, col] |= bad
        self.version += 1
        return True

    def apply_inputs(self, step: int | None, data: Mapping[str, Any]) -> None:
        """Apply one ``input_stats`` record (the latest one is kept)."""
        out: dict[str, Any] = {}
        shape = data.get("shape")
        out["shape"] = (
            [int(d) for d in shape if isinstance(d, int)] if isinstance(shape, (list, tuple)) else []
        )
        for s in ("mean", "std", "min", "max"):
            try:
                out[s] = np.asarray(data.get(s, ()), dtype=np.float64).ravel()
            except (TypeError, ValueError):
                out[s] = np.zeros(0)
        self.inputs, self.inputs_step = out, step
        self.version += 1

    def latest_value(self, stat: str, index: int) -> float | None:
        """The latest sample's value of a statistic for module ``index``, ``None`` when there is none."""
        a = self.latest.get(stat)
        return float(a[index]) if a is not None and 0 <= index < len(a) else None

    def for_param_modules(self, owners: Sequence[str]) -> dict[str, int]:
        """Which measured module speaks for each parameter-owning module in the layer table's dead/sat columns.

        The owner itself when it is measured and has a dead or saturated value; otherwise the first activation
        module that follows it in the index before the next owner (``features.0`` Conv2d → ``features.1`` ReLU),
        the usual layer-then-activation pattern.

        Args:
            owners: The modules that own parameters (the ``layers`` index's ``module`` fields).

        Returns:
            ``{owner: module index}`` for the owners that have one.
        """
        owning = set(owners)
        out: dict[str, int] = {}
        current: str | None = None
        for i, m in enumerate(self.modules):
            if m.name in owning:
                current = m.name
                if m.type in _ACT_TYPES:
                    out[current] = i
                continue
            if current is not None and current not in out and m.type in _ACT_TYPES:
                out[current] = i
        return out

    def nbytes(self) -> int:
        """Bytes held by the history matrices."""
        return sum(a.nbytes for a in [*self._values.values(), *self._nonfinite.values()])


_ACT_TYPES = frozenset({"ReLU", "ReLU6", "LeakyReLU", "Tanh", "Sigmoid"})
"""Module types with a dead or saturated fraction."""
