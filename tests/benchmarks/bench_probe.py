"""What the feature-map probe (``watch(..., probe=x)``) costs a training step, on one CPU thread; one table.

    python tests/benchmarks/bench_probe.py [--steps N] [--rounds R]

Two real models: the demo's digits CNN (``tuimon.demo.digits``, ``build("none", 0)``, batch 64 as the demo trains) and a
wider CNN on 3×64×64 images (four 3×3 conv blocks of 32-128 channels with batch norm, batch 32, Adam). For each, in
one process, rounds interleaved and the median round reported (``torch.set_num_threads(1)``):

- ``bare``: the mean training step (forward, backward, ``optimizer.step()``), in ms;
- ``pass``: one probe pass (``ProbeMaps.measure``: the eval-mode forward of one sample, the capture hooks, pooling
  and scaling of four layers' first eight channels and the probe image), in ms and as a fraction of ``bare``;
- ``every step``: the mean step with ``watch(..., probe=x, probe_every=1)`` against ``watch(...)`` without it (both
  with ``stats_every=0, hist_every=0``, so only the probe differs), overhead in %;
- ``default``: the probe's share of a step at the default ``probe_every`` (``pass / bare / probe_every``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import tuimon_agent
from tuimon_agent.monitor import DEFAULT_PROBE_EVERY

Make = Callable[[], tuple[nn.Module, torch.optim.Optimizer, Callable[[], tuple[Any, Any]], torch.Tensor]]


def _digits() -> Any:
    from tuimon.demo import digits  # needs scikit-learn

    return digits


def _demo() -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], tuple[Any, Any]], torch.Tensor]:
    model, opt, (xt, yt, xv, _yv) = _digits().build("none", 0)
    gen = torch.Generator().manual_seed(0)

    def batch() -> tuple[Any, Any]:
        idx = torch.randint(0, len(yt), (64,), generator=gen)
        return xt[idx], yt[idx]

    return model, opt, batch, xv[0]


def _wide() -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], tuple[Any, Any]], torch.Tensor]:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    c = 3
    for out in (32, 64, 96, 128):
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
        c = out
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
    return model, opt, lambda: (x, y), torch.randn(3, 64, 64)


def _step(model: nn.Module, opt: torch.optim.Optimizer, batch: Callable[[], tuple[Any, Any]]) -> torch.Tensor:
    x, y = batch()
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


def _time_steps(make: Make, steps: int, mode: str, tmp: Path) -> float:
    """Mean seconds per training step: ``bare``, ``watch`` (no probe) or ``probe`` (``probe_every=1``)."""
    model, opt, batch, probe = make()
    mon = None
    if mode != "bare":
        extra = {"probe": probe, "probe_every": 1} if mode == "probe" else {}
        mon = tuimon_agent.watch(
            model, opt, dir=tmp, publish=False, stats_every=0, hist_every=0, activations=False, **extra
        )
    for _ in range(3):
        _step(model, opt, batch)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = _step(model, opt, batch)
        if mon is not None:
            mon.log(loss=loss)
    dt = (time.perf_counter() - t0) / steps
    if mon is not None:
        mon.close()
    return dt


def _time_pass(make: Make, reps: int) -> float:
    """Seconds per probe pass (``ProbeMaps.measure``), the model trained one step first."""
    from tuimon_agent.probe import ProbeMaps

    model, opt, batch, probe = make()
    _step(model, opt, batch)
    queued: list[Any] = []
    pm = ProbeMaps(
        model,
        opt,
        probe=probe,
        every=1,
        enqueue=lambda *a: queued.append(a),
        step_of=lambda: 1,
        on_error=lambda e: (_ for _ in ()).throw(e),
    )
    pm.measure()
    t0 = time.perf_counter()
    for _ in range(reps):
        pm.measure()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    import tempfile

    rows = [("digits CNN (demo)", _demo), ("wide CNN 3×64×64", _wide)]
    print(
        f"probe cost, one CPU thread, median of {args.rounds} rounds (default probe_every={DEFAULT_PROBE_EVERY})"
    )
    print(f"{'model':<20} {'bare ms':>8} {'pass ms':>8} {'pass/step':>9} {'every step':>11} {'default':>8}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, make in rows:
            bare, watch, probe, passes = [], [], [], []
            for _ in range(args.rounds):
                bare.append(_time_steps(make, args.steps, "bare", tmp))
                watch.append(_time_steps(make, args.steps, "watch", tmp))
                probe.append(_time_steps(make, args.steps, "probe", tmp))
                passes.append(_time_pass(make, args.reps))
            b, w, pr, ps = (statistics.median(v) for v in (bare, watch, probe, passes))
            print(
                f"{name:<20} {b * 1e3:>8.2f} {ps * 1e3:>8.2f} {ps / b:>8.1%} {(pr / w - 1):>+10.1%} "
                f"{ps / b / DEFAULT_PROBE_EVERY:>8.3%}"
            )


if __name__ == "__main__":
    main()
