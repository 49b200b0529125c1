"""What ``mon.log()`` costs the training thread, side by side with TensorBoard and an empty loop, in one run.

    python tests/benchmarks/bench_log.py [--steps N]

Each configuration runs the same real training step (a small MLP's forward, backward and SGD step on the CPU) and
then records 4 or 32 scalars, timing only the recording call with ``perf_counter_ns``:

- ``empty``: nothing between the two clock reads (the timer's own overhead),
- ``dict``: building the keyword dict the scalars travel in,
- ``tuimon``: ``mon.log(**values)`` on a live monitor (PUB socket and run file on),
- ``tensorboard``: ``SummaryWriter.add_scalar`` once per scalar.

It prints median and 99th percentile in microseconds, the ratio to TensorBoard, and the whole loop's time per step
(training step included) so the agent thread's share of the CPU shows too.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

import tuimon_agent


def _step_fn() -> Callable[[], None]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 32), torch.randint(0, 10, (64,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _measure(kind: str, names: list[str], steps: int, target: Any = None) -> dict[str, float]:
    """Time one recorder ``steps`` times, each after a real training step; the call is timed inline (no wrapper)."""
    step = _step_fn()
    costs = []
    perf = time.perf_counter_ns
    t_start = time.perf_counter()
    for i in range(steps):
        step()
        values = {n: 0.5 + i * 1e-3 for n in names}
        if kind == "empty":
            t0 = perf()
            t1 = perf()
        elif kind == "dict":
            t0 = perf()
            dict(**values)
            t1 = perf()
        elif kind == "tuimon":
            t0 = perf()
            target.log(**values)
            t1 = perf()
        else:
            t0 = perf()
            for k, v in values.items():
                target.add_scalar(k, v, i)
            t1 = perf()
        costs.append(t1 - t0)
    loop = time.perf_counter() - t_start
    costs.sort()
    return {
        "median_us": statistics.median(costs) / 1e3,
        "p99_us": costs[int(len(costs) * 0.99)] / 1e3,
        "loop_us_per_step": loop / steps * 1e6,
    }


def run(steps: int) -> list[tuple[str, int, dict[str, float]]]:
    """Run every configuration for 4 and 32 scalars; returns ``(name, n_scalars, figures)`` rows."""
    from torch.utils.tensorboard import SummaryWriter

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (4, 32):
            names = [f"metric_{k}" for k in range(n)]
            rows.append(("empty", n, _measure("empty", names, steps)))
            rows.append(("dict", n, _measure("dict", names, steps)))
            mon = tuimon_agent.watch(run=f"bench-{n}", dir=tmp)
            rows.append(("tuimon", n, _measure("tuimon", names, steps, mon)))
            mon.close()
            if mon.dropped:
                print(f"  (tuimon dropped {mon.dropped} items at {n} scalars)")
            writer = SummaryWriter(log_dir=f"{tmp}/tb-{n}")
            rows.append(("tensorboard", n, _measure("tensorboard", names, steps, writer)))
            writer.close()
    return rows


def bench_agent_thread(n: int = 50_000) -> dict[str, float]:
    """The agent thread's own CPU per record: drain (convert, encode, publish, queue for SQLite) and commit, timed
    on a queue of ``n`` items of 4 scalars, with a live PUB socket and run file, outside the thread."""
    import collections
    import os
    from pathlib import Path

    from tuimon_agent.transport import AgentThread, RunConfig

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TUIMON_RUNTIME_DIR"] = tmp  # private (mode 0700): the connection file and sockets go here
        hello = {"pid": os.getpid(), "host": "bench", "started": time.time()}
        cfg = RunConfig("bench", "bench", Path(tmp) / "run.sqlite", "ipc", True, 0.25, hello)
        queue: collections.deque[tuple[Any, ...]] = collections.deque()
        agent = AgentThread(cfg, queue, lambda: (0, 0), print)
        agent._open()
        best = {"drain_us": math.inf, "commit_us": math.inf}
        for _ in range(3):
            for i in range(n):
                queue.append(
                    (0, i, time.time(), {"loss": 1 / (i + 1), "acc": 0.5, "lr": 1e-3, "gnorm": i % 7 * 1.0})
                )
            t0 = time.perf_counter()
            agent._drain()
            agent._publish()
            t1 = time.perf_counter()
            agent._commit()
            t2 = time.perf_counter()
            best["drain_us"] = min(best["drain_us"], (t1 - t0) / n * 1e6)
            best["commit_us"] = min(best["commit_us"], (t2 - t1) / n * 1e6)
        agent._shutdown()
        del os.environ["TUIMON_RUNTIME_DIR"]
    return best


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5000)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = run(args.steps)
    tb = {n: f["median_us"] for name, n, f in rows if name == "tensorboard"}
    print(f"\nlog() cost on the training thread ({args.steps} steps each, torch {torch.__version__}, CPU)\n")
    print(
        f"{'recorder':<12} {'scalars':>7} {'median µs':>10} {'p99 µs':>9} {'TB / this':>10} {'loop µs/step':>13}"
    )
    for name, n, f in rows:
        ratio = tb[n] / f["median_us"] if f["median_us"] > 0 else float("inf")
        print(
            f"{name:<12} {n:>7} {f['median_us']:>10.2f} {f['p99_us']:>9.2f} {ratio:>9.0f}× {f['loop_us_per_step']:>13.1f}"
        )
    a = bench_agent_thread()
    total = a["drain_us"] + a["commit_us"]
    print(
        f"\nagent thread, per record of 4 scalars: drain {a['drain_us']:.1f} µs + commit {a['commit_us']:.1f} µs"
        f" = {total:.1f} µs of its own CPU → keeps up with about {1e6 / total:,.0f} records/s"
    )


if __name__ == "__main__":
    main()
