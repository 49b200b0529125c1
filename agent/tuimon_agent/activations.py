"""Activation health and input statistics, measured by forward hooks on sampled training forwards (issue 3).

:class:`ActStats` registers forward hooks once; they return after one attribute test unless the step post hook of
:class:`~tuimon_agent.instruments.ParamStats` armed them for a sampled step. Then the next training-mode forward of
the watched model is measured (mean, std, NaN/Inf; dead ReLU-family units; saturated tanh/sigmoid outputs; the
input's per-channel mean/std/min/max), stacked into one tensor and handed to the agent thread
(:func:`act_payloads`). This module imports torch; the monitor imports it only when given a model and an optimizer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .instruments import Hook, ParamStats, unwrap

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
    hook is one attribute test. Hooks are :class:`~tuimon_agent.instruments.Hook` objects: ``torch.save``, ``pickle``
    and ``copy.deepcopy`` of the model work, and the copy's hooks are inert.

    NaN provenance (:mod:`tuimon_agent.provenance`): on the CPU (:attr:`checks_outputs`) the root's hooks also keep
    every training forward's arguments and CPU random state and check its output with one ``isfinite``; the first
    non-finite output is replayed at once (:meth:`_replay`) and its first non-finite module queued (``"prov"``).
    :meth:`force_next` (agent thread) arms the next forward and the optimizer step after it.

    Args:
        model: The module (wrappers are unwrapped).
        steps: The :class:`ParamStats` of the same optimizer: its step post hook counts the steps and arms this
            (``every`` is its interval).
        enqueue: ``enqueue(kind, step, payload)`` with ``kind`` ``"modules"``, ``"acts"`` or ``"prov"``.
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
        self._order: list[int] = []  # module indices in call order, during a measuring pass
        self._forced = False
        self._replaying = False
        self._last: Any = None  # (args, kwargs, CPU RNG state) of the latest training forward
        self._prov_done = False
        self.checks_outputs = False
        """Every training-mode forward's output is checked for NaN/Inf, and the first non-finite one replayed
        (:meth:`_replay`): set by :meth:`install` when the model is on the CPU (elsewhere reading the check would
        synchronise with the device)."""

    def outputs_checked(self) -> bool:
        """Whether training forwards' outputs are still being checked (read by the agent thread)."""
        return self.checks_outputs

    def force_next(self) -> None:
        """Measure the next training forward and the optimizer step after it in full (called from the agent thread
        after a non-finite loss; only sets flags)."""
        self._forced = True
        self._armed = True

    def install(self) -> list[Any]:
        """Queue the ``modules`` index and register the hooks; returns their handles."""
        self.checks_outputs = all(p.device.type == "cpu" for p in self.model.parameters())
        table = module_table(self.model)
        by_name = dict(self.model.named_modules())
        self._modules = [by_name[e["name"]] for e in table]
        self._names = tuple(e["name"] for e in table)
        self._enqueue("modules", None, {"modules": table})
        root = self.model
        self._steps_from.after_step = self._after_step
        h = [root.register_forward_pre_hook(Hook(self._make_root_pre(root)), with_kwargs=True)]
        for i, m in enumerate(self._modules):
            h.append(m.register_forward_hook(Hook(self._make_hook(i, m))))
        h.append(root.register_forward_hook(Hook(self._make_root_post(root))))
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
            self._armed = (steps + 1) % self.every == 0 or self._forced

    def _make_root_pre(self, root: Any) -> Any:
        def pre(module: Any, args: Any, kwargs: Any) -> None:
            if self._off or module is not root or self._measuring:
                return
            if not module.training:
                self._last = None
                return
            if self.checks_outputs and not self._prov_done:
                self._last = (args, kwargs, torch.get_rng_state())  # for a replay, should this forward go NaN
            if not self._armed:
                return
            self._armed = False
            if self._forced:  # the optimizer step after this forward is measured too
                self._forced = False
                self._steps_from.force_next()
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
                    self._order.append(i)
            except Exception as exc:
                self._fail(exc)

        return hook

    def _make_root_post(self, root: Any) -> Any:
        def post(module: Any, args: Any, output: Any) -> None:
            if module is not root or self._replaying:
                return
            try:
                if self._measuring:
                    self._finish()
                if self._last is not None and not self._off:
                    self._check_output(root, output)
            except Exception as exc:
                self._fail(exc)

        return post

    def _check_output(self, root: Any, output: Any) -> None:
        """Every training forward on the CPU: the first non-finite output is replayed to find its first layer."""
        y = _first_tensor(output)
        if y is None or not y.is_floating_point() or y.device.type != "cpu":
            # An output this cannot read (a dict, integers, moved off the CPU): checks stop, the loss decides.
            self.checks_outputs = False
            self._last = None
            return
        if not y.numel():
            return
        lo, hi = torch.aminmax(y.detach())  # NaN propagates, ±Inf is an extreme: 12× cheaper than isfinite().all()
        if -math.inf < float(lo) and float(hi) < math.inf:
            return
        self._prov_done = True
        last, self._last = self._last, None
        try:
            found = self._replay(root, *last)
        except Exception as exc:  # the model's forward would not run twice: say so, keep monitoring
            msg = f"the replay failed ({type(exc).__name__}: {exc})"[:300]
            found = {"of": "activation", "layer": None, "weights": [], "note": msg}
        self._enqueue("prov", self._step_of(), found)

    def _replay(self, root: Any, args: Any, kwargs: Any, rng: Any) -> dict[str, Any]:
        """Run the forward again from the same arguments and CPU random state, under ``no_grad`` with every module
        measured; restore the buffers and the random state. Returns ``{"of", "layer", "weights"}``: the first
        module in call order whose output is not finite, and why (see :mod:`tuimon_agent.provenance`)."""
        buffers = list(root.buffers())
        with torch.no_grad():
            saved = [b.detach().clone() for b in buffers]
        now = torch.get_rng_state()
        torch.set_rng_state(rng)
        self._replaying = True
        try:
            with torch.no_grad():
                self._start(args, kwargs)
                self._input = None
                root(*args, **kwargs)
            rows, order = self._rows, self._order
        finally:
            self._measuring = self._replaying = False
            self._rows, self._order = [], []
            torch.set_rng_state(now)
            with torch.no_grad():
                for b, s in zip(buffers, saved, strict=True):
                    b.copy_(s)
        with torch.no_grad():
            x = _first_tensor(list(args) + list(kwargs.values()))
            input_bad = x is not None and x.is_floating_point() and not bool(torch.isfinite(x).all())
            bad_params = {
                name.rpartition(".")[0]
                for name, p in self.model.named_parameters()
                if p.is_floating_point() and not bool(torch.isfinite(p).all())
            }
        first = next((i for i in order if rows[i] is not None and rows[i][_A_NONFINITE] == 1), None)
        layer = self._names[first] if first is not None else None
        weights = [self._names[i] for i in order if self._names[i] in bad_params]
        weights += sorted(bad_params.difference(weights))
        if input_bad:
            of = "input"
        elif layer is not None and layer in bad_params:
            of = "weight"
        elif layer is None and weights:
            of, layer = "weight", weights[0]
        else:
            of = "activation"
        return {"of": of, "layer": layer, "weights": weights}

    @torch.no_grad()
    def _start(self, args: Any, kwargs: Any) -> None:
        self._rows = [None] * len(self._modules)
        self._order = []
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
        order, self._order = self._order, []
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
        self._enqueue("acts", step, (bufs, event, self._names, self._shape, order))


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
