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

Memory: on sampled steps only, one transient copy of the parameters that have a gradient (freed by the post hook),
plus ``ROWS × P`` floats; nothing retained grows with the length of training.

This module imports torch; :mod:`tuimon_agent.monitor` imports it only when it is given a model and an optimizer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

# Rows of the stacked statistics tensor: those measured only for parameters with a gradient come first.
_GRAD_L2, _GRAD_MAX, _GRAD_NONZERO, _UPDATE, _HAS_GRAD, _WEIGHT, _WEIGHT_BEFORE = range(7)
_N_GRAD_ROWS = 5
ROWS = 7


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
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"invalid stats_every={every!r}: must be an int >= 1 (or 0 for off)")
        self.model = unwrap(model)
        self.optimizer = optimizer
        self.every = every
        self._enqueue = enqueue
        self._step_of = step_of
        self._on_error = on_error
        self._calls = 0
        self._off = False
        self._ids: tuple[int, ...] = ()
        self._names: tuple[str, ...] = ()
        self._numel: np.ndarray = np.zeros(0)
        self._pending: tuple[Any, ...] | None = None
        self._multi_device = False
        self._cols: tuple[tuple[int, ...], Any] | None = None
        self._handles: list[Any] = []
        self.after_step: Any = None
        """Called with the count of optimizer steps taken, after each (:class:`ActStats` arms itself there)."""
        self.after_post: Any = None
        """Called with the count of optimizer steps taken at the end of each post hook, after this step's
        statistics (:class:`ParamHist` bins there: one optimizer hook for both)."""

    def install(self) -> list[Any]:
        """Emit the ``layers`` table and register the hooks.

        Returns:
            The hook handles (``handle.remove()`` undoes each).
        """
        self._refresh(list(self.model.parameters()), None)
        self._handles = [
            self.optimizer.register_step_pre_hook(self._pre),
            self.optimizer.register_step_post_hook(self._post),
        ]
        return self._handles

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

    def _pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Called before every ``optimizer.step()``: on a sampled step, measure the gradients, copy the weights."""
        if self._off:
            return
        self._calls += 1
        self._pending = None
        if self._calls % self.every:
            return
        try:
            self._measure_before()
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
        f32 = torch.float32
        if grads:
            if grads[0].device.type == "cpu":
                norms = _cpu_grad_norms(grads)
            else:
                norms = [torch._foreach_norm(grads, o, dtype=f32) for o in (2, math.inf, 0)]
            before = [
                params[i].detach().clone() for i in idx
            ]  # the one transient copy, freed by the post hook
        else:
            norms, before = [], []
        w_before = torch._foreach_norm(params, 2, dtype=f32)
        self._pending = (step, params, idx, before, norms, w_before)

    @torch.no_grad()
    def _measure_after(self) -> None:
        assert self._pending is not None
        step, params, idx, before, norms, w_before = self._pending
        device = params[0].device
        stack = self._stack if self._multi_device else torch.stack
        out = torch.full((ROWS, len(params)), math.nan, dtype=torch.float32, device=device)
        if idx:
            torch._foreach_sub_(before, [params[i] for i in idx])  # before - after, in place: no second copy
            upd = torch._foreach_norm(before, 2, dtype=torch.float32)
            del before
            rows = stack([stack(r) for r in (*norms, upd)] + [torch.ones(len(idx), device=device)])
            if len(idx) == len(params):
                out[:_N_GRAD_ROWS] = rows
            else:
                if self._cols is None or self._cols[0] != idx:
                    self._cols = (idx, torch.tensor(idx, device=device))
                out[:_N_GRAD_ROWS].index_copy_(1, self._cols[1], rows)
        out[_WEIGHT] = stack(torch._foreach_norm(params, 2, dtype=torch.float32))
        out[_WEIGHT_BEFORE] = stack(w_before)
        if device.type == "cuda":
            buf = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            buf.copy_(out, non_blocking=True)
            event: Any = torch.cuda.Event()
            event.record()
        else:
            buf, event = out, None
        self._enqueue("stats", step, (buf, event, self._names, self._numel))

    def _stack(self, ts: list[Any]) -> Any:
        """``torch.stack`` for results on several devices (model parallelism): gathered on the first one."""
        device = ts[0].device
        return torch.stack([t.to(device, non_blocking=True) for t in ts])


def _cpu_grad_norms(grads: list[Any]) -> list[list[Any]]:
    """L2, max |g| and nonzero count on the CPU, where the fused L-inf and L0 norms are slow (14× and 2× the
    L2 norm on one thread): ``aminmax`` (NaN propagates) and ``count_nonzero`` per tensor are the fast kernels."""
    l2 = torch._foreach_norm(grads, 2, dtype=torch.float32)
    linf, l0 = [], []
    for g in grads:
        lo, hi = torch.aminmax(g)
        linf.append(torch.maximum(-lo, hi).float())
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
        "update_ratio": ratio.astype(np.float32),
        "global_grad_norm": total,
    }


# -- activations and inputs (forward hooks) ---------------------------------------------------------------------------

EPS = 0.01
"""Saturation margin: tanh outputs with ``|y| > 1 - EPS`` and sigmoid outputs below ``EPS`` or above ``1 - EPS``."""
INPUT_CHANNELS_MAX = 256
"""Input statistics keep at most this many channels (features) of the first tensor argument."""
# Rows of the stacked activation statistics tensor ``[ACT_ROWS, M]``.
_A_MEAN, _A_STD, _A_DEAD, _A_SAT, _A_NONFINITE = range(5)
ACT_ROWS = 5

_RELU_FAMILY = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU)
_TANH = (torch.nn.Tanh,)
_SIGMOID = (torch.nn.Sigmoid,)
_NORMS = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
    torch.nn.InstanceNorm3d,
    *((torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ()),
)
WATCHED_TYPES: tuple[type, ...] = (
    torch.nn.Linear,
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.Conv3d,
    torch.nn.RNNBase,
    torch.nn.MultiheadAttention,
    *_NORMS,
    *_RELU_FAMILY,
    *_TANH,
    *_SIGMOID,
    torch.nn.ELU,
    torch.nn.GELU,
    torch.nn.SiLU,
    torch.nn.Mish,
    torch.nn.Softmax,
    torch.nn.Softplus,
)
"""Module types whose outputs are measured (subclasses included)."""


def module_table(model: Any) -> list[dict[str, str]]:
    """The ``modules`` record's list: every module of :data:`WATCHED_TYPES`, in model order
    (``named_modules()``), the root excluded.

    Args:
        model: The (unwrapped) module.

    Returns:
        ``[{"name", "type"}, ...]``; the index is the column index of ``act_stats`` arrays.
    """
    return [
        {"name": name, "type": type(m).__name__}
        for name, m in model.named_modules()
        if name and isinstance(m, WATCHED_TYPES)
    ]


def _first_tensor(x: Any) -> Any:
    """``x`` itself, or the first tensor of a tuple/list output (RNNs, ``MultiheadAttention``), else ``None``."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for v in x:
            if isinstance(v, torch.Tensor):
                return v
    return None


class ActStats:
    """Measures the outputs of the model's layers and its input on the forward pass of sampled steps.

    The forward of optimizer step ``k`` (counted like :class:`ParamStats`: the steps with ``k % every == 0``
    are sampled) comes after the ``optimizer.step()`` of step ``k - 1``, so that step's post hook *arms* the
    monitor; the root module's forward pre hook then starts a measuring pass (when the root is in training
    mode) and disarms; each watched module's forward hook measures its output on the device; the root's forward
    hook stacks the rows into one ``[ACT_ROWS, M]`` float32 tensor (plus ``[4, C]`` for the input), copies them to
    the host without waiting (pinned memory and an event on CUDA) and queues them. Outside a measuring pass every
    hook is one attribute test. Hooks are closures over this object (``copy.deepcopy(model)`` shares them; they
    ignore every forward but the watched root's).

    Args:
        model: The module (wrappers are unwrapped).
        steps: The :class:`ParamStats` of the same optimizer: its step post hook counts the steps and arms this
            (``every`` is its interval).
        enqueue: ``enqueue(kind, step, payload)`` with ``kind`` ``"modules"`` or ``"acts"``.
        step_of: The step the record of the forward being measured belongs to.
        on_error: Called with any exception from a hook; the hooks then do nothing more.
    """

    def __init__(self, model: Any, steps: ParamStats, *, enqueue: Any, step_of: Any, on_error: Any) -> None:
        self.model = unwrap(model)
        self._steps_from = steps
        every = steps.every
        self.every = every
        self._enqueue = enqueue
        self._step_of = step_of
        self._on_error = on_error
        self._armed = every == 1
        self._measuring = False
        self._off = False
        self._rows: list[Any] = []
        self._input: Any = None
        self._shape: list[int] = []
        self._handles: list[Any] = []
        self._modules: list[Any] = []
        self._names: tuple[str, ...] = ()

    def install(self) -> list[Any]:
        """Queue the ``modules`` index and register the hooks; returns their handles."""
        table = module_table(self.model)
        by_name = dict(self.model.named_modules())
        self._modules = [by_name[e["name"]] for e in table]
        self._names = tuple(e["name"] for e in table)
        self._enqueue("modules", None, {"modules": table})
        root = self.model
        self._steps_from.after_step = self._after_step
        h = [root.register_forward_pre_hook(self._make_root_pre(root), with_kwargs=True)]
        for i, m in enumerate(self._modules):
            h.append(m.register_forward_hook(self._make_hook(i, m)))
        h.append(root.register_forward_hook(self._make_root_post(root)))
        self._handles = h
        return h

    def remove(self) -> None:
        """Remove every hook. Safe to call twice."""
        self._off = True
        self._measuring = False
        self._rows = []
        self._input = None
        if self._steps_from.after_step == self._after_step:
            self._steps_from.after_step = None
        for h in self._handles:
            h.remove()
        self._handles = []

    def _fail(self, exc: BaseException) -> None:
        self._off = True
        self._measuring = False
        self._rows = []
        self._on_error(exc)

    def _after_step(self, steps: int) -> None:
        """After optimizer step ``steps``: arm when the next one is sampled."""
        if not self._off:
            self._armed = (steps + 1) % self.every == 0

    def _make_root_pre(self, root: Any) -> Any:
        def pre(module: Any, args: Any, kwargs: Any) -> None:
            if not self._armed or self._off or module is not root or not module.training or self._measuring:
                return
            self._armed = False
            try:
                self._start(args, kwargs)
            except Exception as exc:
                self._fail(exc)

        return pre

    def _make_hook(self, i: int, m: Any) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            if not self._measuring or module is not m:
                return
            try:
                if self._rows[i] is None:  # a module called twice in one forward: its first call counts
                    self._rows[i] = self._measure(i, m, output)
            except Exception as exc:
                self._fail(exc)

        return hook

    def _make_root_post(self, root: Any) -> Any:
        def post(module: Any, args: Any, output: Any) -> None:
            if not self._measuring or module is not root:
                return
            try:
                self._finish()
            except Exception as exc:
                self._fail(exc)

        return post

    @torch.no_grad()
    def _start(self, args: Any, kwargs: Any) -> None:
        self._rows = [None] * len(self._modules)
        self._input, self._shape = None, []
        x = _first_tensor(list(args) + list(kwargs.values()))
        if x is not None and x.numel():
            self._shape = list(x.shape)
            self._input = _input_rows(x.detach())
        self._measuring = True

    @torch.no_grad()
    def _measure(self, i: int, m: Any, output: Any) -> Any:
        """One module's ``[mean, std, dead, saturated, nonfinite]`` on the device (no host synchronisation).

        Two passes: the mean from a float32 sum, the std as ``‖y - mean‖ / sqrt(n)`` (``std_mean`` is 20-40×
        slower on one CPU thread; one pass over sum and sum of squares loses the std of a nearly constant output).
        """
        y = _first_tensor(output)
        if y is None or not y.numel() or not y.is_floating_point():
            return None
        y = y.detach()
        if y.dtype != torch.float32:
            y = y.float()
        n = y.numel()
        total = y.sum()
        mean = total / n
        norm = torch.linalg.vector_norm(y - mean)
        std = norm / math.sqrt(n)
        nan = torch.full((), math.nan, device=y.device)
        dead = sat = nan
        if isinstance(m, _RELU_FAMILY):
            if y.dim() >= 2:
                dims = [d for d in range(y.dim()) if d != 1]
                peak = (y if not isinstance(m, torch.nn.LeakyReLU) else y.abs()).amax(dim=dims)
                dead = (peak == 0).float().mean()
            else:
                dead = (y == 0).float().mean()
        elif isinstance(m, _TANH):
            sat = torch.count_nonzero(y.abs() > 1 - EPS).float() / n
        elif isinstance(m, _SIGMOID):
            sat = torch.count_nonzero((y - 0.5).abs() > 0.5 - EPS).float() / n
        # A NaN or Inf anywhere makes the sum or the norm non-finite (so would a float32 overflow of finite values
        # far beyond any healthy activation).
        bad = (~(torch.isfinite(total) & torch.isfinite(norm))).float()
        return torch.stack([mean, std, dead, sat, bad])

    @torch.no_grad()
    def _finish(self) -> None:
        self._measuring = False
        rows, self._rows = self._rows, []
        step = self._step_of()
        present = [r for r in rows if r is not None]
        device = present[0].device if present else (self._input.device if self._input is not None else None)
        if device is None:
            return
        # A module not called in this forward (or with no floating-point output) gets a NaN column.
        missing = torch.full((ACT_ROWS,), math.nan, dtype=torch.float32, device=device)
        cols = [missing if r is None else r.to(device, non_blocking=True) for r in rows]
        out = torch.stack(cols, dim=1) if cols else torch.empty((ACT_ROWS, 0), device=device)
        tensors = [out]
        if self._input is not None:
            tensors.append(self._input.to(device, non_blocking=True))
        self._input = None
        if device.type == "cuda":
            bufs = []
            for t in tensors:
                b = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                b.copy_(t, non_blocking=True)
                bufs.append(b)
            event: Any = torch.cuda.Event()
            event.record()
        else:
            bufs, event = tensors, None
        self._enqueue("acts", step, (bufs, event, self._names, self._shape))


def _input_rows(x: Any) -> Any:
    """Per channel ``[mean, std, min, max]`` (``[4, C]`` float32, population std) of a model input: channel = dim 1
    for ``(N, C, ...)`` and ``(N, F)`` (first :data:`INPUT_CHANNELS_MAX`), one channel otherwise."""
    x = x.float() if not x.is_complex() else x.abs()
    if x.dim() >= 2:
        c = min(x.shape[1], INPUT_CHANNELS_MAX)
        x = x[:, :c].transpose(0, 1).reshape(c, -1)
    else:
        x = x.reshape(1, -1)
    std, mean = torch.std_mean(x, dim=1, correction=0)
    lo, hi = torch.aminmax(x, dim=1)
    return torch.stack([mean, std, lo, hi])


def act_payloads(
    bufs: list[Any], event: Any, shape: list[int]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Turn the host buffers of one measured forward into the ``act_stats`` and ``input_stats`` payloads (agent
    thread).

    Returns:
        ``(act_stats, input_stats or None)``.
    """
    if event is not None:
        event.synchronize()
    a = bufs[0].numpy()
    acts = {
        "mean": np.ascontiguousarray(a[_A_MEAN], dtype=np.float32),
        "std": np.ascontiguousarray(a[_A_STD], dtype=np.float32),
        "dead": np.ascontiguousarray(a[_A_DEAD], dtype=np.float32),
        "saturated": np.ascontiguousarray(a[_A_SAT], dtype=np.float32),
        "nonfinite": (a[_A_NONFINITE] == 1.0).astype(np.uint8),
    }
    inputs = None
    if len(bufs) > 1:
        b = bufs[1].numpy()
        inputs = {
            "shape": [int(d) for d in shape],
            "mean": np.ascontiguousarray(b[0], dtype=np.float32),
            "std": np.ascontiguousarray(b[1], dtype=np.float32),
            "min": np.ascontiguousarray(b[2], dtype=np.float32),
            "max": np.ascontiguousarray(b[3], dtype=np.float32),
        }
    return acts, inputs


# -- weight and gradient histograms (optimizer step post hook) ---------------------------------------------------------

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

    Memory: on sampled steps, a few transient per-element buffers of the largest parameter tensor (its int64 bin
    indices, a float32 copy when it is not float32); nothing retained grows with training.

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
            self._handles = [self.optimizer.register_step_post_hook(self._post)]
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
            lo, hi = _finite_range(flat, device)
            lower, upper, origin, width = _bin_edges(lo, hi, b)
            ok = lo <= hi
            ranges_found = torch.stack([torch.where(ok, lo, nan2[0]), torch.where(ok, hi, nan2[0])], dim=1)
            for k, x in enumerate(flat):
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


def _flat(t: Any) -> Any:
    x = t.detach().reshape(-1)
    return x if x.dtype == torch.float32 else x.float()


def _finite_range(flat: list[Any], device: Any) -> tuple[Any, Any]:
    """The min and max of each tensor's finite values (``float32[N]`` on ``device``).

    A non-finite entry is replaced by the largest (smallest) float, which changes neither; a tensor with no finite
    entry gets ``lo > hi`` (±big), reported as NaN. On the CPU, where nothing is asynchronous, one plain ``aminmax``
    per tensor comes first and the replacing pass (4× slower) runs only for the tensors whose range is not finite
    (one read of the stacked ranges per pass); on an accelerator every tensor takes the replacing pass, so that
    nothing waits for the device.
    """
    n = len(flat)
    bad = range(n)
    lo: list[Any] = [None] * n
    hi: list[Any] = [None] * n
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
