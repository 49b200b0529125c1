"""What the alert rules cost: the Diagnoser's throughput on the agent thread, and the training step with rules on
against rules off; one table.

    python tests/benchmarks/bench_alerts.py [--steps N] [--rounds R]

The model is a deep MLP of 100 ``Linear(64, 64)`` layers with ReLU (200 parameter tensors), batch 64, Adam, one CPU
thread, monitored with ``stats_every=1`` (``param_stats``, ``act_stats`` and ``input_stats`` records every step:
the worst case for the per-layer rules) and ``mon.log(loss=...)`` every step.

- ``diagnoser``: the records of one such run (``alerts=False``, read back from its run file) fed to a fresh
  ``Diagnoser`` with every built-in rule: records/s, and µs of rule work per training step, also as a share of the
  bare training step measured in the same process;
- ``step on / off``: the mean training step with ``watch(..., alerts=True)`` over the same with ``alerts=False``,
  rounds interleaved, median round: the cost the rules put on the training thread (they run on the agent thread,
  so this is the GIL contention they cause, if any).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import tuimon_agent
from tuimon_agent.alerts import Diagnoser
from tuimon_agent.runfile import RunFileReader


def make() -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    """The 200-tensor MLP, its optimizer and one batch."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(99):
        layers += [nn.Linear(64, 64), nn.ReLU()]
    layers.append(nn.Linear(64, 10))
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, opt, torch.randn(64, 64), torch.randint(0, 10, (64,))


def train(steps: int, *, alerts: bool | None, run_dir: Path) -> float:
    """Mean seconds per step; ``alerts=None``: no monitor at all."""
    model, opt, x, y = make()
    loss_fn = nn.CrossEntropyLoss()
    mon = (
        tuimon_agent.watch(model, opt, dir=run_dir, publish=False, stats_every=1, hist_every=0, alerts=alerts)
        if alerts is not None
        else None
    )
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if mon is not None:
                mon.log(loss=loss.detach())
        return (time.perf_counter() - t0) / steps
    finally:
        if mon is not None:
            mon.close()


def diagnoser_rate(run_file: Path) -> tuple[float, float, int]:
    """(records/s, seconds per training step, records) of a fresh Diagnoser over a run file's records."""
    with RunFileReader(run_file) as reader:
        records = list(reader.records())
    steps = sum(1 for r in records if r.kind == "metrics")
    diag = Diagnoser(warn=None)
    t0 = time.perf_counter()
    for r in records:
        diag.feed(r)
    dt = time.perf_counter() - t0
    return len(records) / dt, dt / max(steps, 1), len(records)


def main() -> None:
    """Measure and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        train(20, alerts=None, run_dir=d)  # warm up
        bare, on, off = [], [], []
        for i in range(args.rounds):
            bare.append(train(args.steps, alerts=None, run_dir=d))
            off.append(train(args.steps, alerts=False, run_dir=d / f"off{i}"))
            on.append(train(args.steps, alerts=True, run_dir=d / f"on{i}"))
        (run_file,) = (d / "off0").glob("*/run.sqlite")
        rate, per_step, n = diagnoser_rate(run_file)
    bare_s = statistics.median(bare)
    ratio = statistics.median(a / b for a, b in zip(on, off, strict=True))
    print("model: 100 Linear(64, 64) + ReLU (200 parameter tensors), Adam, batch 64, stats_every=1, 1 thread")
    print(f"bare training step                        {bare_s * 1e3:8.2f} ms")
    print(f"diagnoser over {n} records               {rate:8.0f} records/s")
    print(
        f"rule work per training step               {per_step * 1e6:8.0f} µs  ({per_step / bare_s:.1%} of a bare step)"
    )
    print(
        f"training step, alerts on / alerts off     {ratio:8.3f} x  (median of {args.rounds} interleaved rounds)"
    )


if __name__ == "__main__":
    main()
