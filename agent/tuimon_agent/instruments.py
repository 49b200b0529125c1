"""Per-parameter gradient and weight statistics, measured at the optimizer step (issue 3, agent side).

:class:`ParamStats` installs one optimizer step *pre* hook and one step *post* hook. On a sampled step (every
``stats_every`` optimizer steps) the pre hook measures every gradient with three fused ``torch._foreach_norm``
kernels (L2, L-inf, L0) and keeps a copy of the parameters that have a gradient; the post hook subtracts the new
parameters from that copy in place and takes two more fused norms (the update and the weights after the step). The
results are stacked into one ``[ROWS, P]`` float32 tensor on the device and copied to the host with one
non-blocking copy into pinned memory, followed by a CUDA event. The training thread never waits for the copy: the
queue item ``(tag, step, ts, (buffer, event, names))`` goes to the agent thread, which calls ``event.synchronize()``
and turns the rows into a ``param_stats`` record (:func:`stats_payload`). On the CPU the stacked tensor is the
buffer itself. Steps that are not sampled cost one integer comparison in each hook.

With ``norms_every=N`` (``watch(..., norms_every=N)``), every N-th optimizer step that is not a full sample gets a
cheap pass in the pre hook instead: one fused ``torch._foreach_norm`` (L2) over the gradients, stacked with the
has-gradient mask into one ``[NORM_ROWS, P]`` tensor, copied to the host the same way, and turned into a
``grad_norms`` record on the agent thread (:func:`norms_payload`).

Memory: on sampled steps only, one transient copy of the parameters that have a gradient (freed by the post hook),
plus ``ROWS × P`` floats; nothing retained grows with the length of training.

This module imports torch; :mod:`tuimon_agent.monitor` imports it only when it is given a model and an optimizer.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

# Rows of the stacked statistics tensor: those measured only for parameters with a gradient come first.
_GRAD_L2, _GRAD_MAX, _GRAD_NONZERO, _UPDATE, _HAS_GRAD, _WEIGHT, _WEIGHT_BEFORE = range(7)
_N_GRAD_ROWS = 5
ROWS = 7
NORM_ROWS = 2
"""Rows of a per-step norms buffer (``norms_every``): the gradient L2 norms and the has-gradient mask."""


def _noop(*args: Any, **kwargs: Any) -> None:
    """What a pickled or copied :class:`Hook` does: nothing."""


class Hook:
    """A module or optimizer hook that calls ``fn``, and that pickles (``torch.save``, ``pickle``,
    ``copy.deepcopy`` of the model or optimizer it is registered on) as an inert hook: no local closure is left on
    the user's objects, and a copy never reports into the run.

    Args:
        fn: The callable to run (a closure or a bound method; it is never pickled).
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Hook, (_noop,))


def foreach_norm(tensors: list[Any], ord: float = 2, scale: Any = None) -> list[Any]:
    """``torch._foreach_norm(tensors, ord)`` as float32 scalars, whatever the tensors' dtypes.

    Half, bfloat16 and float32 tensors are reduced in float32 (one fused kernel); float64 ones (which cannot be
    narrowed inside the kernel) in float64, then cast; a model mixing dtypes gets one kernel per dtype.

    Args:
        tensors: Floating-point tensors.
        ord: The norm's order.
        scale: A loss scale (tensor) the tensors carry (gradients of a fused GradScaler step): the norms are
            taken in float64 (a scaled norm may overflow float32) and divided by it.

    Returns:
        One float32 0-dim tensor per input, in order.
    """
    f32 = torch.float32
    if scale is not None:
        inv = 1.0 / scale.detach().double().reshape(())
        wide_norms = torch._foreach_norm(tensors, ord, dtype=torch.float64)
        return [(n * inv.to(n.device)).to(f32) for n in wide_norms]
    if all(t.dtype != torch.float64 for t in tensors):
        return list(torch._foreach_norm(tensors, ord, dtype=f32))
    wide = [i for i, t in enumerate(tensors) if t.dtype == torch.float64]
    narrow = [i for i, t in enumerate(tensors) if t.dtype != torch.float64]
    out: list[Any] = [None] * len(tensors)
    for i, n in zip(wide, torch._foreach_norm([tensors[i] for i in wide], ord), strict=True):
        out[i] = n.to(f32)
    if narrow:
        narrow_norms = torch._foreach_norm([tensors[i] for i in narrow], ord, dtype=f32)
        for i, n in zip(narrow, narrow_norms, strict=True):
            out[i] = n
    return out


def unwrap(model: Any) -> Any:
    """The user's module inside ``DataParallel``/``DistributedDataParallel`` and ``torch.compile`` wrappers.

    Args:
        model: A ``torch.nn.Module``, possibly wrapped (any nesting).

    Returns:
        The innermost module, whose parameter names are the ones the user wrote.
    """
    for _ in range(16):  # wrappers nest a few levels at most; never loop forever on an odd module
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, torch.nn.Module):
            model = inner
            continue
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        break
    return model


def layer_table(model: Any) -> list[dict[str, Any]]:
    """The ``layers`` record's ``params`` list, in model order.

    Args:
        model: The (unwrapped) module.

    Returns:
        ``[{"name", "shape", "numel", "module", "module_type"}, ...]``, one entry per parameter tensor.
    """
    types = {name: type(m).__name__ for name, m in model.named_modules()}
    out = []
    for name, p in model.named_parameters():
        module = name.rpartition(".")[0]
        out.append(
            {
                "name": name,
                "shape": list(p.shape),
                "numel": int(p.numel()),
                "module": module,
                "module_type": types.get(module, type(model).__name__),
            }
        )
    return out


class ParamStats:
    """Measures every parameter tensor's gradient and weight at a sampling interval, on the optimizer's hooks.

    Args:
        model: The module whose parameters are measured (wrappers are unwrapped for the names).
        optimizer: The optimizer whose ``step()`` is hooked.
        every: Optimizer steps between two passes (``1``: every step). Steps ``every``, ``2 × every``, ...
            (counted from the first ``optimizer.step()`` after :meth:`install`) are sampled.
        enqueue: ``enqueue(kind, step, payload)`` with ``kind`` ``"layers"`` or ``"stats"``; called on the
            training thread, it must only queue.
        step_of: The step the record of the optimizer step being taken belongs to.
        on_error: Called with any exception from a hook; the hooks then do nothing more.
        norms_every: Optimizer steps between two gradient-norm-only passes on steps that are not full samples
            (``kind`` ``"norms"`` queued from the pre hook), or ``None``: off.
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        *,
        every: int,
        enqueue: Any,
        step_of: Any,
        on_error: Any,
        norms_every: int | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"invalid stats_every={every!r}: must be an int >= 1 (or 0 for off)")
        if norms_every is not None and (
            isinstance(norms_every, bool) or not isinstance(norms_every, int) or norms_every < 1
        ):
            raise ValueError(f"invalid norms_every={norms_every!r}: must be an int >= 1 (or None for off)")
        self.norms_every = norms_every
        self.model = unwrap(model)
        self.optimizer = optimizer
        self.every = every
        self._enqueue = enqueue
        self._step_of = step_of
        self._on_error = on_error
        self._calls = 0
        self._off = False
        self._force = False
        self._ids: tuple[int, ...] = ()
        self._names: tuple[str, ...] = ()
        self._numel: np.ndarray = np.zeros(0)
        self._pending: tuple[Any, ...] | None = None
        self._multi_device = False
        self._cols: tuple[tuple[int, ...], Any] | None = None
        self._amp: tuple[Any, Any] | None = None
        self._handles: list[Any] = []
        self.after_step: Any = None
        """Called with the count of optimizer steps taken, after each (:class:`ActStats` arms itself there)."""
        self.after_post: Any = None
        """Called with the count of optimizer steps taken at the end of each post hook, after this step's
        statistics (:class:`ParamHist` bins there: one optimizer hook for both)."""

    def install(self) -> list[Any]:
        """Emit the ``layers`` table and register the hooks (none without an optimizer: :meth:`manual_step`).

        Returns:
            The hook handles (``handle.remove()`` undoes each).
        """
        self._refresh(list(self.model.parameters()), None)
        if self.optimizer is None:
            return []
        self._handles = [
            self.optimizer.register_step_pre_hook(Hook(self._pre)),
            self.optimizer.register_step_post_hook(Hook(self._post)),
        ]
        return self._handles

    def manual_step(self) -> None:
        """One step of a loop without an optimizer (called by ``Monitor.log``): on a sampled step, measure the
        gradients and weights as they are now (no update ratio: nothing to compare with)."""
        self._pre(None, (), {})
        self._post(None, (), {})

    def force_next(self) -> None:
        """Measure the next optimizer step whatever the interval (NaN provenance; only sets a flag)."""
        self._force = True

    def remove(self) -> None:
        """Remove the hooks and drop the pending copy. Safe to call twice."""
        self._off = True
        self._pending = None
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- hooks (training thread) -------------------------------------------------------------------------------

    def _refresh(self, params: list[Any], step: int | None) -> None:
        """(Re)build the name table when the parameter set changed, and queue a ``layers`` record."""
        ids = tuple(id(p) for p in params)
        if ids == self._ids:
            return
        table = layer_table(self.model)
        self._ids = ids
        self._names = tuple(e["name"] for e in table)
        self._numel = np.array([e["numel"] for e in table], dtype=np.float64)
        self._multi_device = len({p.device for p in params}) > 1
        self._cols = None
        self._enqueue("layers", step, {"params": table})

    def _pre(self, optimizer: Any, args: Any, kwargs: Any) -> Any:
        """Called before every ``optimizer.step()``: on a sampled step, measure the gradients, copy the weights.

        With ``optimizer.step(closure)`` (LBFGS, Lightning's automatic optimization) the gradients of this step
        do not exist yet: the closure is wrapped (the returned ``(args, kwargs)``) so that the measurement happens
        right after its first call, after its ``backward()``.
        """
        if self._off:
            return None
        self._calls += 1
        self._pending = None
        full = not self._calls % self.every or self._force
        if not full and (self.norms_every is None or self._calls % self.norms_every):
            return None
        self._force = False
        self._amp = _amp_of(optimizer)
        closure = closure_of(args, kwargs)
        if closure is not None:
            return with_closure(args, kwargs, AfterClosure(closure, functools.partial(self._measure, full)))
        self._measure(full)
        return None

    def _measure(self, full: bool) -> None:
        try:
            if full:
                self._measure_before()
            else:
                self._measure_norms()
        except Exception as exc:
            self._pending = None
            self._off = True
            self._on_error(exc)

    def _post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Called after every ``optimizer.step()``: on a sampled step, measure the update and queue the result."""
        if self.after_step is not None and not self._off:
            self.after_step(self._calls)
        if self._pending is not None and not self._off:
            try:
                self._measure_after()
            except Exception as exc:
                self._off = True
                self._on_error(exc)
            finally:
                self._pending = None
        if self.after_post is not None and not self._off:
            self.after_post(self._calls)

    @torch.no_grad()
    def _measure_before(self) -> None:
        params = list(self.model.parameters())
        step = self._step_of()
        self._refresh(params, step)
        if not params:
            return
        idx = tuple(i for i, p in enumerate(params) if p.grad is not None)
        grads = [params[i].grad for i in idx]
        if grads:
            if grads[0].device.type == "cpu":
                norms = _cpu_grad_norms(grads, self._scale())
            else:
                scale = self._scale()
                norms = [foreach_norm(grads, o, scale if o else None) for o in (2, math.inf, 0)]
            # The one transient copy, freed by the post hook (none without an optimizer: no update to measure).
            before = [params[i].detach().clone() for i in idx] if self.optimizer is not None else None
        else:
            norms, before = [], []
        w_before = foreach_norm(params, 2)
        self._pending = (step, params, idx, before, norms, w_before)

    @torch.no_grad()
    def _measure_norms(self) -> None:
        """The per-step pass: gradient L2 norms only, one fused kernel per device, one copy to the host."""
        params = list(self.model.parameters())
        step = self._step_of()
        self._refresh(params, step)
        if not params:
            return
        idx = tuple(i for i, p in enumerate(params) if p.grad is not None)
        device = params[0].device
        out = torch.full((NORM_ROWS, len(params)), math.nan, dtype=torch.float32, device=device)
        if idx:
            stack = self._stack if self._multi_device else torch.stack
            grads = [params[i].grad for i in idx]
            rows = stack(
                [
                    stack(foreach_norm(grads, 2, self._scale())),
                    torch.ones(len(idx), device=device),
                ]
            )
            skipped = _found_inf(self._amp)
            if len(idx) == len(params):
                out[:] = rows
            else:
                if self._cols is None or self._cols[0] != idx:
                    self._cols = (idx, torch.tensor(idx, device=device))
                out.index_copy_(1, self._cols[1], rows)
        if device.type == "cuda":
            buf = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            buf.copy_(out, non_blocking=True)
            event: Any = torch.cuda.Event()
            event.record()
        else:
            buf, event = out, None
        self._enqueue("norms", step, (buf, event, self._names, self._numel, skipped if idx else None))

    @torch.no_grad()
    def _measure_after(self) -> None:
        assert self._pending is not None
        step, params, idx, before, norms, w_before = self._pending
        device = params[0].device
        stack = self._stack if self._multi_device else torch.stack
        out = torch.full((ROWS, len(params)), math.nan, dtype=torch.float32, device=device)
        if idx:
            if before is not None:
                # before - after, in place: no second copy
                torch._foreach_sub_(before, [params[i] for i in idx])
                upd = foreach_norm(before, 2)
            else:
                upd = norms[0]
            del before
            rows = stack([stack(r) for r in (*norms, upd)] + [torch.ones(len(idx), device=device)])
            if self.optimizer is None:
                rows[_UPDATE] = math.nan
            skipped = _found_inf(self._amp)
            if len(idx) == len(params):
                out[:_N_GRAD_ROWS] = rows
            else:
                if self._cols is None or self._cols[0] != idx:
                    self._cols = (idx, torch.tensor(idx, device=device))
                out[:_N_GRAD_ROWS].index_copy_(1, self._cols[1], rows)
        out[_WEIGHT] = stack(foreach_norm(params, 2))
        out[_WEIGHT_BEFORE] = stack(w_before)
        if device.type == "cuda":
            buf = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            buf.copy_(out, non_blocking=True)
            event: Any = torch.cuda.Event()
            event.record()
        else:
            buf, event = out, None
        self._enqueue("stats", step, (buf, event, self._names, self._numel, skipped if idx else None))

    def _scale(self) -> Any:
        """The loss scale the gradients of a fused GradScaler step still carry, or ``None``."""
        return self._amp[0] if self._amp is not None else None

    def _stack(self, ts: list[Any]) -> Any:
        """``torch.stack`` for results on several devices (model parallelism): gathered on the first one."""
        device = ts[0].device
        return torch.stack([t.to(device, non_blocking=True) for t in ts])


def _amp_of(optimizer: Any) -> tuple[Any, Any] | None:
    """``(grad_scale, found_inf)`` while ``GradScaler.step`` steps a fused optimizer (it sets them as attributes
    around ``optimizer.step()``; ``grad_scale`` is ``None`` when the gradients were unscaled already), else
    ``None``."""
    found_inf = getattr(optimizer, "found_inf", None)
    if found_inf is None or not isinstance(found_inf, torch.Tensor):
        return None
    scale = getattr(optimizer, "grad_scale", None)
    return (scale if isinstance(scale, torch.Tensor) else None), found_inf


def _found_inf(amp: tuple[Any, Any] | None) -> Any:
    """A copy of a fused GradScaler step's ``found_inf`` (non-zero: the step is skipped), or ``None``."""
    return None if amp is None else amp[1].detach().reshape(-1)[:1].clone()


def _closure_index(args: Any) -> int | None:
    """Where the closure is among a step hook's ``args`` (``(optimizer, closure)``: torch passes ``self`` too)."""
    for i, a in enumerate(tuple(args)[:2]):
        if callable(a) and not hasattr(a, "param_groups"):
            return i
    return None


def closure_of(args: Any, kwargs: Any) -> Any:
    """The closure an ``optimizer.step(...)`` call was given (positional or ``closure=``), as a step hook sees
    the call, or ``None``."""
    if kwargs and kwargs.get("closure") is not None:
        return kwargs["closure"]
    i = _closure_index(args or ())
    return None if i is None else args[i]


def with_closure(args: Any, kwargs: Any, closure: Any) -> tuple[Any, Any]:
    """The ``(args, kwargs)`` of a step call with its closure replaced (what a step pre hook returns)."""
    if kwargs and kwargs.get("closure") is not None:
        return tuple(args), {**kwargs, "closure": closure}
    args = tuple(args)
    i = _closure_index(args)
    assert i is not None
    return (*args[:i], closure, *args[i + 1 :]), dict(kwargs or {})


class AfterClosure:
    """A step closure that runs the user's closure, then ``after()``: after its first call only (LBFGS calls it
    several times a step; the first call's gradients are the step's), or after every call (``every=True``).

    Args:
        closure: The user's closure.
        after: Called with no arguments.
        every: Call ``after`` after every call, not only the first.
    """

    __slots__ = ("after", "closure", "every")

    def __init__(self, closure: Any, after: Any, *, every: bool = False) -> None:
        self.closure = closure
        self.after = after
        self.every = every

    def __call__(self) -> Any:
        out = self.closure()
        after = self.after
        if after is not None:
            if not self.every:
                self.after = None
            after()
        return out


def _cpu_grad_norms(grads: list[Any], scale: Any = None) -> list[list[Any]]:
    """L2, max |g| and nonzero count on the CPU, where the fused L-inf and L0 norms are slow (14× and 2× the
    L2 norm on one thread): ``aminmax`` (NaN propagates) and ``count_nonzero`` per tensor are the fast kernels.
    ``scale``: a loss scale the gradients carry (divided out, see :func:`foreach_norm`)."""
    l2 = foreach_norm(grads, 2, scale)
    linf, l0 = [], []
    inv = None if scale is None else 1.0 / scale.detach().double().reshape(())
    for g in grads:
        lo, hi = torch.aminmax(g)
        m = torch.maximum(-lo, hi)
        linf.append(m.float() if inv is None else (m.double() * inv).float())
        l0.append(torch.count_nonzero(g).float())
    return [l2, linf, l0]


def stats_payload(buf: Any, event: Any, numel: np.ndarray) -> dict[str, Any]:
    """Turn a host buffer of :data:`ROWS` × P statistics into a ``param_stats`` payload (on the agent thread).

    Args:
        buf: The host tensor (pinned on CUDA).
        event: The CUDA event recorded after the copy, or ``None``.
        numel: Element count of each parameter tensor (float64).

    Returns:
        The ``param_stats`` record's ``d``.
    """
    if event is not None:
        event.synchronize()
    a = buf.numpy()
    if a.shape[1] != len(numel):  # the table changed between measuring and reading: fit to what was measured
        numel = np.resize(numel, a.shape[1])
    g2, gmax, nonzero = a[_GRAD_L2], a[_GRAD_MAX], a[_GRAD_NONZERO]
    has = a[_HAS_GRAD] == 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        zero = np.where(has, (numel - nonzero.astype(np.float64)) / np.maximum(numel, 1), np.nan)
        ratio = np.where(has, a[_UPDATE].astype(np.float64) / a[_WEIGHT_BEFORE], np.nan)
        # NaN anywhere makes the L2 norm NaN; an Inf entry makes the max Inf (a finite gradient whose L2 norm
        # overflows float32 is not flagged).
        nonfinite = has & (np.isnan(g2) | ~np.isfinite(gmax))
        total = float(np.sqrt(np.sum(np.square(g2[has].astype(np.float64))))) if has.any() else math.nan
    return {
        "grad_norm": np.ascontiguousarray(g2, dtype=np.float32),
        "grad_max": np.ascontiguousarray(gmax, dtype=np.float32),
        "grad_zero": zero.astype(np.float32),
        "grad_nonfinite": nonfinite.astype(np.uint8),
        "has_grad": has.astype(np.uint8),
        "weight_norm": np.ascontiguousarray(a[_WEIGHT], dtype=np.float32),
        "weight_nonfinite": (~np.isfinite(a[_WEIGHT_BEFORE])).astype(np.uint8),
        "update_ratio": ratio.astype(np.float32),
        "global_grad_norm": total,
    }


def norms_payload(buf: Any, event: Any) -> dict[str, Any]:
    """Turn a host buffer of :data:`NORM_ROWS` × P norms into a ``grad_norms`` payload (on the agent thread).

    The non-finite flag is derived from the L2 norm alone: a NaN or Inf entry makes the norm NaN or Inf, so a
    non-finite norm flags every such gradient. The converse has one exception: a gradient whose entries are all
    finite but so large that the sum of their squares overflows float32 (|g| around 1e19 and more) also has an Inf
    norm and is flagged too (the full pass tells the two apart with the max |g|).

    Args:
        buf: The host tensor (pinned on CUDA).
        event: The CUDA event recorded after the copy, or ``None``.

    Returns:
        The ``grad_norms`` record's ``d``: ``grad_norm``, ``grad_nonfinite``, ``has_grad``, ``global_grad_norm``.
    """
    if event is not None:
        event.synchronize()
    a = buf.numpy()
    g2 = a[0]
    has = a[1] == 1.0
    nonfinite = has & ~np.isfinite(g2)
    with np.errstate(invalid="ignore", over="ignore"):
        total = float(np.sqrt(np.sum(np.square(g2[has].astype(np.float64))))) if has.any() else math.nan
    return {
        "grad_norm": np.ascontiguousarray(g2, dtype=np.float32),
        "grad_nonfinite": nonfinite.astype(np.uint8),
        "has_grad": has.astype(np.uint8),
        "global_grad_norm": total,
    }
