"""The training-thread side: :func:`watch` and :class:`Monitor`."""

from __future__ import annotations

import atexit
import collections
import functools
import operator
import os
import signal
import socket
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import discovery, protocol
from .control_api import ControlMixin
from .transport import _STEP_LIMIT, AgentThread, RunConfig

_time = time.time

# Queue item tags (the training thread enqueues plain tuples; the agent thread turns them into records).
_LOG = 0
_EVAL = 1
_OPT = 2
_END = 3
_CHECK = 4
_LAYERS = 5
_STATS = 6
_MODULES = 7
_ACTS = 8
_HIST = 9
_ENQUEUE_TAGS = {"layers": _LAYERS, "stats": _STATS, "modules": _MODULES, "acts": _ACTS, "hist": _HIST}
_PROBE = 20  # feature maps of the probe input (probe.py); numbered apart from the tags above
_ENQUEUE_TAGS["probe"] = _PROBE
_PROV = 30  # the replay of the first non-finite forward (activations.py, provenance.py)
_ENQUEUE_TAGS["prov"] = _PROV
_EVENT = 31  # an event payload from the training thread, emitted as is
_ENQUEUE_TAGS["event"] = _EVENT
_NORMS = 32  # per-step gradient norms (instruments.py, norms_every)
_ENQUEUE_TAGS["norms"] = _NORMS
_COMPILED_EVENT = {
    "what": "activations_unavailable",
    "message": "activation and input statistics are off under torch.compile: forward hooks inside a compiled "
    "graph would break it (or recompile it) on sampled steps; parameter statistics and histograms, measured on "
    "the eager parameters at the optimizer step, are on",
}

_SEVERAL_MODELS_EVENT = {
    "what": "activations_unavailable",
    "message": "activation and input statistics are off with several models (watch([g, d], ...)): parameter "
    "statistics and histograms cover every model's parameters",
}

DEFAULT_QUEUE = 100_000

DEFAULT_STATS_EVERY = 50
"""Optimizer steps between two per-parameter statistics passes (``watch(..., stats_every=N)``). One pass costs a
few times the memory traffic of an optimizer step (reads of the gradients, one copy and three reads of the
weights): measured on one CPU thread (``tests/benchmarks/bench_instruments.py``) 15-37 % of a training step of a
10 M-parameter, 200-tensor MLP with Adam at batch 128 (an optimizer-heavy worst case) and about 0.5 % on the demo CNN, so
every 50th step keeps the average under 1 % even there."""

DEFAULT_HIST_EVERY = 500
"""Optimizer steps between two weight and gradient histogram passes (``watch(..., hist_every=N)``). Measured on one
CPU thread (``tests/benchmarks/bench_instruments.py``): one pass over the 200-tensor, 10 M-parameter MLP (every
weight and gradient read about ten times) costs about 125-160 ms of CPU against a 150-180 ms training step, so
every 500th step averages about 0.2 % of a step there (0.01 % on the demo CNN); 8-10× cheaper than
``SummaryWriter.add_histogram`` for the same tensors in CPU time, 15× wall-clock (a loaded shared machine). Not yet
measured on a GPU."""
DEFAULT_HIST_BINS = 32
"""Bins per histogram (``watch(..., hist_bins=N)``)."""
DEFAULT_PROBE_EVERY = 500
"""Optimizer steps between two feature-map passes on the probe input (``watch(..., probe=x, probe_every=N)``): one
eval-mode forward of a batch of one plus a few small kernels per captured layer; measured in
``tests/benchmarks/bench_probe.py``."""

_live: weakref.WeakSet[Monitor] = weakref.WeakSet()
_hooks_installed = False
_prev_sigterm: Any = None


def _warn(message: str) -> None:
    try:
        print(f"tuimon: {message}", file=sys.stderr, flush=True)
    except Exception:  # stderr closed: nothing more to do
        pass


class Monitor(ControlMixin):
    """Publishes a training run's metrics to tuimon viewers and its run file, without slowing down training.

    The training thread only appends to a bounded in-memory queue (about a microsecond per :meth:`log`); an agent
    thread converts tensors, encodes, publishes over ZeroMQ and commits to the SQLite run file. When the queue is
    full the oldest item is dropped and counted, never waited on. Any internal failure disables the monitor with one
    warning on stderr; it never raises into the training loop. Use :func:`watch` to create one.

    Steps: with an optimizer, the monitor counts its steps (the first one's, with several) and stamps each step's
    ``opt/*`` values and statistics with it, so a loop that calls :meth:`log` every 10th step still has every
    step's values at their own step; :meth:`log`'s default step is that count when the optimizer stepped since the
    previous :meth:`log`, else one more than the previous step. ``optimizer.step(closure)`` (LBFGS, Lightning) is
    measured after the closure's first call, when its gradients exist.

    Mixed precision: under ``torch.amp.GradScaler`` a fused optimizer is stepped even on overflow steps (with inf
    gradients); such a step is counted (``amp/skipped_steps``, ``amp/scale``), its statistics are dropped and it
    never raises a NaN alert. Gradient statistics are reported unscaled (divided by the scale the scaler used).
    A non-fused optimizer's overflow steps are skipped by the scaler itself; pass ``scaler=`` to record the scale
    and count them.

    Args:
        model: A ``torch.nn.Module`` whose layers the hello record describes, a list of modules (a GAN's
            generator and discriminator: statistics over all of them, activation statistics off), or ``None``.
        optimizer: A ``torch.optim.Optimizer`` whose param groups' hyperparameters are recorded every step, a
            wrapper of one (accelerate, Lightning, ZeRO-style ``.optimizer``: unwrapped), a list of them (``opt/``
            for the first, ``opt/o1/`` for the second, ...; the first counts the steps, live commands apply to
            it), or ``None``: then, given a model, statistics are measured at :meth:`log` from its gradients
            and live commands are unavailable (the hello's ``commands_unavailable`` says why).
        run: The run's name (default: the script's name).
        dir: Where run directories go (default ``$TUIMON_DIR`` or ``./tuimon-runs``).
        endpoint: ``"ipc"`` (default: sockets in the private runtime directory), ``"tcp"`` (127.0.0.1, a free
            port P for PUB and P+1 for ROUTER) or ``"tcp://127.0.0.1:PORT"`` (PUB on PORT, ROUTER on PORT+1).
        queue_size: Items the queue holds before it drops the oldest.
        commit_interval: Seconds between run-file commits (what SIGKILL can lose at most).
        persist: Write the run file.
        publish: Open sockets and a connection file for live viewers.
        stats_every: Optimizer steps between two per-parameter gradient and weight statistics passes
            (``param_stats`` records; needs both ``model`` and ``optimizer``): ``1`` every step, ``0`` off.
            A sampled step briefly holds one extra copy of the parameters that have a gradient.
        norms_every: Optimizer steps between two cheap gradient-norm passes on the steps that are not full
            samples (``grad_norms`` records: per-tensor gradient L2 norms from one fused ``torch._foreach_norm``,
            the non-finite flag derived from them, and the global norm; needs ``stats_every > 0``). ``1``: every
            step, which also makes the first non-finite gradient's step exact (NaN provenance). ``None``
            (default): off. Measured in ``tests/benchmarks/bench_instruments.py``.
        activations: On the same sampled steps, also measure the outputs of the model's layers and its input
            during the training-mode forward (``modules``, ``act_stats`` and ``input_stats`` records; forward
            hooks, removed on close). Not installed on a ``torch.compile``'d model (one ``activations_unavailable``
            event says so). On the CPU the same hooks check every training forward's output and replay the first
            non-finite one to find its first layer (NaN provenance, ``tuimon_agent.provenance``).
        hist_every: Optimizer steps between two weight and gradient histogram passes (``histograms`` records,
            binned on the device after the step; needs both ``model`` and ``optimizer``): ``1`` every step,
            ``0`` off.
        hist_bins: Bins per histogram (1 to 4096).
        alerts: Run the diagnosis rules (``tuimon_agent.alerts``) on the agent thread and emit ``alert`` records
            (never on the training thread).
        scheduler: An LR scheduler (or a list) under which a live ``set_lr`` must persist; schedulers that refer
            to the optimizer are also found on their own (see ``tuimon_agent.schedulers``).
        probe: A fixed input (one sample, or a batch whose first sample is used) whose feature maps are recorded
            every ``probe_every`` optimizer steps (``feature_maps`` records; needs ``model`` and ``optimizer``).
            ``None`` (default): off. See ``tuimon_agent.probe.ProbeMaps`` for how training is left untouched.
        probe_every: Optimizer steps between two probe passes (the first is at the first step); ``0`` off.
        probe_layers: Module names whose outputs are captured (default: up to four Conv2d layers, each as seen
            after its activation module).
        probe_channels: Leading channels kept per layer (1 to 64), or a list of channel indices.
        scaler: The ``torch.amp.GradScaler`` of a mixed-precision loop (optional): its scale is recorded at each
            :meth:`log` as ``amp/scale`` and a lower scale than the previous counts as a skipped step.

    Raises:
        ValueError: An option with a bad value (at the call; nothing is raised once training runs).
    """

    def __init__(
        self,
        model: Any = None,
        optimizer: Any = None,
        *,
        run: str | None = None,
        dir: str | os.PathLike[str] | None = None,
        endpoint: str | None = None,
        queue_size: int = DEFAULT_QUEUE,
        commit_interval: float = 0.25,
        persist: bool = True,
        publish: bool = True,
        stats_every: int = DEFAULT_STATS_EVERY,
        norms_every: int | None = None,
        activations: bool = True,
        hist_every: int = DEFAULT_HIST_EVERY,
        hist_bins: int = DEFAULT_HIST_BINS,
        alerts: bool = True,
        scheduler: Any = None,
        probe: Any = None,
        probe_every: int = DEFAULT_PROBE_EVERY,
        probe_layers: Any = None,
        probe_channels: Any = 8,
        scaler: Any = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"invalid queue_size={queue_size!r}: must be an int >= 1")
        if not commit_interval > 0:
            raise ValueError(f"invalid commit_interval={commit_interval!r}: must be a number > 0")
        if isinstance(stats_every, bool) or not isinstance(stats_every, int) or stats_every < 0:
            raise ValueError(f"invalid stats_every={stats_every!r}: must be an int >= 0 (0: off)")
        if norms_every is not None and (
            isinstance(norms_every, bool) or not isinstance(norms_every, int) or norms_every < 1
        ):
            raise ValueError(f"invalid norms_every={norms_every!r}: must be an int >= 1, or None for off")
        if isinstance(hist_every, bool) or not isinstance(hist_every, int) or hist_every < 0:
            raise ValueError(f"invalid hist_every={hist_every!r}: must be an int >= 0 (0: off)")
        if isinstance(hist_bins, bool) or not isinstance(hist_bins, int) or not 1 <= hist_bins <= 4096:
            raise ValueError(f"invalid hist_bins={hist_bins!r}: must be an int from 1 to 4096")
        if isinstance(probe_every, bool) or not isinstance(probe_every, int) or probe_every < 0:
            raise ValueError(f"invalid probe_every={probe_every!r}: must be an int >= 0 (0: off)")
        self._off = True  # nothing is accepted until the agent thread exists
        self._closed = False
        self._failed = False
        self._step = 0
        # Step stamps (see _next_step): the first optimizer's step count, and where log() put the step last.
        self._count = 0
        self._count_at_log = 0
        self._base = 0
        self._counts: list[int] = []
        self._in_log = False
        self._manual = False  # no optimizer to hook: statistics are measured at log()
        self._scaler = scaler
        self._dropped = 0
        self._maxlen = queue_size
        # Bounded by log() itself rather than by maxlen, so that every dropped item is counted exactly.
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._hooks: list[Any] = []
        self._pid = os.getpid()
        self._thread: AgentThread | None = None
        self._stats: Any = None
        self._acts: Any = None
        self._hist: Any = None
        self._control: Any = None  # live commands (control.py), with an optimizer
        self._probe: Any = None
        self.run_id = discovery.new_run_id()
        self.name = run or _default_name()
        base = Path(dir if dir is not None else os.environ.get("TUIMON_DIR") or "tuimon-runs")
        self.run_dir = base / self.run_id
        self.run_file: Path | None = (self.run_dir / "run.sqlite").resolve() if persist else None
        try:
            model, several_models = _model_of(model)
            optimizers, wrappers, unhookable = _optimizers_of(optimizer)
        except Exception as exc:  # an odd object: monitor what can be, never raise into the script
            _warn(f"could not read the model or optimizer ({type(exc).__name__}: {exc}); metrics only")
            model, several_models, optimizers, wrappers, unhookable = None, False, [], [], []
        self._model = model
        self._optimizers = optimizers
        self._counts = [0] * len(optimizers)
        primary = optimizers[0] if optimizers else None
        if os.environ.get("TUIMON_DISABLE") or (os.environ.get("RANK") not in (None, "", "0")):
            # Disabled explicitly, or a non-zero torch.distributed rank: only rank 0 talks to viewers. A non-zero
            # rank still applies rank 0's live commands (control_ddp.py): no sockets, no run file.
            try:
                self._closed = os.environ.get("TUIMON_DISABLE") is not None or not self._install_control(
                    model, primary, scheduler, hello=None
                )
            except Exception as exc:
                _warn(f"live commands are off on this rank ({type(exc).__name__}: {exc})")
                self._closed = True
            return
        if probe is not None and probe_every > 0:
            if model is None or primary is None:
                raise ValueError("probe= needs watch(model, optimizer, ...): it runs after optimizer.step()")
            from .probe import ProbeMaps  # imports torch; raises ValueError on a bad option or layer name

            try:
                self._probe = ProbeMaps(
                    model,
                    primary,
                    probe=probe,
                    every=probe_every,
                    layers=probe_layers,
                    channels=probe_channels,
                    enqueue=self._enqueue_stats,
                    step_of=self._next_step,
                    on_error=self._probe_failed,
                )
            except ValueError:
                raise
            except Exception as exc:  # anything else: the probe is off, the rest goes on
                _warn(f"feature-map probe disabled ({type(exc).__name__}: {exc}); training goes on")
        try:
            hello = _hello(self, model, optimizers, wrappers)
            if primary is not None:
                self._install_control(model, primary, scheduler, hello=hello)
            elif unhookable:
                hello["optimizer"] = {"type": type(unhookable[0]).__name__, "groups": []}
                hello["commands_unavailable"] = (
                    f"the optimizer {type(unhookable[0]).__name__} cannot be hooked (not a torch.optim.Optimizer "
                    "and wraps none): live commands apply at optimizer.step()"
                )
            else:
                hello["commands_unavailable"] = (
                    "no optimizer was watched (watch(model) alone): live commands apply at optimizer.step()"
                )
            self._manual = primary is None and model is not None and _is_torch_module(model)
            if unhookable:
                _warn(
                    f"the optimizer {type(unhookable[0]).__name__} cannot be hooked: statistics are measured at "
                    "log() from the model's gradients, and live commands are off"
                )
            if model is not None and (primary is not None or self._manual) and stats_every > 0:
                from .instruments import ParamStats  # imports torch: only when given torch objects

                self._stats = ParamStats(
                    model,
                    primary,
                    every=stats_every,
                    enqueue=self._enqueue_stats,
                    step_of=self._next_step,
                    on_error=self._fail,
                    norms_every=norms_every,
                )
                if activations and several_models:
                    self._enqueue_stats("event", None, _SEVERAL_MODELS_EVENT)
                elif activations and _compiled(model):
                    self._enqueue_stats("event", None, _COMPILED_EVENT)
                elif activations:
                    from .activations import ActStats

                    self._acts = ActStats(
                        model,
                        self._stats,
                        enqueue=self._enqueue_stats,
                        step_of=self._next_step,
                        on_error=self._fail,
                    )
            if model is not None and (primary is not None or self._stats is not None) and hist_every > 0:
                from .histograms import ParamHist

                self._hist = ParamHist(
                    model,
                    primary,
                    every=hist_every,
                    bins=hist_bins,
                    stats=self._stats,
                    enqueue=self._enqueue_stats,
                    step_of=self._next_step,
                    on_error=self._fail,
                )
            cfg = RunConfig(
                run_id=self.run_id,
                name=self.name,
                run_file=self.run_file,
                endpoint=endpoint or os.environ.get("TUIMON_ENDPOINT") or "ipc",
                publish=publish,
                commit_interval=commit_interval,
                hello=hello,
                alerts=bool(alerts),
                control=self._control,
                amp_init_scale=_init_scale(scaler),
            )
            if self._stats is not None:
                self._stats.install()
            if self._acts is not None:
                self._acts.install()
            if self._hist is not None:
                self._hist.install()
            if self._probe is not None:
                self._probe.install()
            if optimizers:
                from .instruments import Hook

                # Registered last: the instruments' post hooks of a step run first and still see its number.
                for j, opt in enumerate(optimizers):
                    hook = Hook(functools.partial(self._after_step, j))
                    self._hooks.append(opt.register_step_post_hook(hook))
            self._thread = AgentThread(cfg, self._queue, self._counters, self._fail)
            self._configure_provenance(self._thread.provenance, stats_every)
            if self._stats is not None and norms_every is not None:
                self._thread.provenance.norms_every = norms_every
            self._thread.start()
            # Wait (once, at setup) until the run file and the connection file exist, so that a viewer started
            # right after watch() finds the run; never longer than two seconds.
            self._thread.ready.wait(2.0)
        except Exception as exc:
            self._fail(exc)
            return
        self._off = False
        _register(self)

    # -- training-thread API -------------------------------------------------------------------------------------

    @property
    def step(self) -> int:
        """The step of the latest :meth:`log` (0 before the first)."""
        return self._step

    @property
    def dropped(self) -> int:
        """Items dropped because the queue was full."""
        return self._dropped

    @property
    def enabled(self) -> bool:
        """Whether the monitor is still accepting data."""
        return not self._off

    def log(self, values: Any = None, /, step: int | None = None, **kw: Any) -> None:
        """Record training scalars for a step. Only enqueues: conversion and I/O happen on the agent thread.

        ``mon.log(loss=l)``, ``mon.log({"train/loss": l}, step=n)`` (names that are not identifiers, or a metric
        called ``step``) and the older ``mon.log(n, loss=l)`` all work.

        Args:
            values: A mapping of names to values (optional; merged with the keywords), or the step as an int.
            step: The step (default: one more than the previous).
            **kw: Names to numbers or one-element tensors (a tensor is read on the agent thread, so this call
                never synchronises with the GPU).
        """
        if self._off:
            return
        if values is not None:
            try:
                kw, step = _merge_positional(values, step, kw)
            except Exception as exc:  # a mapping that cannot be read: dropped and counted, never raised
                self._bad_value("log()'s mapping", exc)
                return
        values = kw
        count = self._count
        if step is None:
            # The optimizer stepped since the last log: this log belongs to its latest step; otherwise one more.
            step = self._base + count if count != self._count_at_log else self._step + 1
        elif type(step) is not int or not -_STEP_LIMIT < step < _STEP_LIMIT:
            # numpy/tensor integers and integral floats are taken; anything else is queued as given (the agent
            # thread keeps the record without a step, with one bad_step event) and leaves the step count as is.
            step = _as_step(step, step)
        if type(step) is int and -_STEP_LIMIT < step < _STEP_LIMIT:
            self._step = step
            self._base = step - count
        self._count_at_log = count
        if self._scaler is not None:
            self._amp_scale(values)
        q = self._queue
        if len(q) >= self._maxlen:
            self._drop_oldest()
        q.append((_LOG, step, _time(), values))
        if self._manual and self._stats is not None:
            self._in_log = True
            try:
                self._stats.manual_step()
            finally:
                self._in_log = False

    def log_eval(self, values: Any = None, /, step: int | None = None, **kw: Any) -> None:
        """Record evaluation scalars (validation loss, accuracy, ...) at a step.

        Args:
            values: A mapping of names to values (optional; merged with the keywords), or the step as an int.
            step: The step (default: the step of the latest :meth:`log`).
            **kw: Names to numbers or one-element tensors.
        """
        if self._off:
            return
        if values is not None:
            kw, step = _merge_positional(values, step, kw)
        values = kw
        q = self._queue
        if len(q) >= self._maxlen:
            self._drop_oldest()
        q.append((_EVAL, self._step if step is None else step, _time(), values))

    def log_check(self, result: Any) -> None:
        """Record a sanity check's result (a ``tuimon_agent.checks.CheckResult``) for the viewer and the run file.

        Args:
            result: The result; its ``to_data()`` payload is what is sent.
        """
        if self._off:
            return
        try:
            data = result.to_data()
        except Exception as exc:  # not a CheckResult: dropped and counted, never raised
            self._bad_value("log_check()'s result", exc)
            return
        q = self._queue
        if len(q) >= self._maxlen:
            self._drop_oldest()
        q.append((_CHECK, self._step, _time(), data))

    def sanity_check(self, batch: Any, loss_fn: Any, *, model: Any = None, **options: Any) -> list[Any]:
        """Run the debugging playbook's sanity checks on the watched model and one batch; call it before training.

        The checks (data, shapes, initial loss, gradients against finite differences, overfit one batch, loss
        decreases) leave the model, its gradients, buffers, mode and the RNG state as they were. Each result
        goes to the viewer's Checks panel and the run file as soon as it is known. A few seconds on a small model.

        Args:
            batch: ``(inputs, targets)``.
            loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``.
            model: The model to check (default: the one given to :func:`watch`).
            **options: Keyword options of :func:`tuimon_agent.checks.suite.run_checks` (``batches=``, ``val=``,
                ``num_classes=``, ``optimizer_factory=``, ``checks=``).

        Returns:
            The :class:`~tuimon_agent.checks.CheckResult` list, in the order run.

        Raises:
            ValueError: No model, a batch that is not ``(inputs, targets)``, or an unknown check name.
        """
        from .checks.suite import run_checks

        target = model if model is not None else self._model
        if target is None:
            raise ValueError("sanity_check needs a model: pass it to watch(model, ...) or as model=")
        return run_checks(target, batch, loss_fn, on_result=self.log_check, **options)

    def close(self, *, reason: str = "closed", timeout: float = 5.0) -> None:
        """Flush everything to viewers and the run file, remove hooks, stop the agent thread. Safe to call twice.

        Args:
            reason: Recorded in the ``end`` record.
            timeout: Seconds to wait for the agent thread to flush.
        """
        if self._closed:
            return
        self._closed = True
        self._off = True
        self._model = None
        if self._stats is not None:
            self._stats.remove()
            self._stats = None
        if self._acts is not None:
            self._acts.remove()
            self._acts = None
        if self._hist is not None:
            self._hist.remove()
            self._hist = None
        if self._probe is not None:
            self._probe.remove()
            self._probe = None
        for h in self._hooks:
            try:
                h.remove()
            except Exception:
                pass
        self._hooks.clear()
        if self._thread is None or os.getpid() != self._pid:
            return
        self._abandon_commands()  # before the end record: their rejections are recorded ahead of it
        self._queue.append((_END, self._step, _time(), self._end_payload(reason)))
        self._thread.stop(timeout)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            reason = "closed"
        elif issubclass(exc_type, KeyboardInterrupt):
            reason = "interrupted"
        else:
            reason = "exception"
        self.close(reason=reason)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("off" if self._off else "live")
        return f"<Monitor run={self.name!r} id={self.run_id} step={self._step} {state}>"

    # -- internals -----------------------------------------------------------------------------------------------

    def _drop_oldest(self) -> None:
        """The queue is full: drop its oldest item (the agent thread may have taken it meanwhile) and count it."""
        try:
            self._queue.popleft()
        except IndexError:
            return
        self._dropped += 1

    def _bad_value(self, what: str, exc: BaseException) -> None:
        """A value the training thread could not even queue: dropped, and counted on the agent thread as a
        ``bad_value`` event (never raised into the training loop)."""
        try:
            msg = f"{what} was dropped ({type(exc).__name__}: {exc})"
        except Exception:
            msg = f"{what} was dropped ({type(exc).__name__})"
        self._enqueue_stats("event", self._step, {"what": "bad_value", "message": msg[:300]})

    def _counters(self) -> tuple[int, int]:
        return self._dropped, self._step

    def _after_step(self, j: int, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Called by torch after every ``optimizer.step()`` of the ``j``-th watched optimizer: counts the step and
        records each param group's hyperparameters (and, under a ``GradScaler``, whether the step was skipped)."""
        if self._off:
            return
        try:
            self._counts[j] += 1
            if j == 0:
                self._count += 1
                step = self._base + self._count
            else:  # stamped like the first optimizer's step of the same iteration
                step = self._base + min(self._counts[j], self._count + 1)
            groups = [
                (g.get("lr"), g.get("momentum"), g.get("betas"), g.get("weight_decay"))
                for g in optimizer.param_groups
            ]
            found_inf = getattr(optimizer, "found_inf", None)  # set by GradScaler.step around a fused step
            amp = None
            if found_inf is not None and hasattr(found_inf, "detach"):
                scale = getattr(optimizer, "grad_scale", None)
                scale = scale.detach().clone() if hasattr(scale, "detach") else None
                amp = (found_inf.detach().clone(), scale)
            q = self._queue
            if len(q) >= self._maxlen:
                self._drop_oldest()
            q.append((_OPT, step, _time(), (j, groups, amp)))
        except Exception as exc:
            self._fail(exc)

    def _next_step(self) -> int:
        """The step an ``optimizer.step()`` being taken now (or the forward before it) belongs to: one more than
        the first optimizer's latest step, counted from where :meth:`log` last put the step; without an
        optimizer, inside :meth:`log`, the step being logged."""
        if self._in_log:
            return self._step
        return self._base + self._count + 1

    def _amp_scale(self, values: dict[str, Any]) -> None:
        """``watch(..., scaler=)``: add the GradScaler's current scale (read on the agent thread) as ``amp/scale``."""
        try:
            scale = getattr(self._scaler, "_scale", None)
            if scale is not None and "amp/scale" not in values:
                values["amp/scale"] = scale.detach().clone()
        except Exception:
            self._scaler = None

    def _enqueue_stats(self, kind: str, step: int | None, payload: Any) -> None:
        """Queue a ``layers`` table or a statistics buffer from the instruments (training thread, only appends)."""
        if self._closed or self._failed:
            return
        q = self._queue
        if len(q) >= self._maxlen:
            self._drop_oldest()
        q.append((_ENQUEUE_TAGS[kind], step, _time(), payload))

    def _configure_provenance(self, prov: Any, every: int) -> None:
        """Tell the agent thread's NaN provenance (``provenance.py``) what the training thread checks and how to
        force a full measurement."""
        prov.every = every
        if self._acts is not None:
            prov.forward_checked = self._acts.outputs_checked
            prov.force = self._acts.force_next
        elif self._stats is not None:
            prov.force = self._stats.force_next

    def _probe_failed(self, exc: BaseException) -> None:
        """The probe raised: it is off (one warning, one ``probe_off`` event); training and the rest go on."""
        msg = f"feature-map probe disabled after an error ({type(exc).__name__}: {exc}); training goes on"
        _warn(msg)
        self._enqueue_stats("probe", self._step + 1, ("error", msg[:500]))

    def _fail(self, exc: BaseException) -> None:
        """Disable the monitor after an internal error, with one warning; training goes on."""
        if self._failed:
            return
        self._failed = True
        self._off = True
        if self._stats is not None:
            self._stats._off = True
        if self._acts is not None:
            self._acts._off = True
        if self._hist is not None:
            self._hist._off = True
        if self._probe is not None:
            self._probe._off = True
        _warn(f"monitoring disabled after an internal error ({type(exc).__name__}: {exc}); training goes on")

    def _forked(self) -> None:
        """In a forked child (a DataLoader worker): never publish or write; the parent owns the run."""
        self._off = True
        self._closed = True
        self._thread = None
        if self._stats is not None:
            self._stats._off = True
        if self._acts is not None:
            self._acts._off = True
        if self._hist is not None:
            self._hist._off = True
        if self._probe is not None:
            self._probe._off = True


def watch(model: Any = None, optimizer: Any = None, **options: Any) -> Monitor:
    """Start monitoring a training run.

    Args:
        model: The ``torch.nn.Module`` being trained, or a list of them (optional).
        optimizer: Its ``torch.optim.Optimizer``, a wrapper of one, or a list of them (optional); its learning
            rates are then recorded every step, and with a model too, per-parameter gradient and weight statistics
            every ``stats_every`` steps (without an optimizer, every ``stats_every`` :meth:`Monitor.log` calls).
        **options: Keyword options of :class:`Monitor` (``run=``, ``dir=``, ``endpoint=``, ``stats_every=``,
            ``hist_every=``, ``hist_bins=``, ...).

    Returns:
        A live :class:`Monitor` (also a context manager).
    """
    return Monitor(model, optimizer, **options)


def _merge_positional(values: Any, step: Any, kw: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """``log(mapping, ...)``: the mapping's names merged with the keywords (these win); ``log(n, ...)``: the
    step, as before mappings were taken."""
    if isinstance(values, Mapping):
        return ({**values, **kw} if kw else dict(values)), step
    return kw, (values if step is None else step)


def _as_step(step: Any, bad: Any) -> Any:
    """A user's ``step=`` as an int in the wire's range (numpy and tensor integers, integral floats), or ``bad``."""
    try:
        value = operator.index(step)
    except Exception:
        try:
            f = float(step)
            value = int(f) if f.is_integer() else None
        except Exception:
            return bad
    return int(value) if value is not None and -_STEP_LIMIT < value < _STEP_LIMIT else bad


def _compiled(model: Any) -> bool:
    """Whether ``model`` (or a module inside DataParallel/DDP wrappers) runs under ``torch.compile``:
    ``torch.compile(model)`` or ``model.compile()``."""
    for _ in range(16):
        if (
            getattr(model, "_orig_mod", None) is not None
            or getattr(model, "_compiled_call_impl", None) is not None
        ):
            return True
        inner = getattr(model, "module", None)
        if inner is None or inner is model:
            return False
        model = inner
    return False


def _default_name() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    stem = Path(argv0).stem
    return stem if stem and stem not in ("-c", "-m", "__main__", "ipykernel_launcher", "pytest") else "run"


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    try:
        return float(v)  # tensors and numpy scalars
    except Exception:
        return repr(v)


def _hello(mon: Monitor, model: Any, optimizers: list[Any], wrappers: list[str | None]) -> dict[str, Any]:
    """The hello payload: run, process, model and optimizer description (torch only if handed torch objects)."""
    hello: dict[str, Any] = {
        "run_id": mon.run_id,
        "name": mon.name,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "python": sys.version.split()[0],
        "started": _time(),
        "run_file": str(mon.run_file) if mon.run_file else None,
        "protocol_version": protocol.PROTOCOL_VERSION,
    }
    if model is not None or optimizers:
        torch = sys.modules.get("torch")
        if torch is not None:
            hello["torch"] = torch.__version__
    if model is not None and _is_torch_module(model):
        from .instruments import unwrap  # describe the user's module, not a DDP/compile wrapper

        model = unwrap(model)
        params = []
        device = None
        for name, p in model.named_parameters():
            device = device or str(p.device)
            params.append(
                {
                    "name": name,
                    "shape": list(p.shape),
                    "numel": int(p.numel()),
                    "dtype": str(p.dtype).replace("torch.", ""),
                    "trainable": bool(p.requires_grad),
                }
            )
        layers = []
        for name, m in model.named_modules():
            if name and not any(True for _ in m.children()):
                n = sum(int(p.numel()) for p in m.parameters(recurse=False))
                layers.append({"name": name, "type": type(m).__name__, "params": n})
        hello["model"] = {
            "type": type(model).__name__,
            "params": params,
            "layers": layers,
            "total_params": sum(p["numel"] for p in params),
            "trainable_params": sum(p["numel"] for p in params if p["trainable"]),
        }
        hello["device"] = device or "cpu"
    described = []
    for j, (optimizer, wrapper) in enumerate(zip(optimizers, wrappers, strict=True)):
        groups = []
        for g in optimizer.param_groups:
            entry = {k: _jsonable(v) for k, v in g.items() if k != "params"}
            entry["num_params"] = len(g["params"])
            groups.append(entry)
        d: dict[str, Any] = {"type": type(optimizer).__name__, "groups": groups, "prefix": opt_prefix(j)}
        if wrapper is not None:
            d["wrapper"] = wrapper
        described.append(d)
    if described:
        hello["optimizer"] = described[0]
    if len(described) > 1:
        hello["optimizers"] = described
    return hello


def opt_prefix(j: int) -> str:
    """The metric-name prefix of the ``j``-th watched optimizer's hyperparameters: ``opt/`` for the first,
    ``opt/o1/``, ``opt/o2/``, ... for the others (``opt/gN/`` then names their param group N > 0)."""
    return "opt/" if j == 0 else f"opt/o{j}/"


def _init_scale(scaler: Any) -> float | None:
    """A ``GradScaler``'s initial loss scale, or ``None``."""
    try:
        return float(scaler._init_scale) if scaler is not None else None
    except Exception:
        return None


def _is_torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _model_of(model: Any) -> tuple[Any, bool]:
    """The model to watch, and whether it stands for several: a list or tuple of modules becomes one
    ``torch.nn.ModuleDict`` keyed by their class names (a GAN's generator and discriminator); the modules
    themselves are not changed."""
    if not isinstance(model, (list, tuple)):
        return model, False
    models = [m for m in model if m is not None]
    if len(models) <= 1:
        return (models[0] if models else None), False
    import torch

    names = [type(m).__name__ for m in models]
    keys = [n if names.count(n) == 1 else f"{n}{i}" for i, n in enumerate(names)]
    return torch.nn.ModuleDict(dict(zip(keys, models, strict=True))), True


def _hookable(opt: Any) -> bool:
    """A ``torch.optim.Optimizer`` whose step hooks exist (a subclass that skipped ``Optimizer.__init__``, like
    accelerate's ``AcceleratedOptimizer``, has none)."""
    torch = sys.modules.get("torch")
    return (
        torch is not None
        and isinstance(opt, torch.optim.Optimizer)
        and isinstance(getattr(opt, "_optimizer_step_pre_hooks", None), dict)
        and isinstance(getattr(opt, "_optimizer_step_post_hooks", None), dict)
    )


def unwrap_optimizer(opt: Any) -> tuple[Any, str | None]:
    """The ``torch.optim.Optimizer`` inside an optimizer wrapper, and the outermost wrapper's type name.

    Follows ``.optimizer`` (accelerate's ``AcceleratedOptimizer``, ZeRO-style wrappers) and ``._optimizer``
    (Lightning's ``LightningOptimizer``) as deep as they go; the innermost object is used when it is a torch
    optimizer with step hooks.

    Args:
        opt: An optimizer or a wrapper.

    Returns:
        ``(optimizer, wrapper type name or None)``; the object itself when nothing hookable is inside.
    """
    inner = opt
    for _ in range(8):
        nxt = None
        for attr in ("optimizer", "_optimizer"):
            cand = getattr(inner, attr, None)
            if cand is not None and cand is not inner and hasattr(cand, "param_groups"):
                nxt = cand
                break
        if nxt is None:
            break
        inner = nxt
    if inner is not opt and _hookable(inner):
        cls = type(opt)
        if isinstance(opt, type(inner)) and len(cls.__mro__) > 1:  # LightningOptimizer's per-class mix-in
            cls = cls.__mro__[1]
        return inner, cls.__name__
    return opt, None


def _optimizers_of(optimizer: Any) -> tuple[list[Any], list[str | None], list[Any]]:
    """``(hookable optimizers, their wrappers' type names, objects that cannot be hooked)`` from one optimizer,
    a wrapper, or a list or tuple of them."""
    if optimizer is None:
        return [], [], []
    given = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    found, wrappers, bad = [], [], []
    for o in given:
        if o is None:
            continue
        real, wrapper = unwrap_optimizer(o)
        if _hookable(real):
            if any(real is f for f in found):
                continue
            found.append(real)
            wrappers.append(wrapper)
        else:
            bad.append(o)
    return found, wrappers, bad


def _close_all(reason: str) -> None:
    for mon in list(_live):
        try:
            mon.close(reason=reason, timeout=3.0)
        except Exception:
            pass


def _on_sigterm(signum: int, frame: Any) -> None:
    """Flush every run file, then let the previous SIGTERM disposition happen."""
    _close_all("signal")
    prev = _prev_sigterm
    if callable(prev):
        prev(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL if prev in (None, signal.SIG_DFL) else prev)
    if prev in (None, signal.SIG_DFL):
        os.kill(os.getpid(), signal.SIGTERM)


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    """An uncaught exception ends the script: record why in each run's end record, then report it as before."""
    _close_all("interrupted" if issubclass(exc_type, KeyboardInterrupt) else "exception")
    _prev_excepthook(exc_type, exc, tb)


_prev_excepthook = sys.excepthook


def _after_fork_in_child() -> None:
    for mon in list(_live):
        mon._forked()
    _live.clear()


def _register(mon: Monitor) -> None:
    global _hooks_installed, _prev_sigterm, _prev_excepthook
    _live.add(mon)
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_close_all, "closed")
    _prev_excepthook = sys.excepthook
    sys.excepthook = _excepthook
    os.register_at_fork(after_in_child=_after_fork_in_child)
    if threading.current_thread() is threading.main_thread():
        try:
            prev = signal.getsignal(signal.SIGTERM)
            if prev is not signal.SIG_IGN:
                _prev_sigterm = prev
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):
            pass
