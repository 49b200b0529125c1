"""What tuimon's per-layer instruments cost a training step, against TensorBoard and Weights & Biases, on one CPU
thread; one table.

    python tests/benchmarks/bench_instruments.py [--steps N] [--rounds R] [--reps K]

Two real models: the demo's digits CNN (``tuimon.demo.digits``, ``build("none", 0)``, its whole training set as one batch)
and a deep MLP (100 Linear layers of 316×316: 200 parameter tensors, about 10 M parameters, batch 128, Adam). For
each, in one process, rounds interleaved and the median round reported (``torch.set_num_threads(1)``):

- ``bare``: the mean training step (forward, backward, ``optimizer.step()``, nothing else), in ms;
- ``default``: with ``tuimon_agent.watch(model, opt)`` at default settings and ``mon.log(loss=loss)`` each step,
  over ``--steps`` steps (rounded up to a multiple of ``stats_every`` so that statistics samples are included), plus
  one histogram pass spread over ``hist_every`` steps (the run is too short to include one);
- ``stats@1``: with ``stats_every=1, activations=False`` (the whole statistics pass every step);
- ``norms@1``: with ``norms_every=1, activations=False`` and no full sample in the timed steps (``stats_every`` past
  them, ``hist_every=0``): the cheap per-step pass alone (per-tensor gradient L2 norms, the non-finite flags and the
  global norm, ``grad_norms`` records);
- ``norms pass``: the per-step norms pass alone (``ParamStats._measure_norms``, what ``norms@1`` adds on the
  training thread), timed directly: median of ``--reps`` × 20 passes, in % of the bare step (steadier than the
  difference of two step times when it is this small);
- ``hist``: one full histogram pass (``ParamHist.measure``: every weight and gradient, binned on the device);
- ``tb``: ``SummaryWriter.add_histogram`` for the same tensors (weights and gradients), once;
- ``wandb``: the extra cost of a step with ``run.watch(model, log="all", log_freq=1)`` (offline run) and
  ``run.log({"loss": ...})`` against a step with only ``run.log``, i.e. one wandb histogram pass over the same
  tensors (with ``log_freq`` equal to our ``hist_every`` it pays this every ``hist_every`` steps, as we do).

Times are the training thread's CPU time (``--clock cpu``, the default: what the training loop itself spends,
steady on a machine shared with other processes; the agent thread's work is not in it, by design it runs beside
the loop) or wall-clock time (``--clock wall``, for a quiet machine). Every figure but ``bare`` is a ratio to the
bare step of the same round (``×`` columns; ``default``, ``stats@1`` and ``norms@1``
as overhead in %). TensorBoard and wandb are optional (``pip install tensorboard wandb``, or the ``bench`` extra):
a missing one prints "not installed". wandb runs with ``WANDB_MODE=offline``, ``WANDB_SILENT=true`` and a temporary
``WANDB_DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

import tuimon_agent
from tuimon_agent import histograms, instruments
from tuimon_agent.monitor import DEFAULT_HIST_BINS, DEFAULT_HIST_EVERY, DEFAULT_STATS_EVERY

CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}
_clock = time.thread_time
Make = Callable[[], tuple[nn.Module, torch.optim.Optimizer, Callable[[], torch.Tensor]]]


def _digits() -> Any:
    from tuimon.demo import digits  # needs scikit-learn

    return digits


def _mlp() -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], torch.Tensor]]:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(100):
        layers += [nn.Linear(316, 316), nn.ReLU()]
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.randn(128, 316), torch.randint(0, 316, (128,))
    return model, opt, lambda: nn.functional.cross_entropy(model(x), y)


def _cnn() -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], torch.Tensor]]:
    model, opt, (x, y, _xv, _yv) = _digits().build("none", 0)
    return model, opt, lambda: nn.functional.cross_entropy(model(x), y)


def _optional(name: str) -> str | None:
    """``None`` when ``name`` imports, else why not."""
    try:
        __import__(name)
    except Exception as exc:  # ImportError, or a broken install
        return f"not installed ({type(exc).__name__})"
    return None


@contextlib.contextmanager
def _wandb_run() -> Iterator[Any]:
    """An offline, silent wandb run in a temporary directory."""
    import wandb

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=tmp)
        run = wandb.init(project="tuimon-bench", dir=tmp, mode="offline")
        try:
            yield run
        finally:
            run.finish()


def _time_steps(make: Make, steps: int, mode: str, wandb_run: Any = None) -> float:
    """Mean seconds per training step after 3 warm-up steps.

    ``mode``: ``"bare"``; ``"default"``, ``"stats1"`` or ``"norms1"`` (tuimon); ``"wandb_log"`` (``run.log`` only) or
    ``"wandb_watch"`` (``run.watch(model, log="all", log_freq=1)`` and ``run.log``).
    """
    model, opt, loss_fn = make()
    mon = None
    if mode in ("default", "stats1", "norms1"):
        opts: dict[str, Any] = {
            "default": {},
            "stats1": {"stats_every": 1, "activations": False},
            "norms1": {"stats_every": 1 << 30, "norms_every": 1, "activations": False, "hist_every": 0},
        }[mode]
        mon = tuimon_agent.watch(model, opt, dir=tempfile.mkdtemp(), publish=False, **opts)
    if mode == "wandb_watch":
        wandb_run.watch(model, log="all", log_freq=1)
    try:
        for _ in range(3):
            opt.zero_grad()
            loss_fn().backward()
            opt.step()
        t0 = _clock()
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
            if mon is not None:
                mon.log(loss=loss)
            elif wandb_run is not None:
                wandb_run.log({"loss": loss.item()})
        return (_clock() - t0) / steps
    finally:
        if mon is not None:
            mon.close()
        if mode == "wandb_watch":
            wandb_run.unwatch(model)


def _time_hist_passes(make: Make, reps: int, tb: bool) -> tuple[float, float]:
    """One histogram pass (``ParamHist.measure``) and ``SummaryWriter.add_histogram`` over every weight and gradient,
    interleaved, medians of ``reps`` after one warm-up; ``nan`` for TensorBoard when ``tb`` is false."""
    model, opt, loss_fn = make()
    loss_fn().backward()
    hist = histograms.ParamHist(
        model,
        opt,
        every=1,
        bins=DEFAULT_HIST_BINS,
        enqueue=lambda kind, step, payload: None,
        step_of=lambda: 1,
        on_error=lambda exc: (_ for _ in ()).throw(exc),
    )
    named = list(model.named_parameters())
    ours, theirs = [], []
    writer = None
    if tb:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(tempfile.mkdtemp())
    try:
        for rep in range(reps + 1):
            t0 = _clock()
            hist.measure()
            t1 = _clock()
            if writer is not None:
                for name, p in named:
                    writer.add_histogram(name, p, rep)
                    if p.grad is not None:
                        writer.add_histogram(f"{name}.grad", p.grad, rep)
            t2 = _clock()
            if rep:  # the first is a warm-up
                ours.append(t1 - t0)
                theirs.append(t2 - t1)
    finally:
        if writer is not None:
            writer.close()
    return statistics.median(ours), (statistics.median(theirs) if tb else math.nan)


def _time_norms_pass(make: Make, reps: int) -> float:
    """Median seconds of one per-step norms pass (``ParamStats._measure_norms``) over ``reps × 20`` passes, after
    one warm-up, on gradients of a real backward."""
    model, opt, loss_fn = make()
    loss_fn().backward()
    stats = instruments.ParamStats(
        model,
        opt,
        every=1 << 30,
        norms_every=1,
        enqueue=lambda kind, step, payload: None,
        step_of=lambda: 1,
        on_error=lambda exc: (_ for _ in ()).throw(exc),
    )
    stats._measure_norms()
    times = []
    for _ in range(max(1, reps) * 20):
        t0 = _clock()
        stats._measure_norms()
        times.append(_clock() - t0)
    return statistics.median(times)


def _row(name: str, make: Make, args: argparse.Namespace, why_not: dict[str, str | None]) -> list[str]:
    d = DEFAULT_STATS_EVERY
    steps_default = max(d, math.ceil(args.steps / d) * d)
    modes = ["bare", "default", "stats1", "norms1"]
    run_cm = _wandb_run() if why_not["wandb"] is None else contextlib.nullcontext()
    with run_cm as run:
        if run is not None:
            modes += ["wandb_log", "wandb_watch"]
        times: dict[str, list[float]] = {m: [] for m in modes}
        ratios: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            for m in modes:
                n = {
                    "default": steps_default,
                    "wandb_log": args.wandb_steps,
                    "wandb_watch": args.wandb_steps,
                }.get(m, args.steps)
                times[m].append(_time_steps(make, n, m, run if m.startswith("wandb") else None))
            bare = times["bare"][-1]
            for m in modes:
                ref = times["wandb_log"][-1] if m == "wandb_watch" else bare
                ratios[m].append((times[m][-1] - ref) / bare)
    bare = statistics.median(times["bare"])
    hist, tb = _time_hist_passes(make, args.reps, why_not["tensorboard"] is None)
    norms_pass = _time_norms_pass(make, args.reps)
    model = make()[0]
    n = len(list(model.parameters()))
    numel = sum(p.numel() for p in model.parameters())
    default = statistics.median(ratios["default"]) + hist / DEFAULT_HIST_EVERY / bare
    wandb = statistics.median(ratios["wandb_watch"]) if run is not None else math.nan

    def x(v: float) -> str:
        return "n/a" if math.isnan(v) else f"{v:.2f}×"

    return [
        name,
        str(n),
        f"{numel / 1e6:.2f}M",
        f"{bare * 1e3:.1f}",
        f"{default * 100:+.2f}%",
        f"{statistics.median(ratios['stats1']) * 100:+.1f}%",
        f"{statistics.median(ratios['norms1']) * 100:+.2f}%",
        f"{norms_pass * 1e3:.2f} ms = {norms_pass / bare * 100:.2f}%",
        x(hist / bare),
        x(tb / bare) if why_not["tensorboard"] is None else "not installed",
        x(wandb) if run is not None else "not installed",
        "n/a" if math.isnan(tb) else f"{tb / hist:.1f}×",
        "n/a" if math.isnan(wandb) else f"{wandb * bare / hist:.1f}×",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5, help="histogram passes timed (after one warm-up)")
    parser.add_argument(
        "--wandb-steps", type=int, default=5, help="timed steps of the two wandb configurations"
    )
    parser.add_argument("--models", default="digits,mlp", help="comma-separated: digits, mlp")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="cpu", help="training-thread CPU or wall time"
    )
    args = parser.parse_args()
    global _clock
    _clock = CLOCKS[args.clock]
    torch.set_num_threads(1)
    why_not = {name: _optional(name) for name in ("tensorboard", "wandb")}
    versions = [f"torch {torch.__version__}"]
    for name in ("tensorboard", "wandb"):
        versions.append(f"{name} {why_not[name] or sys.modules[name].__version__}")
    print(
        f"{', '.join(versions)}; 1 CPU thread; {args.clock} clock; {args.rounds} rounds × {args.steps} steps (default: "
        f"{max(DEFAULT_STATS_EVERY, math.ceil(args.steps / DEFAULT_STATS_EVERY) * DEFAULT_STATS_EVERY)}), wandb: {args.wandb_steps}), "
        f"medians; stats_every={DEFAULT_STATS_EVERY}, hist_every={DEFAULT_HIST_EVERY}, hist_bins={DEFAULT_HIST_BINS}"
    )
    head = [
        "model",
        "tensors",
        "params",
        "bare ms",
        "default",
        "stats@1",
        "norms@1",
        "norms pass",
        "hist pass",
        "tb pass",
        "wandb pass",
        "tb/hist",
        "wandb/hist",
    ]
    makes: dict[str, tuple[str, Make]] = {"digits": ("digits CNN", _cnn), "mlp": ("deep MLP", _mlp)}
    rows = [_row(*makes[m.strip()], args, why_not) for m in args.models.split(",") if m.strip()]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(
        "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True)))
    )
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for r in rows:
        print(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
    print(
        "default / stats@1 / norms@1: a step's extra time with tuimon at default settings / with stats_every=1 and "
        "activations=False / with norms_every=1 and activations=False (norms only), in % of the bare "
        f"step (default adds one histogram pass / {DEFAULT_HIST_EVERY}); norms pass: the norms-only pass timed alone, "
        "in ms and in % of the bare step; hist pass, tb pass, wandb pass: one pass over "
        "every weight and gradient, in bare steps (ours binned by ParamHist on the training thread; "
        "SummaryWriter.add_histogram; wandb.watch(log='all') hooks, the extra time of a log_freq=1 step); tb/hist, "
        "wandb/hist: how many of our passes fit in theirs."
    )


if __name__ == "__main__":
    main()
