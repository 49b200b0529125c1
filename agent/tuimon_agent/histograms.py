"""Weight and gradient histograms per parameter tensor, binned on the device at the optimizer step (issue 3).

:class:`ParamHist` bins every tensor's finite weights and gradients every ``hist_every`` optimizer steps with
numpy's edge rules and counts NaN/Inf apart; one stacked copy per pass goes to the agent thread
(:func:`hist_payload`). This module imports torch; the monitor imports it only when given a model and an optimizer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .instruments import Hook, ParamStats, layer_table, unwrap

HIST_BINS = 32
"""Bins of each histogram (``watch(..., hist_bins=N)``)."""
HIST_BINS_MAX = 4096


class ParamHist:
    """Bins every parameter tensor's weights and gradient on the device, every ``every`` optimizer steps.

    It runs at the end of :class:`ParamStats`'s step post hook (its records follow that step's ``param_stats``), or
    in its own step post hook when there is none. On a sampled step (the steps ``every``, ``2 × every``, ...
    counted from the first ``optimizer.step()`` after :meth:`install`, like :class:`ParamStats`), for each parameter
    tensor and for its gradient: the finite values' range ``lo``/``hi`` (a NaN-proof min and max), ``B`` equal bins over ``[lo, hi]``
    (``B + 1`` float32 edges, ``lo + i·(hi − lo)/B`` computed in float64 like ``numpy.histogram``'s; a value ``v``
    falls in bin ``i`` when ``edge[i] <= v < edge[i+1]``, the last bin also takes ``hi``; when ``lo == hi`` the
    range is widened to ``[lo − 0.5, hi + 0.5]``, again as numpy does, so every value lands in bin ``B // 2``), and
    the NaN and ±Inf entries counted in two extra bins rather than dropped. Everything stays on the device: each
    element's bin comes from the float32 formula corrected against the float32 edges (:func:`_bin`, equal to
    ``numpy.histogram``), the counts from one ``bincount`` (``scatter_add_`` on CUDA) per tensor; no ``.item()``,
    no host synchronisation (on the CPU, where nothing is asynchronous, the stacked ranges are read once per pass to
    skip the NaN-proof range pass). The results are stacked into one ``[2, P, B + 2]`` int64 tensor and one
    ``[2, P, 2]`` float32 tensor (row 0 weights, row 1 gradients) and copied to the host like :class:`ParamStats`
    does (pinned memory and an event on CUDA); the agent thread waits for the copy and builds the ``histograms``
    record (:func:`hist_payload`). A parameter with no gradient has NaN ``lo``/``hi`` and zero
    counts in the gradient row.

    On the CPU, a tensor whose values are all finite (known from its ``aminmax``) with a safe range takes a shorter
    path with the same counts (:func:`_bin_finite`: no NaN/Inf slots, no clamping, int32 bin indices), and the
    small ones (at most :data:`SMALL_NUMEL` elements, where per-call overhead dominates) are binned together,
    concatenated in chunks of at most a million elements with one ``bincount`` each (:func:`_bin_small`).

    Memory: on sampled steps, a few transient per-element buffers of the largest parameter tensor (its int64 bin
    indices, a float32 copy when it is not float32), or of one chunk of small tensors; nothing retained grows with
    training.

    Args:
        model: The module (wrappers are unwrapped).
        optimizer: The optimizer whose ``step()`` is hooked.
        every: Optimizer steps between two passes (``>= 1``).
        bins: Bins per histogram.
        stats: The :class:`ParamStats` of the same optimizer, or ``None``: its parameter table is shared (and a
            change of the parameter set queues a ``layers`` record from there); without it this class queues the
            ``layers`` records itself, the first one on the first sampled step.
        enqueue: ``enqueue(kind, step, payload)`` with ``kind`` ``"layers"`` or ``"hist"`` (training thread).
        step_of: The step the record of the optimizer step just taken belongs to.
        on_error: Called with any exception from the hook; the hook then does nothing more.
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        *,
        every: int,
        bins: int = HIST_BINS,
        stats: ParamStats | None = None,
        enqueue: Any,
        step_of: Any,
        on_error: Any,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"invalid hist_every={every!r}: must be an int >= 1 (or 0 for off)")
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= HIST_BINS_MAX:
            raise ValueError(f"invalid hist_bins={bins!r}: must be an int from 1 to {HIST_BINS_MAX}")
        self.model = unwrap(model)
        self.optimizer = optimizer
        self.every = every
        self.bins = bins
        self._stats = stats
        self._enqueue = enqueue
        self._step_of = step_of
        self._on_error = on_error
        self._calls = 0
        self._off = False
        self._ids: tuple[int, ...] = ()
        self._handles: list[Any] = []

    def install(self) -> list[Any]:
        """Hook into :class:`ParamStats`'s post hook, or register a step post hook; returns the handles (none in
        the first case). Without a :class:`ParamStats` the ``layers`` table is queued at the first sampled step,
        just before its ``histograms`` record."""
        if self._stats is not None:
            self._stats.after_post = self._after_step
        else:
            self._handles = [self.optimizer.register_step_post_hook(Hook(self._post))]
        return self._handles

    def remove(self) -> None:
        """Remove the hook. Safe to call twice."""
        self._off = True
        if self._stats is not None and self._stats.after_post == self._after_step:
            self._stats.after_post = None
        for h in self._handles:
            h.remove()
        self._handles = []

    def _refresh(self, params: list[Any], step: int | None) -> None:
        if self._stats is not None:
            self._stats._refresh(params, step)
            return
        ids = tuple(id(p) for p in params)
        if ids != self._ids:
            self._ids = ids
            self._enqueue("layers", step, {"params": layer_table(self.model)})

    def _post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """The step post hook of its own (no :class:`ParamStats`): counts the steps."""
        if not self._off:
            self._calls += 1
            self._after_step(self._calls)

    def _after_step(self, steps: int) -> None:
        """After optimizer step ``steps``: on a sampled step, bin the weights and gradients and queue them."""
        if self._off or steps % self.every:
            return
        try:
            self.measure()
        except Exception as exc:
            self._off = True
            self._on_error(exc)

    @torch.no_grad()
    def measure(self) -> None:
        """One pass over every parameter tensor and gradient; queues the device results (no host wait)."""
        params = list(self.model.parameters())
        step = self._step_of()
        self._refresh(params, step)
        if not params:
            return
        device = params[0].device
        b = self.bins
        n_params = len(params)
        # (row, column, flat float32 values) of every tensor measured: weights first, then the gradients present.
        cols = [(0, j, p) for j, p in enumerate(params) if p.numel()]
        cols += [(1, j, p.grad) for j, p in enumerate(params) if p.grad is not None and p.numel()]
        flat = [_flat(t) for _row, _j, t in cols]
        zeros = torch.zeros(b + 3, dtype=torch.int64, device=device)
        nan2 = torch.full((2,), math.nan, dtype=torch.float32, device=device)
        found: dict[tuple[int, int], tuple[Any, Any]] = {}
        if flat:
            lo, hi, finite = _finite_range(flat, device)
            lower, upper, origin, width = _bin_edges(lo, hi, b)
            ok = lo <= hi
            ranges_found = torch.stack([torch.where(ok, lo, nan2[0]), torch.where(ok, hi, nan2[0])], dim=1)
            fast = _fast(finite, lo, hi, width) if finite is not None else [False] * len(flat)
            small = [k for k, x in enumerate(flat) if fast[k] and x.numel() <= SMALL_NUMEL]
            counts_of = _bin_small(
                [flat[k] for k in small], b, origin[small], width[small], lower[small], upper[small]
            )
            by_k = dict(zip(small, counts_of, strict=True))
            for k, x in enumerate(flat):
                c = by_k.get(k)
                if c is None and fast[k]:
                    c = _bin_finite(x, origin[k], width[k], lower[k], upper[k], b)
                elif c is None:
                    dev = x.device
                    c = _bin(x, b, origin[k].to(dev), width[k].to(dev), lower[k].to(dev), upper[k].to(dev))
                found[cols[k][:2]] = (c.to(device, non_blocking=True), ranges_found[k])
        # Built by stacking on the device (no index tensor from the host, so nothing waits for the device).
        c3 = torch.stack(  # [2, P, B + 3]: B bins, "at hi" (folded into the last bin), NaN, ±Inf
            [torch.stack([found.get((r, j), (zeros, None))[0] for j in range(n_params)]) for r in (0, 1)]
        )
        counts = torch.cat(
            [c3[..., : b - 1], c3[..., b - 1 : b + 1].sum(-1, keepdim=True), c3[..., b + 1 :]], -1
        )
        ranges = torch.stack(
            [torch.stack([found.get((r, j), (None, nan2))[1] for j in range(n_params)]) for r in (0, 1)]
        )
        tensors = [counts, ranges]
        if device.type == "cuda":
            bufs = []
            for t in tensors:
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                buf.copy_(t, non_blocking=True)
                bufs.append(buf)
            event: Any = torch.cuda.Event()
            event.record()
        else:
            bufs, event = tensors, None
        self._enqueue("hist", step, (bufs, event))


_BIG = torch.finfo(torch.float32).max
SMALL_NUMEL = 4096
"""Tensors of at most this many elements are binned together, in one concatenation (their per-call overhead
dominates)."""
_CHUNK_NUMEL = 1 << 20
"""Elements per concatenated batch of small tensors at most (bounds the transient buffers)."""
_TINY = torch.finfo(torch.float32).tiny


def _fast(finite: Any, lo: Any, hi: Any, width: Any) -> list[bool]:
    """Which tensors take the CPU fast path: every entry finite, ``hi - lo`` finite in float32 and a normal bin width
    (so the formula ``(x - lo) / width`` lands within one bin of the answer, never outside ``0 .. B + 2``)."""
    return (finite & torch.isfinite(hi - lo) & (width >= _TINY)).tolist()


def _correct(x: Any, idx: Any, lower: Any, upper: Any) -> Any:
    """Move each formula bin ``idx`` (int32, in place) by one where it disagrees with the float32 edges."""
    idx.add_(x >= upper.index_select(0, idx))
    return idx.add_(x < lower.index_select(0, idx), alpha=-1)


def _bin_finite(x: Any, origin: Any, width: Any, lower: Any, upper: Any, bins: int) -> Any:
    """:func:`_bin` for a CPU tensor known to be finite with a safe range (:func:`_fast`): no NaN/Inf slots to
    fill and no clamping, int32 indices; same counts."""
    idx = torch.sub(x, origin).div_(width).to(torch.int32)
    return torch.bincount(_correct(x, idx, lower, upper), minlength=bins + 3)


def _bin_small(xs: list[Any], bins: int, origin: Any, width: Any, lower: Any, upper: Any) -> list[Any]:
    """:func:`_bin_finite` for many small CPU tensors at once: concatenated in chunks, each element's bin offset by
    its tensor's row of ``B + 3`` slots, one gather table and one ``bincount`` per chunk."""
    out: list[Any] = []
    i = 0
    slots = bins + 3
    while i < len(xs):
        j, total = i, 0
        while j < len(xs) and (j == i or total + xs[j].numel() <= _CHUNK_NUMEL):
            total += xs[j].numel()
            j += 1
        sizes = torch.tensor([x.numel() for x in xs[i:j]])
        rows = torch.repeat_interleave(torch.arange(j - i, dtype=torch.int32), sizes)
        x = torch.cat(xs[i:j])
        idx = torch.sub(x, origin[i:j].index_select(0, rows)).div_(width[i:j].index_select(0, rows))
        idx = idx.to(torch.int32).add_(rows * slots)
        idx = _correct(x, idx, lower[i:j].reshape(-1), upper[i:j].reshape(-1))
        out.extend(torch.bincount(idx, minlength=(j - i) * slots).view(j - i, slots).unbind(0))
        i = j
    return out


def _flat(t: Any) -> Any:
    x = t.detach().reshape(-1)
    return x if x.dtype == torch.float32 else x.float()


def _finite_range(flat: list[Any], device: Any) -> tuple[Any, Any, Any]:
    """The min and max of each tensor's finite values (``float32[N]`` on ``device``).

    A non-finite entry is replaced by the largest (smallest) float, which changes neither; a tensor with no finite
    entry gets ``lo > hi`` (±big), reported as NaN. On the CPU, where nothing is asynchronous, one plain ``aminmax``
    per tensor comes first and the replacing pass (4× slower) runs only for the tensors whose range is not finite
    (one read of the stacked ranges per pass); on an accelerator every tensor takes the replacing pass, so that
    nothing waits for the device.

    Returns:
        ``(lo, hi, finite)``: ``finite`` is a CPU bool tensor (every entry of tensor ``k`` finite) on the CPU,
        ``None`` elsewhere.
    """
    n = len(flat)
    bad = range(n)
    lo: list[Any] = [None] * n
    hi: list[Any] = [None] * n
    finite = None
    if device.type == "cpu" and all(x.device.type == "cpu" for x in flat):
        for k, x in enumerate(flat):
            lo[k], hi[k] = torch.aminmax(x)
        finite = torch.isfinite(torch.stack(lo)) & torch.isfinite(torch.stack(hi))
        bad = (~finite).nonzero().flatten().tolist()
    for k in bad:
        x = flat[k]
        lo[k] = torch.nan_to_num(x, nan=_BIG, posinf=_BIG, neginf=_BIG).amin()
        hi[k] = torch.nan_to_num(x, nan=-_BIG, posinf=-_BIG, neginf=-_BIG).amax()
    return (
        torch.stack([v.to(device, non_blocking=True) for v in lo]),
        torch.stack([v.to(device, non_blocking=True) for v in hi]),
        finite,
    )


def _bin_edges(lo: Any, hi: Any, bins: int) -> tuple[Any, Any, Any, Any]:
    """Every tensor's bin edges at once, as ``numpy.histogram(bins=B, range=(lo, hi))`` makes them (float64
    ``lo + i·(hi − lo)/B``, the last one ``hi``, rounded to float32; ``[lo − 0.5, hi + 0.5]`` when ``lo == hi``).

    Returns:
        ``lower [N, B + 3]`` and ``upper [N, B + 3]``: the edges of the bin an index names, NaN where no correction
        applies (the last bin, the "at hi" slot ``B``, the NaN and ±Inf slots); ``origin`` and ``width`` (float32
        ``[N]``) for the formula.
    """
    lo64, hi64 = lo.double(), hi.double()
    same = lo64 == hi64
    a = torch.where(same, lo64 - 0.5, lo64)
    z = torch.where(same, hi64 + 0.5, hi64)
    width = (z - a) / bins
    steps = torch.arange(bins + 1, dtype=torch.float64, device=lo.device)
    edges = (steps[None, :] * width[:, None] + a[:, None]).float()
    edges[:, -1] = z.float()
    nan = torch.full((len(lo), 3), math.nan, device=lo.device)
    lower = torch.cat([edges[:, :bins], nan], dim=1)
    upper = torch.cat([edges[:, 1:bins], nan, nan[:, :1]], dim=1)
    return lower, upper, a.float(), width.float()


def _bin(x: Any, bins: int, origin: Any, width: Any, lower: Any, upper: Any) -> Any:
    """Counts ``int64[B + 3]`` of one flat float32 tensor: bins ``0 .. B-1``, then ``B`` (values at ``hi``, folded
    into the last bin by the caller), NaN, ±Inf.

    Each value's bin comes from the float32 formula ``(x − lo) / width`` and is then moved by one where it disagrees
    with the float32 edges (numpy's local search), so the counts equal ``numpy.histogram``'s exactly; ``nan_to_num``
    sends NaN and ±Inf to their own slots. A range wider than the float32 maximum (``hi − lo > 3.4e38``) overflows
    the formula: its overflowing finite entries are counted as Inf.
    """
    f = torch.sub(x, origin).div_(width)
    f.nan_to_num_(nan=bins + 1.5, posinf=bins + 2.5, neginf=bins + 2.5).clamp_(0, bins + 2.5)
    idx = f.to(torch.int64)
    idx = idx.add_(x >= upper.index_select(0, idx)).sub_((x < lower.index_select(0, idx)).long())
    if x.device.type == "cpu":
        return torch.bincount(idx, minlength=bins + 3)
    # torch.bincount reads the largest index on the host first on CUDA: scatter_add_ never synchronises.
    counts = torch.zeros(bins + 3, dtype=torch.int64, device=x.device)
    return counts.scatter_add_(0, idx, torch.ones((), dtype=torch.int64, device=x.device).expand(idx.shape))


def hist_payload(bufs: list[Any], event: Any, bins: int | None = None) -> dict[str, Any]:
    """Turn the host buffers of one histogram pass into the ``histograms`` payload (agent thread)."""
    if event is not None:
        event.synchronize()
    counts, ranges = bufs[0].numpy(), bufs[1].numpy()
    b = counts.shape[2] - 2
    out: dict[str, Any] = {"bins": int(b)}
    for row, key in ((0, "weight"), (1, "grad")):
        out[key] = {
            "lo": np.ascontiguousarray(ranges[row, :, 0], dtype=np.float32),
            "hi": np.ascontiguousarray(ranges[row, :, 1], dtype=np.float32),
            "counts": np.ascontiguousarray(counts[row, :, :b], dtype=np.int32),
            "nan": np.ascontiguousarray(counts[row, :, b], dtype=np.int32),
            "inf": np.ascontiguousarray(counts[row, :, b + 1], dtype=np.int32),
        }
    return out
