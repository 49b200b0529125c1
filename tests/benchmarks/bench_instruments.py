"""What the per-parameter statistics (``param_stats``) cost a training step, on one CPU thread.

    python tests/benchmarks/bench_instruments.py [--steps N] [--rounds R]

Two real models: a deep MLP (100 Linear layers of 316×316: 200 parameter tensors, about 10 M parameters, batch 128,
Adam) and the demo's digits CNN (``demo/digits.py``, ``build("none", 0)``, its whole training set as one batch).
For each it times the mean training step (forward, backward, ``optimizer.step()``) bare, with tuimon at the default
``stats_every`` and with ``stats_every=1`` (rounds interleaved, the median round reported), and one statistics
pass alone (the pre and post hook's work without an optimizer step). For reference, TensorBoard's
``SummaryWriter.add_histogram`` over every parameter tensor once (what a histogram per tensor per sample would cost
the training thread).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import tuimon_agent
from tuimon_agent import histograms, instruments
from tuimon_agent.monitor import DEFAULT_HIST_BINS, DEFAULT_HIST_EVERY, DEFAULT_STATS_EVERY

DEMO = Path(__file__).resolve().parents[2] / "demo" / "digits.py"


def _digits() -> Any:
    spec = importlib.util.spec_from_file_location("tuimon_demo_digits_bench_instruments", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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


def _time_steps(make: Callable[[], Any], stats_every: int | None, steps: int) -> float:
    """Mean seconds per training step (after 3 warm-up steps); ``stats_every=None``: no monitor."""
    model, opt, loss_fn = make()
    mon = None
    if stats_every is not None:
        mon = tuimon_agent.watch(model, opt, dir=tempfile.mkdtemp(), publish=False, stats_every=stats_every)
    try:
        for _ in range(3):
            opt.zero_grad()
            loss_fn().backward()
            opt.step()
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
            if mon is not None:
                mon.log(loss=loss)
        return (time.perf_counter() - t0) / steps
    finally:
        if mon is not None:
            mon.close()


def _time_pass(make: Callable[[], Any], reps: int = 10) -> float:
    """Seconds for one statistics pass alone (pre hook's and post hook's work, no optimizer step in between)."""
    model, opt, loss_fn = make()
    loss_fn().backward()
    got: list[Any] = []
    stats = instruments.ParamStats(
        model,
        opt,
        every=1,
        enqueue=lambda kind, step, payload: got.append(payload),
        step_of=lambda: 1,
        on_error=lambda exc: (_ for _ in ()).throw(exc),
    )
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        stats._measure_before()
        stats._measure_after()
        times.append(time.perf_counter() - t0)
        got.clear()
    return statistics.median(times)


def _time_hist_pass(make: Callable[[], Any], reps: int = 5) -> tuple[float, float, int]:
    """One histogram pass (``ParamHist.measure``: every weight and gradient binned, on the training thread) against
    ``SummaryWriter.add_histogram`` for the same tensors (weights and gradients), in the same run.

    Returns:
        ``(tuimon seconds, add_histogram seconds, tensors)``: medians of ``reps`` passes after one warm-up.
    """
    from torch.utils.tensorboard import SummaryWriter

    model, opt, loss_fn = make()
    loss_fn().backward()
    got: list[Any] = []
    hist = histograms.ParamHist(
        model,
        opt,
        every=1,
        bins=DEFAULT_HIST_BINS,
        enqueue=lambda kind, step, payload: got.append(payload),
        step_of=lambda: 1,
        on_error=lambda exc: (_ for _ in ()).throw(exc),
    )
    named = list(model.named_parameters())
    ours, theirs = [], []
    with SummaryWriter(tempfile.mkdtemp()) as w:
        for rep in range(reps + 1):
            t0 = time.perf_counter()
            hist.measure()
            t1 = time.perf_counter()
            for name, p in named:
                w.add_histogram(name, p, rep)
                if p.grad is not None:
                    w.add_histogram(f"{name}.grad", p.grad, rep)
            t2 = time.perf_counter()
            got.clear()
            if rep:  # the first is a warm-up
                ours.append(t1 - t0)
                theirs.append(t2 - t1)
    n = len(named) + sum(p.grad is not None for _n, p in named)
    return statistics.median(ours), statistics.median(theirs), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    d, h = DEFAULT_STATS_EVERY, DEFAULT_HIST_EVERY
    print(
        f"torch {torch.__version__}, 1 CPU thread, {args.rounds} rounds × {args.steps} steps, default every={d}, "
        f"hist_every={h}, hist_bins={DEFAULT_HIST_BINS}"
    )
    head = (
        f"{'model':<10} {'tensors':>7} {'params':>9} {'bare ms':>8} {f'every={d} ms':>12} {'every=1 ms':>11} "
        f"{f'ovh {d}':>7} {'ovh 1':>7} {'pass ms':>8} {f'pass/{d}':>8} {'hist ms':>8} {'tb ms':>8} {'tb/hist':>7} "
        f"{f'hist/{h}':>8}"
    )
    print(head)
    print("-" * len(head))
    for name, make in (("deep MLP", _mlp), ("digits", _cnn)):
        rounds: dict[Any, list[float]] = {None: [], d: [], 1: []}
        for _ in range(args.rounds):
            for every in rounds:
                rounds[every].append(_time_steps(make, every, args.steps))
        bare, dflt, one = (statistics.median(rounds[k]) for k in (None, d, 1))
        one_pass = _time_pass(make)
        hist, tb, _n = _time_hist_pass(make)
        model = make()[0]
        n = len(list(model.parameters()))
        numel = sum(p.numel() for p in model.parameters())
        print(
            f"{name:<10} {n:>7} {numel / 1e6:>8.2f}M {bare * 1e3:>8.2f} {dflt * 1e3:>12.2f} {one * 1e3:>11.2f} "
            f"{(dflt / bare - 1) * 100:>6.1f}% {(one / bare - 1) * 100:>6.1f}% {one_pass * 1e3:>8.2f} "
            f"{one_pass / d / bare * 100:>7.2f}% {hist * 1e3:>8.1f} {tb * 1e3:>8.1f} {tb / hist:>6.1f}× "
            f"{hist / h / bare * 100:>7.3f}%"
        )
    print(
        "ovh: mean step time with tuimon over bare (includes mon.log and noise); pass: one statistics pass alone; "
        f"pass/{d}: its cost per step at the default interval, as a share of a bare step; hist: one histogram "
        "pass (every weight and gradient, binned by ParamHist on the training thread); tb: "
        "SummaryWriter.add_histogram for the same tensors in the same run; tb/hist: how much cheaper the pass is; "
        f"hist/{h}: the pass's cost per step at the default hist_every, as a share of a bare step."
    )


if __name__ == "__main__":
    main()
